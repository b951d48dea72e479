"""Well quality: per-image focus and saturation measures, and per-well flags a screener acts
on (no objects, a count far from the plate's typical well, a blurred image, clipped pixels).

Flags compare a well with the rest of its plate by a robust z-score (median and MAD, so the
bad wells themselves do not hide the outliers); each flag has one sentence in :data:`FLAGS`
saying what it means and what to do.

>>> robust_z([10, 11, 9, 10, 50]).round(2).tolist()
[0.0, 0.67, -0.67, 0.0, 26.98]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Hashable, List, Mapping, Sequence

import numpy as np

#: what each flag means, shown beside it in the report
FLAGS = {
    "no objects": "the model found no object in the well: an empty or failed image, the wrong channel, or a "
                  "stain that did not work; the well's readouts are missing, not zero.",
    "count outlier": "the object count is far from the plate's typical well (|robust z| > {count_z:g}, robust "
                     "z = (count - median) / (1.4826 x MAD) over the plate): a dispensing error, toxicity, or a "
                     "segmentation failure; look at the image before trusting the well.",
    "blurred": "{channel} is much less sharp than the plate's typical image (robust z of the sharpness "
               "< -{blur_z:g}; sharpness = variance of the Laplacian / variance of the image): out of focus, so "
               "objects merge or go missing.",
    "saturated": "more than {saturated_percent:g} % of {channel}'s pixels sit at the image's maximum "
                 "value: intensities there are clipped, so mean intensities understate.",
    "model unsure": "the model's confidence (dlmodel predict --confidence; docs/confidence.md) is far below the "
                    "plate's typical well (z < -{unsure_z:g}, z = (confidence - median) / max(1.4826 x MAD, "
                    "{unsure_floor:g}) over the plate): its flipped and rotated copies disagree, its probabilities "
                    "are undecided or the image is unlike the model's test input; check the objects before "
                    "trusting the well.",
}


@dataclass(frozen=True)
class Thresholds:
    """When a well is flagged: ``count_z`` (|robust z| of the count), ``blur_z`` (robust z of
    the sharpness below minus this), ``saturated_percent`` (percent of pixels at the maximum),
    ``unsure_z`` (z of the model's confidence below minus this, its scale at least ``unsure_floor``)."""

    count_z: float = 3.5
    blur_z: float = 3.5
    saturated_percent: float = 0.5
    unsure_z: float = 3.5
    #: the smallest scale of the confidence's z (confidence units): on a plate where every well
    #: scores nearly alike, a well 0.01 below the rest is not "unsure"
    unsure_floor: float = 0.05


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian over variance of the image: high-frequency energy per unit
    contrast (Pech-Pacheco et al. 2000, made independent of the image's gain). Blur lowers it;
    0 for a constant image.

    >>> rng = np.random.default_rng(0); img = rng.random((64, 64))
    >>> from scipy.ndimage import gaussian_filter
    >>> sharpness(img) > sharpness(gaussian_filter(img, 2)) > 0
    True
    """
    from scipy.ndimage import laplace

    a = np.asarray(image, dtype=np.float64)
    var = a.var()
    return float(laplace(a).var() / var) if var > 0 else 0.0


def saturation(image: np.ndarray) -> float:
    """Fraction of pixels at the image's maximum value (CellProfiler's PercentMaximal / 100):
    clipped pixels pile up there. A constant image counts as saturated only when it sits at its
    integer type's ceiling.

    >>> saturation(np.array([[0, 255], [255, 255]], dtype=np.uint8))
    0.75
    """
    a = np.asarray(image)
    top = a.max()
    if top == a.min():
        return 1.0 if np.issubdtype(a.dtype, np.integer) and top == np.iinfo(a.dtype).max else 0.0
    return float(np.count_nonzero(a == top) / a.size)


def image_measures(channels: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """``sharpness_<channel>`` and ``saturation_<channel>`` of each channel image."""
    out: Dict[str, float] = {}
    for name, img in channels.items():
        out[f"sharpness_{name}"] = sharpness(img)
        out[f"saturation_{name}"] = saturation(img)
    return out


def robust_z(values: Sequence[float]) -> np.ndarray:
    """(value - median) / (1.4826 x median absolute deviation); NaN stays NaN. When more than
    half the values are equal (MAD 0), the mean absolute deviation x 1.2533 is the scale; when
    all are equal every z is 0."""
    a = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(a)
    z = np.full(a.shape, np.nan)
    if not ok.any():
        return z
    med = np.median(a[ok])
    dev = np.abs(a[ok] - med)
    scale = 1.4826 * np.median(dev)
    if scale == 0:
        scale = 1.2533 * dev.mean()
    z[ok] = (a[ok] - med) / scale if scale > 0 else 0.0
    return z


def unsure_z(value: float, plate: Sequence[float], floor: float = Thresholds.unsure_floor) -> float:
    """How far a confidence lies below the plate's: (value - median) / max(1.4826 x MAD, floor)
    over the plate's values (NaN ignored; NaN when there is none).

    >>> round(unsure_z(0.5, [0.9, 0.91, 0.89, 0.9, 0.5]), 1)
    -8.0
    """
    a = np.asarray(plate, dtype=np.float64)
    a = a[np.isfinite(a)]
    if not a.size or not np.isfinite(value):
        return math.nan
    med = float(np.median(a))
    return float((value - med) / max(1.4826 * float(np.median(np.abs(a - med))), floor))


def flags(wells: Mapping[Hashable, Mapping[str, float]], count: str = "count",
          thresholds: Thresholds = Thresholds()) -> Dict[Hashable, List[str]]:
    """The flags of each well (``{well: {column: value}}``, e.g. wells.csv rows), each flag a
    short text: ``no objects``, ``count outlier (z = 5.1)``, ``blurred (channel 2, z = -4.2)``,
    ``saturated (channel 1, 2.3 %)``, ``model unsure (confidence 0.41, z = -6.2)`` (from a
    ``confidence`` column: :func:`unsure_z`). Channels are found from the ``sharpness_*`` and
    ``saturation_*`` columns (:func:`image_measures`).

    >>> w = {k: {"count": c} for k, c in zip("abcdef", [100, 104, 98, 101, 0, 400])}
    >>> flags(w)["e"], flags(w)["f"]
    (['no objects', 'count outlier (z = -22.6)'], ['count outlier (z = 67.3)'])
    """
    keys = list(wells)
    out: Dict[Hashable, List[str]] = {k: [] for k in keys}
    if not keys:
        return out
    counts = [float(wells[k].get(count, math.nan)) for k in keys]
    for k, c, z in zip(keys, counts, robust_z(counts)):
        if c == 0:
            out[k].append("no objects")
        if np.isfinite(z) and abs(z) > thresholds.count_z:
            out[k].append(f"count outlier (z = {z:.1f})")
    columns = sorted({c for k in keys for c in wells[k]})
    for col in columns:
        if col.startswith("sharpness_"):
            channel = col[len("sharpness_"):]
            for k, z in zip(keys, robust_z([float(wells[k].get(col, math.nan)) for k in keys])):
                if np.isfinite(z) and z < -thresholds.blur_z:
                    out[k].append(f"blurred (channel {channel}, z = {z:.1f})")
        elif col == "confidence":
            plate = [float(wells[k].get(col, math.nan)) for k in keys]
            for k, v in zip(keys, plate):
                z = unsure_z(v, plate, thresholds.unsure_floor)
                if np.isfinite(z) and z < -thresholds.unsure_z:
                    out[k].append(f"model unsure (confidence {v:.2f}, z = {z:.1f})")
        elif col.startswith("saturation_"):
            channel = col[len("saturation_"):]
            for k in keys:
                pct = 100.0 * float(wells[k].get(col, math.nan))
                if pct > thresholds.saturated_percent:
                    out[k].append(f"saturated (channel {channel}, {pct:.2g} %)")
    return out


def explain(flag: str, thresholds: Thresholds = Thresholds()) -> str:
    """The sentence for a flag as :func:`flags` writes it, or for a flag's name.

    >>> explain("saturated (channel 1, 2.3 %)")[:40]
    "more than 0.5 % of channel 1's pixels si"
    >>> explain("blurred")[:30]
    'a channel is much less sharp t'
    """
    name = flag.split(" (")[0]
    channel = "channel " + flag.split("channel ")[1].split(",")[0] if "channel " in flag else "a channel"
    return FLAGS[name].format(channel=channel, count_z=thresholds.count_z, blur_z=thresholds.blur_z,
                              saturated_percent=thresholds.saturated_percent, unsure_z=thresholds.unsure_z,
                              unsure_floor=thresholds.unsure_floor)
