"""The default nuclei model's architecture: a small 2D U-Net with three output classes
(background, nucleus interior, nucleus boundary). Shipped in the model package as the
pytorch_state_dict architecture file."""
import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class NucleiUNet(nn.Module):
    """Input (B, 1, H, W) with H, W multiples of 8; output (B, 3, H, W) class logits."""

    def __init__(self, base: int = 16, classes: int = 3):
        super().__init__()
        c = [base, base * 2, base * 4, base * 8]
        self.enc0 = _block(1, c[0])
        self.enc1 = _block(c[0], c[1])
        self.enc2 = _block(c[1], c[2])
        self.mid = _block(c[2], c[3])
        self.up2 = nn.ConvTranspose2d(c[3], c[2], 2, stride=2)
        self.dec2 = _block(c[2] * 2, c[2])
        self.up1 = nn.ConvTranspose2d(c[2], c[1], 2, stride=2)
        self.dec1 = _block(c[1] * 2, c[1])
        self.up0 = nn.ConvTranspose2d(c[1], c[0], 2, stride=2)
        self.dec0 = _block(c[0] * 2, c[0])
        self.head = nn.Conv2d(c[0], classes, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(self.pool(e0))
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], 1))
        return self.head(d0)
