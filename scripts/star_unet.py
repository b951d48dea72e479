"""StarUNet: a StarDist-style 2D network in plain PyTorch (issue 28).

As StarDist 2D's own network (Schmidt et al. 2018; its DSB 2018 recipe): two convolutions at full
resolution, a pooling by ``grid``, a U-Net of ``depth`` levels from ``base`` channels, one more
convolution of 128 channels, then per pixel the object probability (channel 0, a sigmoid) and the
distances to the object's boundary along ``n_rays`` equally spaced rays (channels 1..n_rays, in
input pixels). The outputs are upsampled back to the input's resolution for training (the loss
sees every pixel); the package ships them at 1/grid of it (``full_resolution = False``), as StarDist
predicts, and declares that scale, so StarDist's non-maximum suppression runs with its grid.

Input: (batch, 1, y, x) with y and x multiples of ``grid * 2**depth``; output: (batch, 1 + n_rays, y, x),
or (batch, 1 + n_rays, y / grid, x / grid).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


def _at_even_pixels(t: torch.Tensor) -> torch.Tensor:
    """A grid-2 map read at input pixels 0, 2, 4, ...: what training's bilinear upsampling gives there
    (``F.interpolate(t, scale_factor=2, mode="bilinear")[..., ::2, ::2]``: 3/4 of a cell and 1/4 of
    the one before, the first as it is), since StarDist puts grid cell i at input pixel 2i; reading
    the cells as they are shifts every object by half a pixel."""
    p = F.pad(t, (1, 0, 1, 0), mode="replicate")
    t = 0.75 * p[:, :, 1:, :] + 0.25 * p[:, :, :-1, :]
    return 0.75 * t[:, :, :, 1:] + 0.25 * t[:, :, :, :-1]


class StarUNet(nn.Module):
    def __init__(self, n_rays: int = 32, base: int = 32, depth: int = 3, grid: int = 2):
        super().__init__()
        self.n_rays, self.grid, self.depth = n_rays, grid, depth
        # False: outputs at 1/grid of the input's resolution (what the package ships: StarDist's
        # non-maximum suppression then has grid**2 times fewer candidates); True: upsampled (training)
        self.full_resolution = True
        self.stem = _block(1, base)
        self.down = nn.ModuleList(_block(base * 2 ** max(d - 1, 0), base * 2 ** d) for d in range(depth))
        self.bottom = _block(base * 2 ** (depth - 1), base * 2 ** depth)
        self.up = nn.ModuleList(_block(base * 2 ** (d + 1) + base * 2 ** d, base * 2 ** d) for d in reversed(range(depth)))
        self.features = nn.Sequential(nn.Conv2d(base, 128, 3, padding=1), nn.ReLU(inplace=True))
        self.prob = nn.Conv2d(128, 1, 1)
        self.dist = nn.Conv2d(128, n_rays, 1)

    def raw(self, x: torch.Tensor):
        """Probability logits and distances at the input's resolution (training uses the logits)."""
        y = self.stem(x)
        y = F.max_pool2d(y, self.grid) if self.grid > 1 else y
        skips = []
        for block in self.down:
            y = block(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bottom(y)
        for i, block in enumerate(self.up):  # TorchScript: no reversed() or zip() over modules
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = block(torch.cat([y, skips[len(skips) - 1 - i]], dim=1))
        y = self.features(y)
        logit, dist = self.prob(y), self.dist(y)
        if self.grid > 1 and self.full_resolution:
            logit = F.interpolate(logit, scale_factor=float(self.grid), mode="bilinear", align_corners=False)
            dist = F.interpolate(dist, scale_factor=float(self.grid), mode="bilinear", align_corners=False)
        elif self.grid == 2:
            logit, dist = _at_even_pixels(logit), _at_even_pixels(dist)
        return logit, dist

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit, dist = self.raw(x)
        return torch.cat([torch.sigmoid(logit), dist], dim=1)


def ray_angles(n_rays: int):
    """StarDist's ray directions: angle 2*pi*k/n_rays, (dy, dx) = (sin, cos)."""
    return [2 * math.pi * k / n_rays for k in range(n_rays)]


@torch.no_grad()
def star_distances(labels: torch.Tensor, n_rays: int = 32, max_steps: int = 512) -> torch.Tensor:
    """Distances from each object pixel to its object's boundary along each ray, as StarDist's
    ``star_dist`` computes them (nearest-pixel steps of length 1, the last step corrected to where it
    crossed the pixel's edge; the image's border ends a ray); 0 on background. All rays march at
    once, so a GPU takes few steps.

    labels: (batch, y, x) integer labels. Returns (batch, n_rays, y, x) float32.
    """
    b, h, w = labels.shape
    dev = labels.device
    lab = labels.long()
    phi = torch.tensor(ray_angles(n_rays), device=dev, dtype=torch.float64)
    dy, dx = torch.sin(phi).float().view(-1, 1, 1), torch.cos(phi).float().view(-1, 1, 1)
    corr = (0.5 / torch.maximum(dy.abs(), dx.abs())).unsqueeze(0)  # (1, K, 1, 1)
    yy, xx = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float32),
                            torch.arange(w, device=dev, dtype=torch.float32), indexing="ij")
    flat = lab.reshape(b, -1)
    own = lab.unsqueeze(1)  # (b, 1, h, w)
    alive = (own > 0).expand(b, n_rays, h, w).clone()
    dist = torch.zeros(b, n_rays, h, w, device=dev)
    for t in range(1, max_steps + 1):
        if t % 8 == 1 and not bool(alive.any()):
            break
        # StarDist rounds to nearest; floor(v + 0.5) agrees with it wherever the position is inside
        ii = torch.floor(yy + t * dy + 0.5)  # (K, h, w)
        jj = torch.floor(xx + t * dx + 0.5)
        inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
        idx = (ii.clamp(0, h - 1) * w + jj.clamp(0, w - 1)).long().reshape(1, -1).expand(b, -1)
        there = torch.gather(flat, 1, idx).reshape(b, n_rays, h, w)
        ended = alive & (~inside.unsqueeze(0) | (there != own))
        dist = torch.where(ended, (t - 1 + corr).expand_as(dist), dist)
        alive &= ~ended
    return dist


@torch.no_grad()
def object_probability(labels: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """StarDist's training target for the probability: each object's distance to its boundary,
    divided by the largest in that object (1 at its centre, small at its edge, 0 on background).
    The distance to the boundary is the shortest ray (with 32 rays within a few % of the
    Euclidean distance transform StarDist uses)."""
    b = labels.shape[0]
    lab = labels.long()
    d = dist.min(dim=1).values
    ids = (lab + torch.arange(b, device=lab.device).view(b, 1, 1) * (int(lab.max()) + 1)).reshape(-1)
    peak = torch.zeros(b * (int(lab.max()) + 1), device=lab.device).scatter_reduce(0, ids, d.reshape(-1), "amax")
    prob = d.reshape(-1) / peak[ids].clamp_min(1e-6)
    return torch.where(lab.reshape(-1) > 0, prob, torch.zeros_like(prob)).reshape(lab.shape)
