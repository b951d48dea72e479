"""StarDist2D_Post-processing.ijm: ImageJ 1.53t's bicubic resize (FloatProcessor.resize), then
StarDist's own non-maximum suppression (the Python package in place of the Fiji plugin).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from ...errors import InputError
from .imagej import IJImage, java_int


def _cubic(x: np.ndarray) -> np.ndarray:
    """ImageProcessor.cubic (Catmull-Rom, a = 0.5), operation by operation."""
    a = 0.5
    x = np.abs(x)
    near = x * x * (x * (-a + 2.0) + (a - 3.0)) + 1.0
    far = -a * x * x * x + 5.0 * a * x * x - 8.0 * a * x + 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def resize_bicubic(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """ImageJ 1.53t FloatProcessor.resize(width, height) with bicubic interpolation: the
    sampling grid ImageJ uses (centres, plus a quarter of the scale), Catmull-Rom inside and
    ImageJ's clamped bilinear within a pixel of the border. float32 result."""
    src = np.asarray(plane, dtype=np.float32)
    h, w = src.shape
    if (w, h) == (width, height):
        return src.copy()
    if w == 1 or h == 1:
        raise InputError("ImageJ does not interpolate an image one pixel wide or high")
    x_scale, y_scale = width / w, height / h
    cx = width / 2.0 + (x_scale / 4.0 if width != w else 0.0)
    cy = height / 2.0 + (y_scale / 4.0 if height != h else 0.0)
    xs = (np.arange(width) - cx) / x_scale + w / 2.0
    ys = (np.arange(height) - cy) / y_scale + h / 2.0
    X, Y = np.meshgrid(xs, ys)
    u0, v0 = np.floor(X).astype(np.int64), np.floor(Y).astype(np.int64)
    edge = (u0 <= 0) | (u0 >= w - 2) | (v0 <= 0) | (v0 >= h - 2)
    out = np.empty((height, width), dtype=np.float64)
    src64 = src.astype(np.float64)
    inner = ~edge
    if inner.any():
        x0, y0, uu, vv = X[inner], Y[inner], u0[inner], v0[inner]
        q = np.zeros(x0.shape)
        for j in range(4):
            v = vv - 1 + j
            p = np.zeros(x0.shape)
            for i in range(4):
                u = uu - 1 + i
                p = p + src64[v, u] * _cubic(x0 - u)
            q = q + p * _cubic(y0 - v)
        out[inner] = q
    if edge.any():
        out[edge] = _bilinear(src64, X[edge], Y[edge])
    return out.astype(np.float32)


def _bilinear(src: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ImageProcessor.getBilinearInterpolatedPixel on a FloatProcessor (NaN-aware)."""
    h, w = src.shape
    out = np.zeros(x.shape)  # the background value outside [-1, w) x [-1, h)
    ok = (x >= -1) & (x < w) & (y >= -1) & (y < h)
    x, y = x[ok].copy(), y[ok].copy()
    x[x < 0.0] = 0.0
    x[x >= w - 1.0] = w - 1.001
    y[y < 0.0] = 0.0
    y[y >= h - 1.0] = h - 1.001
    xb, yb = x.astype(np.int64), y.astype(np.int64)
    xf, yf = x - xb, y - yb
    ll, lr = src[yb, xb], src[yb, xb + 1]
    ul, ur = src[yb + 1, xb], src[yb + 1, xb + 1]
    upper = np.where(np.isnan(ul) & (xf >= 0.5), ur, np.where(np.isnan(ur) & (xf < 0.5), ul, ul + xf * (ur - ul)))
    lower = np.where(np.isnan(ll) & (xf >= 0.5), lr, np.where(np.isnan(lr) & (xf < 0.5), ll, ll + xf * (lr - ll)))
    out[ok] = np.where(np.isnan(lower) & (yf >= 0.5), upper,
                       np.where(np.isnan(upper) & (yf < 0.5), lower, lower + yf * (upper - lower)))
    return out


def stardist_inputs(image_planes: np.ndarray, grid: float) -> Tuple[np.ndarray, np.ndarray]:
    """What the macro hands StarDist2DNMS for one sample's planes (n, y, x): the probability
    ("scores", plane 1) and distances (planes 2..n as (y, x, n_rays)), upsampled by ``grid``."""
    n, h, w = image_planes.shape
    new_w, new_h = java_int(grid * w), java_int(grid * h)
    up = np.stack([resize_bicubic(p, new_w, new_h) for p in image_planes])
    return up[0], np.moveaxis(up[1:], 0, -1)


def run_stardist(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """The probability and ray distances (planes 2..n) upsampled x grid with ImageJ's bicubic,
    then StarDist's own NMS (the Python package in place of the Fiji plugin the macro calls)."""
    from .. import require

    n = image.planes.shape[1]
    if n < 4:
        raise InputError(f"{file}: needs the object probability and at least 3 ray distances; "
                         f"the output has {n} plane(s)")
    if sum(d > 1 for d in (image.channels, image.slices, image.frames)) > 1:
        raise InputError(f"{file}: dlmodel runs this macro on 2D outputs (one channel axis) only")
    sd = require("stardist", "stardist", f"{file} (StarDist's non-maximum suppression)")
    planes = image.planes.astype(np.float32, copy=False)
    result = []
    for b in range(planes.shape[0]):
        prob, dist = stardist_inputs(planes[b], float(p["grid"]))
        points, probi, disti = sd.non_maximum_suppression(
            dist, prob, grid=(1, 1), b=int(p["exclude_boundary"]), nms_thresh=float(p["nms_threshold"]),
            prob_thresh=float(p["prob_threshold"]))
        result.append(sd.polygons_to_label(disti, points, shape=prob.shape, prob=probi).astype(np.int32))
    return image.back_without_c(np.stack(result))
