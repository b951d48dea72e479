"""From model outputs to objects: label images from probabilities or label outputs.

All functions work on 2D and 3D arrays (``yx`` or ``zyx``) and return ``int32`` labels
numbered 1..N without gaps, 0 for background.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError, SpecError

METHODS = ("labels", "threshold", "watershed")

RECIPE_KEYS = {"output", "method", "channel", "foreground", "seeds", "threshold", "seed_threshold", "min_seed_size",
               "diameter", "min_size", "fill_holes", "discard_border"}

# The generic instance step for a package without a recipe of its own, and what a generic recipe
# means by a key it leaves out: one answer for to_labels, Model.labels, `dlmodel predict --labels`,
# `dlmodel plate`, RunDLModel and benchmarks/accuracy.py. RunDLModel's settings were these before
# they were shared (docs/accuracy.md: F1 0.786 with the shared zoo U-Net, 0.753 with an estimated
# diameter and min size 15, the old Python fallback).
DEFAULT_RECIPE: Dict[str, Any] = {"method": "watershed", "threshold": 0.5, "diameter": 20, "min_size": 30,
                                  "fill_holes": True, "discard_border": False}


@dataclass(frozen=True)
class InstanceOptions:
    """How to turn an output into objects; the defaults are :data:`DEFAULT_RECIPE`'s.

    method: ``labels`` (the output already is a label image), ``threshold`` (threshold +
        connected components) or ``watershed`` (threshold, then split touching objects at
        the necks of the distance map, seeded one per expected object).
    threshold: probability above which a pixel is foreground.
    diameter: expected object diameter in pixels (watershed seeds lie at least about half a
        radius apart); None or 0: estimated from the foreground's connected components.
    min_size: objects smaller than this many pixels are removed.
    fill_holes: fill holes inside each object.
    discard_border: remove objects touching the image border.
    """

    method: str = DEFAULT_RECIPE["method"]
    threshold: float = DEFAULT_RECIPE["threshold"]
    diameter: Optional[float] = DEFAULT_RECIPE["diameter"]
    min_size: int = DEFAULT_RECIPE["min_size"]
    fill_holes: bool = DEFAULT_RECIPE["fill_holes"]
    discard_border: bool = DEFAULT_RECIPE["discard_border"]


def to_labels(output: np.ndarray, options: InstanceOptions = InstanceOptions()) -> np.ndarray:
    """Objects from one model output of shape ``yx`` or ``zyx`` (probabilities or labels)."""
    if options.method not in METHODS:
        raise InputError(f"unknown object method {options.method!r}; use one of {', '.join(METHODS)}")
    if options.method == "labels":
        # a new array: the caller's labels (int64 already, say) are never changed
        labels = np.asarray(output).astype(np.int64, copy=True)
        labels[labels < 0] = 0
    else:
        mask = np.asarray(output) > options.threshold
        if options.method == "threshold":
            labels, _ = ndi.label(mask)
        else:
            labels = split_touching(mask, options.diameter)
    return _finish(labels, options.min_size, options.fill_holes, options.discard_border)


def seeded_watershed(
    foreground: np.ndarray, seeds: np.ndarray, threshold: float = 0.5, seed_threshold: float = 0.5,
    min_seed_size: int = 4,
) -> np.ndarray:
    """Objects from a foreground probability and a seed (object interior) probability.

    Each connected region of ``seeds > seed_threshold`` inside the foreground is one object;
    the foreground (``> threshold``) is shared out among them by a watershed on the seed
    probability, so touching objects meet where the model saw a boundary."""
    from skimage.segmentation import watershed

    mask = foreground > threshold
    markers, _ = ndi.label((seeds > seed_threshold) & mask)
    if min_seed_size > 1:
        markers = relabel(markers, min_seed_size)
    labels = watershed(-seeds, markers, mask=mask)
    unseeded = mask & (labels == 0)  # foreground blobs with no interior: keep them whole
    if unseeded.any():
        extra, _ = ndi.label(unseeded)
        labels[unseeded] = extra[unseeded] + labels.max()
    return labels


FINISHING = ("min_size", "fill_holes", "discard_border")
# A family's step (StarDist's NMS, Cellpose's flows, a macro) is whole: the finishing its recipe
# leaves out is not done.
FAMILY_FINISHING: Dict[str, Any] = {"min_size": 0, "fill_holes": False, "discard_border": False}


def _refused(choice: str, message: str) -> InputError:
    """The error for a refused choice; ``.choice`` names it, so an adapter can point at its own
    setting for it."""
    error = InputError(message)
    error.choice = choice  # type: ignore[attr-defined]
    return error


def resolve_recipe(
    package_recipe: Optional[Mapping[str, Any]],
    method: str = "auto",
    output: Optional[str] = None,
    channel: Optional[int] = None,
    threshold: Optional[float] = None,
    diameter: Optional[float] = None,
    min_size: Optional[int] = None,
    fill_holes: Optional[bool] = None,
    discard_border: Optional[bool] = None,
) -> Dict[str, Any]:
    """How a model's output becomes objects: the package's recipe and the user's choices, made
    into one recipe for :func:`from_recipe`. Every adapter (Python, CLI, CellProfiler) asks here.

    ``method="auto"``: the package's own recipe (its output, channels, thresholds) when it has
    one, with the user's ``min_size``, ``fill_holes`` and ``discard_border`` on top; an
    ``output`` or ``channel`` other than the recipe's is refused (it would be ignored). Without
    a recipe, and for an explicit ``method`` (``watershed``, ``threshold``, ``labels``):
    :data:`DEFAULT_RECIPE` with every given choice, on ``output`` and 0-based ``channel``.
    None means "not given".

    >>> resolve_recipe(None)["method"], resolve_recipe(None)["min_size"]
    ('watershed', 30)
    >>> resolve_recipe({"method": "threshold", "threshold": 0.7}, min_size=5)
    {'method': 'threshold', 'threshold': 0.7, 'min_size': 5}
    """
    given = {k: v for k, v in (("threshold", threshold), ("diameter", diameter), ("min_size", min_size),
                                ("fill_holes", fill_holes), ("discard_border", discard_border)) if v is not None}
    if method == "auto" and package_recipe:
        recipe = dict(package_recipe)
        own = recipe.get("output")
        if output is not None and own is not None and output != own:
            raise _refused("output", f"the package's own recipe makes objects from output {own!r}, not {output!r}: "
                           "choose that output, or another method than automatic")
        if (channel is not None and recipe.get("method", "watershed") in METHODS
                and int(recipe.get("channel", 0)) != int(channel)):
            raise _refused("channel", f"the package's own recipe makes objects from channel "
                           f"{int(recipe.get('channel', 0)) + 1}, not {int(channel) + 1}: choose that channel, "
                           "or another method than automatic")
        return {**recipe, **{k: v for k, v in given.items() if k in FINISHING}}
    chosen = DEFAULT_RECIPE["method"] if method == "auto" else method
    if chosen not in METHODS:
        raise _refused("method", f"unknown object method {chosen!r}; use auto or one of {', '.join(METHODS)}")
    recipe = {**DEFAULT_RECIPE, **given, "method": chosen}
    if output is not None:
        recipe["output"] = output
    if channel is not None:
        recipe["channel"] = int(channel)
    return recipe


def from_recipe(output: np.ndarray, axes: str, recipe: Mapping[str, Any]) -> np.ndarray:
    """Objects from a whole model output (``axes`` e.g. ``cyx``), following a package's recipe.

    A recipe lives in the rdf under ``config: dlmodel: instances`` (see ``dlmodel package``)::

        {"output": "prediction", "method": "seeded_watershed", "foreground": [1, 2],
         "seeds": 1, "threshold": 0.5, "seed_threshold": 0.5, "min_size": 15}

    ``seeded_watershed`` sums the ``foreground`` channels and seeds from the ``seeds``
    channel; other methods (``watershed``, ``threshold``, ``labels``) use ``channel``; a
    family's method (``stardist``, ``cellpose``: :mod:`dlmodel.families`) uses the whole output,
    and the user's ``min_size``, ``fill_holes`` and ``discard_border`` after it."""
    from . import families

    method = recipe.get("method", DEFAULT_RECIPE["method"])
    if method in families.methods():  # StarDist, Cellpose, ...: the family's own step, then the user's finishing
        labels = families.labels(output, axes, recipe)
        return _finish(labels, *(recipe.get(k, v) for k, v in FAMILY_FINISHING.items()))
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise SpecError(f"unknown key(s) in the instance recipe: {', '.join(sorted(unknown))}")

    def channel(i: int) -> np.ndarray:
        return np.take(output, int(i), axis=axes.index("c")) if "c" in axes else output

    # a generic recipe's unsaid keys are DEFAULT_RECIPE's (through InstanceOptions), or the
    # seeded watershed's own defaults
    if method == "seeded_watershed":
        fg = sum(channel(i) for i in recipe.get("foreground", [0]))
        labels = seeded_watershed(fg, channel(recipe.get("seeds", 0)), **{
            k: recipe[k] for k in ("threshold", "seed_threshold", "min_seed_size") if k in recipe})
        return _finish(labels, *(recipe.get(k, DEFAULT_RECIPE[k]) for k in FINISHING))
    opts = InstanceOptions(**{k: recipe[k] for k in ("method", "threshold", "diameter", "min_size", "fill_holes",
                                                      "discard_border") if k in recipe})
    return to_labels(channel(recipe.get("channel", 0)), opts)


def describe_recipe(recipe: Optional[Mapping[str, Any]]) -> str:
    """One line on how a recipe makes objects (``dlmodel info``, RunDLModel's model information).

    >>> describe_recipe({"method": "threshold", "threshold": 0.7, "output": "prob"})
    "threshold 0.7, then connected components of output 'prob'"
    """
    from . import families

    if not recipe:
        return "no recipe"
    family = families.describe(recipe)
    if family:
        return family
    method = recipe.get("method", DEFAULT_RECIPE["method"])
    of = f" of output {recipe['output']!r}" if recipe.get("output") else ""
    if method == "seeded_watershed":
        return (f"seeded watershed{of}: seeds from channel {int(recipe.get('seeds', 0)) + 1}, foreground from channels "
                f"{', '.join(str(int(c) + 1) for c in recipe.get('foreground', [0]))}")
    if method == "labels":
        return f"the output{of} is a label image"
    channel = f", channel {int(recipe.get('channel', 0)) + 1}" if "channel" in recipe else ""
    threshold = recipe.get("threshold", DEFAULT_RECIPE["threshold"])
    if method == "threshold":
        return f"threshold {threshold:g}, then connected components{of}{channel}"
    diameter = recipe.get("diameter", DEFAULT_RECIPE["diameter"])
    return (f"threshold {threshold:g}, then a watershed split of touching objects "
            f"({'diameter ' + format(diameter, 'g') if diameter else 'estimated diameter'}){of}{channel}")


def _finish(labels: np.ndarray, min_size: int, fill: bool, discard_border: bool) -> np.ndarray:
    """The finishing steps, in :data:`FINISHING`'s order."""
    from skimage.segmentation import clear_border

    if fill:
        labels = fill_holes(labels)
    if discard_border:
        labels = clear_border(labels)
    return relabel(labels, min_size)


def relabel(labels: np.ndarray, min_size: int = 1) -> np.ndarray:
    """Labels renumbered 1..N in order of their old numbers, int32, 0 kept as background;
    objects of fewer than ``min_size`` pixels, and negative numbers, become background on the way
    (as ``to_labels`` treats a model's negative labels).

    Same result as skimage's ``relabel_sequential`` for non-negative labels, by a lookup
    table instead of ``np.unique`` (a sort of every pixel: most of the time of a whole
    instance step on a 640x640 image)."""
    if labels.dtype == np.uint64 or labels.dtype.kind not in "iu":  # bincount takes int64 at most
        labels = labels.astype(np.int64)
    flat = labels.ravel()
    if flat.size == 0:
        return labels.astype(np.int32)
    if flat.min() < 0 or flat.max() > 4 * flat.size:  # sparse, huge label numbers: a table would not fit
        values, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        keep = (values > 0) & (counts >= max(min_size, 1))
        new = np.zeros(values.size, np.int32)
        new[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        return new[inverse].reshape(labels.shape)
    present = np.bincount(flat) >= max(min_size, 1)
    present[0] = False
    lut = np.zeros(present.size, np.int32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lut[labels]


def estimate_diameter(mask: np.ndarray) -> float:
    """Median equivalent diameter of the foreground's connected components (pixels)."""
    labels, n = ndi.label(mask)
    if n == 0:
        return 0.0
    sizes = np.bincount(labels.ravel())[1:]
    sizes = sizes[sizes > 0]
    if mask.ndim == 3:
        return float((6 * np.median(sizes) / np.pi) ** (1 / 3))
    return float(2 * np.sqrt(np.median(sizes) / np.pi))


def split_touching(mask: np.ndarray, diameter: Optional[float] = None) -> np.ndarray:
    """Label a foreground mask, splitting touching round objects by a distance-map watershed.

    Seeds are the maxima of the distance to the background that stand out by at least a tenth
    of the expected radius (so one elongated object is not cut in two) and lie at least half a
    radius apart."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    if diameter is None or diameter <= 0:
        diameter = estimate_diameter(mask)
    radius = max(diameter / 2.0, 1.0)
    distance = ndi.distance_transform_edt(mask)
    smooth = ndi.gaussian_filter(distance, sigma=max(radius / 8.0, 0.5))
    components, _ = ndi.label(mask)
    peaks = peak_local_max(
        smooth,
        min_distance=max(int(round(radius / 2)), 1),
        threshold_abs=max(radius * 0.1, 0.5),
        labels=components,
        exclude_border=False,
    )
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-smooth, markers, mask=mask)
    # components without a seed (tiny or flat ones) keep their own label
    unseeded = mask & (labels == 0)
    if unseeded.any():
        extra, n = ndi.label(unseeded)
        labels[unseeded] = extra[unseeded] + labels.max()
    return labels


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background holes enclosed by a single object.

    A hole is a background region (face-connected) that does not reach the image border; it
    takes its surroundings' label when every pixel next to it belongs to the same object. The
    neighbours of all hole pixels are looked up at once, not hole by hole."""
    out = labels.copy()
    background, n = ndi.label(labels == 0)
    if n == 0:
        return out
    border = np.zeros(n + 1, bool)
    for d in range(labels.ndim):
        for edge in (0, -1):
            border[np.take(background, edge, axis=d)] = True
    is_hole = ~border
    is_hole[0] = False
    if not is_hole.any():
        return out
    holes = np.where(is_hole, np.arange(n + 1, dtype=background.dtype), 0)[background].ravel()  # hole number, 0 elsewhere
    at = np.flatnonzero(holes)
    hole = holes[at]
    flat = out.reshape(-1)  # a fresh copy: C-contiguous
    lo = np.full(n + 1, np.iinfo(np.int64).max)
    hi = np.zeros(n + 1, np.int64)
    for stride in np.cumprod((1,) + labels.shape[:0:-1]):
        for step in (-int(stride), int(stride)):
            # no hole touches the border, so every neighbour of a hole pixel is in the image
            nb = flat[at + step]
            edge = nb > 0
            np.minimum.at(lo, hole[edge], nb[edge])
            np.maximum.at(hi, hole[edge], nb[edge])
    fill = is_hole & (lo == hi)
    if fill.any():
        keep = fill[hole]
        flat[at[keep]] = hi[hole[keep]]
    return out


def centers(labels: np.ndarray) -> np.ndarray:
    """Centre of mass of each object 1..N, shape (N, ndim) in array axis order (z, y, x)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros((0, labels.ndim))
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    sums = []
    for d, size in enumerate(labels.shape):
        along = np.arange(size, dtype=np.float64).reshape([-1 if i == d else 1 for i in range(labels.ndim)])
        sums.append(np.bincount(flat, weights=np.broadcast_to(along, labels.shape).ravel(), minlength=n + 1)[1:])
    with np.errstate(invalid="ignore", divide="ignore"):  # a missing label number: NaN, as ndimage gives
        return np.stack(sums, axis=1) / counts[:, None]


def fit_to_image(labels: np.ndarray, axes: str, space: Mapping[str, int], grid: Optional[Sequence[int]]) -> np.ndarray:
    """Labels made on a grid of every ``grid``-th pixel (StarDist's) at the image's own size.

    The output of a 251-pixel side on a grid of 2 has 125 cells, so its labels have 250 pixels:
    the missing row or column is background, an extra one is dropped. Only differences smaller
    than the grid are fitted; anything else is returned as it is.

    >>> fit_to_image(np.ones((4, 4), np.int32), "cyx", {"y": 5, "x": 3}, [2, 2]).shape
    (5, 3)
    """
    letters = [a for a in axes if a in "zyx"]
    if not space or not grid or len(grid) != len(letters) or labels.ndim < len(letters):
        return labels
    lead = labels.ndim - len(letters)
    target = list(labels.shape)
    for i, (a, g) in enumerate(zip(letters, grid)):
        if a in space and abs(space[a] - labels.shape[lead + i]) < int(g):
            target[lead + i] = space[a]
    if tuple(target) == labels.shape:
        return labels
    fitted = np.zeros(target, labels.dtype)
    common = tuple(slice(0, min(s, t)) for s, t in zip(labels.shape, target))
    fitted[common] = labels[common]
    return fitted


def f1_at_iou(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> tuple:
    """True positives, false positives and false negatives at an IoU threshold (matches unique).

    With IoU > 0.5 a match is necessarily unique, so pairs are counted from the overlap table."""
    ious, n_p, n_t = _matches(pred, truth, iou)
    tp = int(ious.size)
    return tp, n_p - tp, n_t - tp


def matched_ious(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """The IoU of each matched pair of objects (IoU above ``iou``): one value per true positive
    of :func:`f1_at_iou`, so their mean says how well the matched outlines fit.

    >>> truth = np.array([[1, 1, 1, 0, 2, 2]])
    >>> pred = np.array([[1, 1, 0, 0, 0, 2]])   # object 1: 2 of 3 pixels; object 2: IoU 0.5, no match
    >>> matched_ious(pred, truth).round(3)
    array([0.667])
    """
    return _matches(pred, truth, iou)[0]


def _matches(pred: np.ndarray, truth: np.ndarray, iou: float) -> "tuple[np.ndarray, int, int]":
    """IoUs of the pairs above ``iou``, and the numbers of predicted and true objects."""
    from skimage.segmentation import relabel_sequential

    pred = relabel_sequential(np.asarray(pred).astype(np.int64))[0].ravel()
    truth = relabel_sequential(np.asarray(truth).astype(np.int64))[0].ravel()
    n_p, n_t = int(pred.max()), int(truth.max())
    if n_p == 0 or n_t == 0:
        return np.zeros(0), n_p, n_t
    ious = overlaps(pred, truth, n_p, n_t)[2]
    return ious[ious > iou], n_p, n_t


def overlaps(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
    """Every pair of overlapping objects of two flat label arrays numbered 0..n_a and 0..n_b:
    their labels and their intersection over union, from one table of pixel counts."""
    both = (a > 0) & (b > 0)
    inter = np.bincount(a[both] * (n_b + 1) + b[both], minlength=(n_a + 1) * (n_b + 1)).reshape(n_a + 1, n_b + 1)
    area_a = np.bincount(a, minlength=n_a + 1)
    area_b = np.bincount(b, minlength=n_b + 1)
    ai, bi = np.nonzero(inter)
    keep = (ai > 0) & (bi > 0)
    ai, bi = ai[keep], bi[keep]
    i = inter[ai, bi]
    return ai, bi, i / (area_a[ai] + area_b[bi] - i)


def pooled_f1(pairs: Any, iou: float = 0.5) -> tuple:
    """F1 at an IoU threshold pooled over images (true positives, false positives and false
    negatives summed first), from ``(predicted labels, true labels)`` pairs.

    Returns ``(f1, tp, fp, fn)``; F1 is 0 when there is nothing to match at all."""
    tp = fp = fn = 0
    for pred, truth in pairs:
        t, p, n = f1_at_iou(pred, truth, iou)
        tp, fp, fn = tp + t, fp + p, fn + n
    total = 2 * tp + fp + fn
    return (2 * tp / total if total else 0.0), tp, fp, fn
