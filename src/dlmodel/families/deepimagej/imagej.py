"""ImageJ 1.x's numbers, in numpy: the image a macro sees, ImageJ's arithmetic, statistics and
histograms, and the intensity macros on them.

What ImageJ 1.53t computes, reproduced:

- a number passed to an ImageJ command (``run("Subtract...", "value="+mean)``) goes through the
  macro language's number-to-string conversion: 4 decimals (``0.23325787`` -> ``0.2333``);
- ``Divide...`` multiplies by ``(float)(1/value)``; pixel arithmetic is float32;
- ``getStatistics`` gives the sample std (n - 1) of the current plane; ``getHistogram`` on a
  32-bit (or 16-bit) plane has its bins over that plane's [min, max] and ``values[i]`` is a bin's
  lower edge;
- in a stack, a command run without the ``stack`` keyword changes only the current (first)
  plane, unless the image is a composite shown in composite mode (then every plane).

The ImageJ image a macro sees (:class:`IJImage`): one per sample (``b``), its planes the
channels, slices and frames of the sample in ImageJ's stack order (channel fastest). ``uint8``
(and ``bool``) is an 8-bit image, ``uint16`` a 16-bit image, anything else a 32-bit (float32)
image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import numpy as np

from ...errors import InputError


def java_int(x: float) -> int:
    """Java's ``(int)x``: truncation, saturating, NaN -> 0."""
    if math.isnan(x):
        return 0
    if x >= 2147483647:
        return 2147483647
    if x <= -2147483648:
        return -2147483648
    return int(x)


def ij_str(x: float) -> str:
    """A number as the ImageJ macro language writes it into a string (``"value="+x``):
    ImageJ 1.53t Interpreter.toString, i.e. IJ.d2s(x, 4, 9) without trailing zeros.

    >>> ij_str(0.23325787), ij_str(255.0), ij_str(1e-20), ij_str(12345.678901)
    ('0.2333', '255', '1.0000E-20', '12345.6789')
    """
    x = float(x)
    if java_int(x) == x:
        return str(java_int(x))
    if math.isnan(x) or math.isinf(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    magnitude = math.ceil(math.log10(abs(x)) + 0.223 * math.pow(10, -9))
    decimals = 9 - magnitude
    if decimals < 0 or magnitude < 4 + 1 - 9:
        return _java_sci(x, 4)
    if decimals > 4:
        decimals = max(4, decimals - 9 + 4)
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _java_sci(x: float, digits: int) -> str:
    """``DecimalFormat("0.0000E0")``: ``1.2346E-6``."""
    mantissa, exponent = f"{x:.{digits}E}".split("E")
    return f"{mantissa}E{int(exponent)}"


def _ij_value(x: float) -> float:
    """The number an ImageJ command receives for ``"value="+x``."""
    return float(ij_str(x))


def f32(v: float) -> np.float32:
    """Java's ``(float)v``: float32, infinite where it overflows (no warning)."""
    with np.errstate(over="ignore"):
        return np.float32(v)


@dataclass
class IJImage:
    """A batch of ImageJ images: planes (b, n, y, x), n in ImageJ's stack order (channel
    fastest, then slice, then frame), and the way back to the caller's axes."""

    planes: np.ndarray
    bits: int
    channels: int
    slices: int
    frames: int
    axes: str
    shape: Tuple[int, ...]

    @classmethod
    def of(cls, x: np.ndarray, axes: str) -> "IJImage":
        axes = str(axes)
        if len(axes) != x.ndim:
            raise InputError(f"axes {axes!r} do not fit an array of {x.ndim} dimensions {x.shape}")
        if len(set(axes)) != len(axes) or not set(axes) <= set("btzcyx") or not {"y", "x"} <= set(axes):
            raise InputError(f"axes {axes!r}: a deepImageJ macro needs y and x, and takes only b, t, z, c besides")
        if x.dtype == np.uint8 or x.dtype == np.bool_:
            arr, bits = x.astype(np.uint8, copy=False), 8
        elif x.dtype == np.uint16:
            arr, bits = x, 16
        elif x.dtype.kind in "iuf":
            arr, bits = x.astype(np.float32, copy=False), 32
        else:
            raise InputError(f"a deepImageJ macro takes numbers, not {x.dtype} values")
        order = "btzcyx"
        full = arr
        for a in order:
            if a not in axes:
                full = full[..., None]
        present = axes + "".join(a for a in order if a not in axes)
        full = np.transpose(full, [present.index(a) for a in order])
        b, t, z, c, y, xs = full.shape
        return cls(full.reshape(b, t * z * c, y, xs), bits, c, z, t, axes, tuple(x.shape))

    def back(self, planes: np.ndarray) -> np.ndarray:
        """Planes (b, n, y, x) of any dtype, back in the caller's axes."""
        b, n, y, x = planes.shape
        full = planes.reshape(b, self.frames, self.slices, self.channels, y, x)
        order = "btzcyx"
        kept = [a for a in order if a in self.axes]
        full = full.reshape([full.shape[order.index(a)] for a in kept])
        return np.ascontiguousarray(np.transpose(full, [kept.index(a) for a in self.axes]))

    def back_without_c(self, labels: np.ndarray) -> np.ndarray:
        """Per-sample labels (b, y, x) in the caller's axes less ``c``."""
        out_axes = self.axes.replace("c", "")
        full = labels
        order = "btzyx"
        full = full.reshape(labels.shape[0], 1, 1, labels.shape[1], labels.shape[2])
        kept = [a for a in order if a in out_axes]
        full = full.reshape([full.shape[order.index(a)] for a in kept])
        return np.ascontiguousarray(np.transpose(full, [kept.index(a) for a in out_axes]))


def _to_float(planes: np.ndarray) -> np.ndarray:
    """``run("32-bit")``: a new float32 copy (8- and 16-bit values kept)."""
    return planes.astype(np.float32, copy=True)


def _scope(n: int, stack: bool, composite: bool) -> slice:
    """The planes an ImageJ command changes: all with ``stack`` (or in a composite shown as
    one), else the current (first) plane."""
    return slice(None) if (stack or composite or n == 1) else slice(0, 1)


def _subtract(planes: np.ndarray, value: float, where: slice) -> None:
    """``run("Subtract...", "value=v")`` on float32 planes, in place on the copy."""
    planes[:, where] = planes[:, where] + f32(-value)


def _add(planes: np.ndarray, value: float, where: slice) -> None:
    planes[:, where] = planes[:, where] + f32(value)


def _multiply(planes: np.ndarray, value: float, where: slice) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        planes[:, where] = planes[:, where] * f32(value)


def _divide(planes: np.ndarray, value: float, where: slice) -> None:
    """ImageMath's Divide on a 32-bit image: multiply by ``(float)(1/value)``."""
    with np.errstate(divide="ignore"):
        inverse = 1.0 / value if value != 0 else math.copysign(math.inf, value)
    _multiply(planes, inverse, where)


def _statistics(plane: np.ndarray, bits: int) -> Tuple[int, float, float, float, float]:
    """ImageJ's ``getStatistics`` of one plane: (n, mean, sample std, min, max). NaN and
    infinite 32-bit values are left out, as ImageJ leaves them out."""
    if bits == 32:
        v = plane[np.isfinite(plane)].astype(np.float64)
    else:
        v = plane.astype(np.float64).ravel()
    n = v.size
    if n == 0:
        return 0, math.nan, 0.0, math.nan, math.nan
    s, s2 = float(v.sum()), float(np.square(v).sum())
    var = (n * s2 - s * s) / n
    std = math.sqrt(var / (n - 1.0)) if (var > 0.0 and n > 1) else 0.0
    return n, s / n, std, float(v.min()), float(v.max())


def _histogram(plane: np.ndarray, bits: int, n_bins: int) -> Tuple[np.ndarray, np.ndarray]:
    """ImageJ's ``getHistogram(values, counts, nBins)`` of one plane: bin lower edges (ImageJ
    adds the bin width n times) and counts."""
    if bits == 8 and n_bins == 256:
        counts = np.bincount(plane.ravel(), minlength=256).astype(np.float64)
        return np.arange(256, dtype=np.float64), counts
    if bits == 16 and n_bins == 65536:
        raise InputError("a 65536-bin histogram of a 16-bit image gives the macro no bin values; ImageJ fails")
    if bits == 32:
        v = plane[np.isfinite(plane)].astype(np.float64)
        lo, hi = (float(v.min()), float(v.max())) if v.size else (math.inf, -math.inf)
        scale = n_bins / (hi - lo) if hi != lo else math.inf
    else:
        if bits == 8:  # converted to 16-bit, histogram over [0, 256)
            v = plane.astype(np.float64).ravel()
            lo, hi = 0.0, 256.0
        else:
            v = plane.astype(np.float64).ravel()
            lo, hi = float(v.min()), float(v.max())
        width = (hi - lo) / n_bins
        scale = 1.0 / width if width != 0 else math.inf
    if math.isinf(scale):  # one value: Java's (int)(inf*0) is 0
        index = np.zeros(v.size, dtype=np.int64)
    else:
        index = np.minimum((scale * (v - lo)).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)[:n_bins].astype(np.float64)
    inc = (hi - lo) / n_bins
    values = np.empty(n_bins, dtype=np.float64)
    value = lo
    for i in range(n_bins):
        values[i] = value
        value += inc
    return values, counts


# --------------------------------------------------------------------------------------------
# The intensity macros
# --------------------------------------------------------------------------------------------


def _run_scale_range(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """per_sample_scale_range.ijm: cumulative 256-bin histogram of stack planes 1..(number of
    z slices), the first bin index from 1 whose normalised cumulative count reaches the lower
    target, then (going on from there) the upper; ``values[i]`` are bin lower edges; then
    ``(x - mi) / (ma - mi + 1e-20)`` on every plane, both numbers as ImageJ passes them."""
    # p["rgb_branch"]: the macro's branch for RGB Color images, which dlmodel never hands it
    # (is("grayscale") is true for 8/16/32-bit images and composites alike)
    n_bins = int(p["bins"])
    if n_bins < 2:
        raise InputError(f"{file}: nBins = {n_bins}; ImageJ's search needs at least 2 bins")
    out = _to_float(image.planes)
    for b in range(image.planes.shape[0]):
        cum = np.zeros(n_bins, dtype=np.float64)
        values = np.zeros(n_bins)
        for s in range(image.slices):  # setSlice(s) for s = 1..slices: stack positions, not z
            values, counts = _histogram(image.planes[b, s], image.bits, n_bins)
            cum = cum + counts
        cum = np.cumsum(cum)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = cum / cum[-1]
        i = _walk(norm, 0, p["min_target"], file)
        mi = values[i]
        i = _walk(norm, i, p["max_target"], file)
        ma = values[i]
        diff = ma - mi + 1e-20
        sample = out[b : b + 1]
        _subtract(sample, _ij_value(mi), slice(None))
        _divide(sample, _ij_value(diff), slice(None))
    return image.back(out)


def _walk(norm: np.ndarray, i: int, target: float, file: str) -> int:
    """``do { i = i + 1; } while (normCumHist[i] < target)``."""
    while True:
        i += 1
        if i >= norm.size:
            raise InputError(f"{file}: the histogram search runs past bin {norm.size - 1} (ImageJ fails: "
                             "almost every pixel has the image's maximum)")
        if not norm[i] < target:
            return i


def _run_zmuv(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """zero_mean_unit_variance.ijm: mean and sample std of each sample's first plane; the
    first plane (every plane in a composite) minus the mean, divided by the std."""
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    for b in range(out.shape[0]):
        _, mean, std, _, _ = _statistics(out[b, 0], 32)
        _subtract(out[b : b + 1], _ij_value(mean), where)
        _divide(out[b : b + 1], _ij_value(std), where)
    return image.back(out)


def _run_fixed_zmuv(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    _fixed_zmuv(out, p, where)
    return image.back(out)


def _fixed_zmuv(out: np.ndarray, p: Dict[str, Any], where: slice) -> None:
    """(x - mean) / std with the macro's numbers, as ImageJ passes them, in place."""
    _subtract(out, _ij_value(p["mean"]), where)
    _divide(out, _ij_value(p["std"]), where)


def _run_min_max_fixed_zmuv(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """MeanNormalization.ijm: (x - min) / (max - min + 1e-20) with the first plane's min and
    max, then (x - mean) / std with the macro's numbers; each as ImageJ passes it."""
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    for b in range(out.shape[0]):
        _, _, _, lo, hi = _statistics(out[b, 0], 32)
        _subtract(out[b : b + 1], _ij_value(lo), where)
        _divide(out[b : b + 1], _ij_value(hi - lo + 1e-20), where)
    _fixed_zmuv(out, p, where)
    return image.back(out)


def _run_percentile_normalization(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """PercentileNormalization.ijm: the histogram of the first plane, cumulated from
    ``values[0]`` (the macro's slip) instead of ``counts[0]``, both searches from bin 1."""
    n_bins = int(p["bins"])
    if n_bins < 2:
        raise InputError(f"{file}: nBins = {n_bins}; ImageJ's search needs at least 2 bins")
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    for b in range(out.shape[0]):
        values, counts = _histogram(image.planes[b, 0], image.bits, n_bins)
        counts = counts.copy()
        counts[0] = values[0]
        cum = np.cumsum(counts)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = cum / cum[-1]
        mi = values[_walk(norm, 0, p["min_target"], file)]
        ma = values[_walk(norm, 0, p["max_target"], file)]
        _subtract(out[b : b + 1], _ij_value(mi), where)
        _divide(out[b : b + 1], _ij_value(ma - mi + 1e-20), where)
    return image.back(out)


def _run_scale_linear(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    _multiply(out, _ij_value(p["gain"]), where)
    _add(out, _ij_value(p["offset"]), where)
    return image.back(out)


def _run_binarize(image: IJImage, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """binarize.ijm: 255 where threshold <= value <= the first plane's maximum, on every plane
    (Convert to Mask); the 2023 version then divides by 255, on the first plane only unless
    the image stays a composite (an 8-bit one does; a 16/32-bit one becomes grayscale)."""
    planes = image.planes
    out = np.zeros(planes.shape, dtype=np.uint8)
    for b in range(planes.shape[0]):
        _, _, _, _, top = _statistics(planes[b, 0], image.bits)
        if image.bits == 8:
            v = planes[b].astype(np.float64)
            lo, hi = float(p["threshold"]), top
        else:
            v = planes[b].astype(np.float32)
            lo, hi = f32(p["threshold"]), f32(top)
        out[b] = np.where((v >= lo) & (v <= hi), 255, 0)
    if p["foreground"] == 1:
        where = _scope(out.shape[1], False, composite and image.bits == 8)
        out[:, where] = out[:, where] // 255  # ByteProcessor: round(v * (1/255))
    return image.back(out)


# how every macro kind runs: (image, the macro's params, composite, file named in messages) -> array
Runner = Callable[[IJImage, Dict[str, Any], bool, str], np.ndarray]

# intensity macro kind -> its numpy equivalent
INTENSITY_RUNNERS: Dict[str, Runner] = {
    "per_sample_scale_range": _run_scale_range,
    "zero_mean_unit_variance": _run_zmuv,
    "fixed_zero_mean_unit_variance": _run_fixed_zmuv,
    "scale_linear": _run_scale_linear,
    "min_max_fixed_zero_mean_unit_variance": _run_min_max_fixed_zmuv,
    "percentile_normalization": _run_percentile_normalization,
    "binarize": _run_binarize,
}
