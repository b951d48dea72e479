"""Contours2InstanceSegmentation.ijm: ImageJ's masks, then MorphoLibJ 1.6.1's Distance Transform
Watershed, its algorithms as written (Borgefors 3-4 chamfer distance, extended minima, minima
imposed as its float path does, priority-queue flooding with watershed lines), in numpy.
"""
from __future__ import annotations

import heapq
from array import array
from typing import Any, Dict, List, Tuple

import numpy as np

from ...errors import InputError
from .imagej import IJImage, f32

# MorphoLibJ's marks in the flooding's table: not yet reached, queued, a watershed line
_INIT, _INQUEUE, _WSHED = -1, -3, 0


def run_contours(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """Per sample: masks ``threshold <= v <= upper`` of planes 1..3 times 0, 1, 2 (planes
    beyond keep 1), their maximum; label 1 (foreground, no contour) kept, holes filled
    (4-connected background), MorphoLibJ's Distance Transform Watershed, labels over
    ``min_size`` pixels kept."""
    n = image.planes.shape[1]
    if n < 3:
        raise InputError(f"{file}: needs 3 channels (background, foreground, contours); the output has {n}")
    if sum(d > 1 for d in (image.channels, image.slices, image.frames)) > 1:
        raise InputError(f"{file}: ImageJ's Z Project takes a hyperstack slice by slice here; "
                         "dlmodel runs this macro on 2D outputs only")
    if p["connectivity"] not in (4, 8):
        raise InputError(f"{file}: connectivity must be 4 or 8, not {p['connectivity']}")
    planes = image.planes.astype(np.float32, copy=False)
    lo, hi = f32(p["threshold"]), f32(p["upper"])
    result = []
    for b in range(planes.shape[0]):
        masks = ((planes[b] >= lo) & (planes[b] <= hi)).astype(np.uint8)
        masks[0] *= 0
        masks[2] *= 2
        argmax = masks.max(axis=0)
        from scipy import ndimage as ndi

        keep = ndi.binary_fill_holes(argmax == 1)
        labels = distance_transform_watershed(keep, int(p["dynamic"]), int(p["connectivity"]))
        result.append(_relabel(_size_filter(labels, float(p["min_size"]))))
    return image.back_without_c(np.stack(result))


def _chamfer_34(fg: np.ndarray) -> np.ndarray:
    """MorphoLibJ's float chamfer distance with Borgefors weights (3, 4), not normalised:
    distance to the nearest background pixel, pixels outside the image ignored; inf where a
    component has no background at all."""
    h, w = fg.shape
    big = np.int64(1) << 40
    d = np.where(fg, big, 0).astype(np.int64)
    ramp = 3 * np.arange(w, dtype=np.int64)
    for y in range(h):
        row = d[y].copy()
        if y > 0:
            up = d[y - 1]
            row = np.minimum(row, up + 3)
            row[1:] = np.minimum(row[1:], up[:-1] + 4)
            row[:-1] = np.minimum(row[:-1], up[1:] + 4)
        row = np.minimum.accumulate(row - ramp) + ramp  # row[x] = min(row[x], row[x-1] + 3)
        d[y] = np.where(fg[y], row, 0)
    for y in range(h - 1, -1, -1):
        row = d[y].copy()
        if y < h - 1:
            down = d[y + 1]
            row = np.minimum(row, down + 3)
            row[:-1] = np.minimum(row[:-1], down[1:] + 4)
            row[1:] = np.minimum(row[1:], down[:-1] + 4)
        rev = row[::-1]
        rev = np.minimum.accumulate(rev - ramp) + ramp  # row[x] = min(row[x], row[x+1] + 3)
        d[y] = np.where(fg[y], rev[::-1], 0)
    out = d.astype(np.float32)
    out[d >= big // 2] = np.inf
    return out


def distance_transform_watershed(fg: np.ndarray, dynamic: int = 1, connectivity: int = 4) -> np.ndarray:
    """MorphoLibJ 1.6.1's "Distance Transform Watershed" (Borgefors 3-4, normalised, 32-bit
    output) on a 2D binary image, as its code computes it: the inverted distance map, its
    extended minima (dynamic) as markers, minima imposed the way MorphoLibJ's float path does,
    and its priority-queue flooding with watershed lines, restricted to the foreground.
    Returns int32 labels (0 background and lines)."""
    from scipy import ndimage as ndi
    from skimage.morphology import local_minima, reconstruction

    fg = np.asarray(fg, dtype=bool)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    footprint = ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    dist = _chamfer_34(fg) / np.float32(3)
    top = np.float32(dist[fg].max())
    inverted = top - (dist - np.float32(0))  # FloatProcessor.invert over the display range [0, max]
    marker = inverted + np.float32(dynamic)
    rec = reconstruction(marker.astype(np.float64), inverted.astype(np.float64), method="erosion", footprint=footprint)
    minima = local_minima(rec, connectivity=1 if connectivity == 4 else 2, allow_borders=True)
    # imposeMinima with int get/set on a float image: float bits + 1, and 255 as float bits
    bits = inverted.view(np.int32)
    mask = np.where(minima, np.float32(0), (bits + 1).view(np.float32))
    seed = np.where(minima, np.float32(0), np.array([255], dtype=np.int32).view(np.float32)[0])
    imposed = reconstruction(np.maximum(seed, mask).astype(np.float64), mask.astype(np.float64),
                             method="erosion", footprint=footprint)
    markers, _ = ndi.label(minima, structure=footprint)
    return _flood(imposed, markers, fg, connectivity)


def _flood(values: np.ndarray, markers: np.ndarray, fg: np.ndarray, connectivity: int) -> np.ndarray:
    """MarkerControlledWatershedTransform2D.applyWithPriorityQueueAndDams, with a mask."""
    h, w = values.shape
    # flat index i = y * w + x; the Java code walks x (outer) then y (inner)
    val = array("d", values.ravel().tolist())
    seed = array("l", markers.ravel().tolist())
    inside = array("b", fg.ravel().astype(np.int8).tolist())
    tab = array("l", [_INIT]) * (h * w)
    if connectivity == 4:
        steps = ((-1, 0), (0, -1), (1, 0), (0, 1))
    else:
        steps = ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1))

    def neighbours(i: int) -> List[int]:
        y, x = divmod(i, w)
        return [(y + dy) * w + x + dx for dx, dy in steps if 0 <= x + dx < w and 0 <= y + dy < h]

    heap: List[Tuple[float, int, int]] = []
    seq = 0
    seeds = np.flatnonzero((markers > 0).T.ravel() & fg.T.ravel())  # column-major order
    for k in seeds.tolist():
        x, y = divmod(k, h)
        i = y * w + x
        for j in neighbours(i):
            if seed[j] == 0 and tab[j] != _INQUEUE:
                heapq.heappush(heap, (val[j], seq, j))
                seq += 1
                tab[j] = _INQUEUE
        tab[i] = int(seed[i])
    while heap:
        _, _, i = heapq.heappop(heap)
        found: List[int] = []
        waiting: List[int] = []
        for j in neighbours(i):
            t = tab[j]
            if t == _INIT and inside[j]:
                waiting.append(j)
            elif t > 0 and t not in found:
                found.append(t)
        if len(found) == 1:
            tab[i] = found[0]
            for j in waiting:
                tab[j] = _INQUEUE
                heapq.heappush(heap, (val[j], seq, j))
                seq += 1
        elif len(found) > 1:
            tab[i] = _WSHED
    out = np.frombuffer(tab, dtype=np.int64 if tab.itemsize == 8 else np.int32).reshape(h, w)
    return np.where(out > 0, out, 0).astype(np.int32)


def _size_filter(labels: np.ndarray, min_size: float) -> np.ndarray:
    """MorphoLibJ's Label Size Filtering, Greater_Than: labels with more than min_size pixels."""
    counts = np.bincount(labels.ravel())
    keep = counts > min_size
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 1..N in order of first appearance (row by row), 0 stays 0."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    order = [v for _, v in sorted(zip(first.tolist(), values.tolist())) if v != 0]
    lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]
