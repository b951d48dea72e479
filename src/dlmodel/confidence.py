"""How far to trust a prediction, without ground truth: a per-image ``confidence`` in [0, 1].

Three signals, each kept as a component (definitions and their evidence: docs/confidence.md):

- **Self-consistency under test-time augmentation** (TTA). The image is flipped (and, where the
  model's axes allow, rotated by 90 degrees), predicted again, and the output mapped back. For
  objects: the F1 at IoU 0.5 between the plain objects and each copy's objects (made by the same
  recipe or family step, in the copy's own frame), averaged over the copies (``tta_f1``), and per
  object the fraction of copies in which it is found again (``object_fraction``). For
  probability or intensity outputs: the mean absolute difference, in the output's own units,
  between the plain output and each copy mapped back (``tta_mad``, every pixel), and for the
  foreground probability the same over the pixels the plain output or the copy calls foreground
  (``foreground_mad``; foreground as for ambiguity).
- **Input shift**: the image *after the package's own pre-processing* against the package's test
  input after the same pre-processing: the fraction of values outside the test input's
  0.1-99.9 percentile range (``outside_fraction``), and the earth mover's (Wasserstein-1)
  distance between the two intensity histograms in units of that range, capped at 1
  (``histogram_distance``).
- **Ambiguity**: for probability outputs, the fraction of foreground pixels whose probability is
  in [0.3, 0.7]; foreground: pixels with probability >= 0.3 (every pixel the model gives at least
  that chance of belonging to an object).

``confidence = consistency x (1 - ambiguity) x (1 - outside_penalty)``, where ``consistency`` is
``tta_f1 x (1 - foreground_mad)`` (either factor alone when the other does not apply; for an
intensity output ``1 - min(1, tta_mad / spread)``, ``spread`` its 0.1-99.9 percentile range)
and ``outside_penalty`` is the fraction of values beyond the test input's range in excess of the
test input's own 0.2 %, over :data:`OUTSIDE_SCALE`, capped at 1. ``histogram_distance`` is kept
as a component but not multiplied in: against a single test image it measured that image's
peculiarity, not the model's accuracy (docs/confidence.md). A component that does not apply (no
test input, no probability output, no valid transform) is NaN and left out of the product. The
confidence is exactly 1 for a model that is equivariant to the transforms, decided (no
probability in [0.3, 0.7]) and shown values within its test input's range.

Everything here is deterministic: the copies are chosen with ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .spec import ModelSpec

#: transformed copies predicted by default (each costs one more prediction)
DEFAULT_AUGMENTATIONS = 3
#: probabilities in this closed range are "undecided"
AMBIGUOUS = (0.3, 0.7)
#: the test input's percentile range that counts as "inside"
REFERENCE_PERCENTILES = (0.1, 99.9)
QUANTILES = np.arange(0.5, 100, 1.0)  # the quantile functions compared, in percent
IOU = 0.5
#: components, in the order tables list them (confidence.csv, wells.csv, CellProfiler)
COMPONENTS = ("consistency", "tta_f1", "tta_mad", "foreground_mad", "ambiguity", "outside_fraction",
              "histogram_distance")
#: an image with this fraction of values beyond the test input's range (more than the test input's
#: own 0.2 %) gets no confidence; half of it halves the confidence
OUTSIDE_SCALE = 0.1
_PROBABILITY_OPS = ("sigmoid", "softmax")


# ---------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class Transform:
    """A flip or rotation of the space axes: ``transpose`` swaps y and x first, then the axes
    in ``flips`` (letters) are reversed. The 2D group has 8 (identity, 3 flips, 3 rotations,
    the transpose and anti-transpose); a 3D one adds the z flip (16)."""

    transpose: bool = False
    flips: Tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """A short name: ``flip x``, ``rotate 90``, ``transpose yx + flip z``, ..."""
        f = set(self.flips)
        yx = f & {"y", "x"}
        if not self.transpose:
            base = {frozenset(): "", frozenset("y"): "flip y", frozenset("x"): "flip x",
                    frozenset("yx"): "rotate 180"}[frozenset(yx)]
        else:  # np.rot90 (counter-clockwise in an image shown y down) is transpose, then flip y
            base = {frozenset(): "transpose yx", frozenset("y"): "rotate 90", frozenset("x"): "rotate 270",
                    frozenset("yx"): "anti-transpose yx"}[frozenset(yx)]
        parts = [p for p in (base, "flip z" if "z" in f else "") if p]
        return " + ".join(parts) or "identity"

    def apply(self, arr: np.ndarray, axes: str) -> np.ndarray:
        """The transformed copy of ``arr`` (axes letters ``axes``)."""
        if self.transpose:
            arr = np.swapaxes(arr, axes.index("y"), axes.index("x"))
        return np.flip(arr, axis=tuple(axes.index(a) for a in self.flips)) if self.flips else arr

    def undo(self, arr: np.ndarray, axes: str) -> np.ndarray:
        """A copy's output mapped back onto the plain image (the inverse of :meth:`apply`)."""
        if self.flips:
            arr = np.flip(arr, axis=tuple(axes.index(a) for a in self.flips))
        return np.swapaxes(arr, axes.index("y"), axes.index("x")) if self.transpose else arr

    def fits(self, axes: str) -> bool:
        """Whether ``axes`` has every axis this transform moves."""
        need = set(self.flips) | ({"y", "x"} if self.transpose else set())
        return need <= set(axes)


def transforms(space: str, rotations: bool = True) -> List[Transform]:
    """Every transform but the identity for the space axes ``space`` (e.g. ``yx``, ``zyx``),
    in a fixed order; without ``rotations`` only flips (they keep every axis' length).

    >>> [t.name for t in transforms("yx")]
    ['flip x', 'flip y', 'rotate 180', 'transpose yx', 'rotate 270', 'rotate 90', 'anti-transpose yx']
    >>> len(transforms("zyx")), len(transforms("zyx", rotations=False))
    (15, 7)
    """
    letters = [a for a in "zyx" if a in space]
    found = []
    for transpose in ((False, True) if rotations and {"y", "x"} <= set(letters) else (False,)):
        for n in range(len(letters) + 1):
            for flips in itertools.combinations(reversed(letters), n):
                t = Transform(transpose, tuple(sorted(flips, key="zyx".index)))
                if t != Transform():
                    found.append(t)
    return sorted(found, key=lambda t: (t.transpose, "z" in t.flips, len(t.flips), t.flips[::-1]))


def _same_length_rule(a: Any, b: Any) -> bool:
    return (a.size, a.min, a.step) == (b.size, b.min, b.step)


def allowed_transforms(spec: "ModelSpec", tile: Any = None) -> Tuple[List[Transform], List[str]]:
    """The transforms this model's inputs allow, and why others are left out (one sentence each).

    Flips keep every axis' length, so they are always allowed along the space axes (z, y, x)
    every input and output has. A 90-degree rotation swaps y and x: allowed only when y and x
    take the same lengths in every input (the same fixed size, or the same minimum and step),
    every output scales and pads them alike, and the tiles asked for are square; else a rotated
    image is cut, padded or scaled differently from the plain one, and disagreement would
    measure that, not the model.
    """
    space = set("zyx")
    for t in (*spec.inputs, *spec.outputs):
        letters = {a.letter for a in t.axes if a.type == "space"}
        if t in spec.inputs or letters:  # an output without space axes (a class vector) is not compared
            space &= letters
    space_axes = "".join(a for a in "zyx" if a in space)
    reasons: List[str] = []
    if not space_axes:
        return [], ["no transforms: the model has no space axis shared by its inputs and outputs"]
    rotations = {"y", "x"} <= space
    if rotations:
        for t in (*spec.inputs, *spec.outputs):
            y, x = t.axis("y"), t.axis("x")
            if y is None or x is None:
                continue
            if t in spec.inputs and not _same_length_rule(y, x):
                reasons.append(f"no 90-degree rotations: input {t.id!r} takes y lengths {y.describe_size()} and "
                               f"x lengths {x.describe_size()} (a rotated image would be cut or padded differently)")
                rotations = False
                break
            if (y.scale, y.halo, y.offset) != (x.scale, x.halo, x.offset):
                reasons.append(f"no 90-degree rotations: output {t.id!r} scales or pads y and x differently")
                rotations = False
                break
    if rotations and tile is not None and tile is not False:
        sizes = (dict(tile) if isinstance(tile, Mapping) else
                 dict(zip([a.id for a in spec.inputs[0].axes if a.type in ("space", "time")], tile))
                 if isinstance(tile, (list, tuple)) else {})
        if "y" in sizes and "x" in sizes and int(sizes["y"]) != int(sizes["x"]):
            reasons.append(f"no 90-degree rotations: the tiles asked for are not square (y {sizes['y']}, x {sizes['x']})")
            rotations = False
    return transforms(space_axes, rotations), reasons


def choose(found: Sequence[Transform], k: int, seed: int = 0) -> List[Transform]:
    """``k`` of the transforms (all when ``k`` >= their number), drawn without replacement by
    ``numpy.random.default_rng(seed)``, in the order of ``found``.

    >>> [t.name for t in choose(transforms("yx"), 2, seed=0)] == [t.name for t in choose(transforms("yx"), 2, seed=0)]
    True
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise InputError(f"augmentations={k!r}: give a whole number >= 0 (transformed copies to predict)")
    if k >= len(found):
        return list(found)
    picked = np.random.default_rng(seed).choice(len(found), size=int(k), replace=False)
    return [found[i] for i in sorted(picked.tolist())]


# ---------------------------------------------------------------------- the signals
def mean_abs_difference(plain: np.ndarray, copy: np.ndarray) -> float:
    """Mean absolute difference between two outputs of the same shape, in their own units.

    >>> mean_abs_difference(np.zeros(4), np.array([0, 0, 1, 1.0]))
    0.5
    """
    a = np.asarray(plain, dtype=np.float64)
    b = np.asarray(copy, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"outputs of shape {a.shape} and {b.shape} cannot be compared")
    return float(np.mean(np.abs(a - b))) if a.size else 0.0


def matched_objects(labels: np.ndarray, other: np.ndarray, iou: float = IOU) -> np.ndarray:
    """For each object 1..N of ``labels``, whether an object of ``other`` overlaps it with
    IoU > ``iou`` (bool array of N). ``labels`` must be numbered 1..N (dlmodel's labels are).

    >>> a = np.array([[1, 1, 0, 2, 2]]); b = np.array([[1, 1, 0, 0, 3]])
    >>> matched_objects(a, b).tolist()
    [True, False]
    """
    from .instances import overlaps

    a = np.asarray(labels).astype(np.int64).ravel()
    b = np.asarray(other).astype(np.int64).ravel()
    n_a = int(a.max()) if a.size else 0
    found = np.zeros(n_a, bool)
    if n_a == 0 or not b.size or b.max() <= 0:
        return found
    b_ids, b = np.unique(b, return_inverse=True)  # compact numbering of the other's objects
    b = b.ravel() if b_ids[0] == 0 else b.ravel() + 1
    ai, _, ious = overlaps(a, b, n_a, int(b.max()))
    found[ai[ious > iou] - 1] = True
    return found


def foreground_mad(plain: np.ndarray, copy: np.ndarray, low: float = AMBIGUOUS[0]) -> float:
    """Mean absolute difference of two foreground probability maps over the pixels either gives
    at least ``low`` (the foreground, as for :func:`ambiguity`); 0 when neither sees any.

    >>> foreground_mad(np.array([0.0, 0.0, 0.9, 0.8]), np.array([0.0, 0.1, 0.5, 0.8]))
    0.2
    """
    a = np.asarray(plain, dtype=np.float64)
    b = np.asarray(copy, dtype=np.float64)
    fg = (a >= low) | (b >= low)
    return round(float(np.mean(np.abs(a[fg] - b[fg]))), 12) if fg.any() else 0.0


def object_f1(labels: np.ndarray, other: np.ndarray, iou: float = IOU) -> float:
    """F1 at IoU > ``iou`` between two label images (:func:`dlmodel.instances.f1_at_iou`); 1 when
    both have no object (they agree that there is none)."""
    from .instances import f1_at_iou

    tp, fp, fn = f1_at_iou(labels, other, iou)
    total = 2 * tp + fp + fn
    return 2 * tp / total if total else 1.0


def ambiguity(probability: np.ndarray, low: float = AMBIGUOUS[0], high: float = AMBIGUOUS[1]) -> float:
    """Fraction of foreground pixels (probability >= ``low``) whose probability is at most
    ``high``: 0 when the model is decided everywhere it sees an object (or sees none).

    >>> ambiguity(np.array([0.0, 0.1, 0.35, 0.9, 0.95, 1.0]))
    0.25
    """
    p = np.asarray(probability, dtype=np.float64)
    foreground = p >= low
    n = int(np.count_nonzero(foreground))
    return float(np.count_nonzero(foreground & (p <= high)) / n) if n else 0.0


@dataclass(frozen=True)
class Reference:
    """What the package showed the model: its test input after the package's pre-processing,
    summarised as its 0.1-99.9 percentile range and its quantiles (0.5, 1.5, ..., 99.5 %)."""

    low: float
    high: float
    quantiles: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> "Reference":
        v = _finite(values)
        if not v.size:
            raise InputError("the package's test input has no finite value after pre-processing")
        low, high = (float(x) for x in np.percentile(v, REFERENCE_PERCENTILES))
        if not high > low:  # a test input of one value: a range around it, so "outside" still means something
            high = low + max(abs(low) * 1e-6, 1e-12)
        return cls(low, high, np.percentile(v, QUANTILES))

    def outside_fraction(self, values: np.ndarray) -> float:
        """Fraction of ``values`` outside [low, high] (at most 0.002 for the test input itself)."""
        v = _finite(values)
        return float(np.count_nonzero((v < self.low) | (v > self.high)) / v.size) if v.size else 0.0

    def distance(self, values: np.ndarray) -> float:
        """The earth mover's (Wasserstein-1) distance between the intensity histograms of
        ``values`` and of the test input, in units of the test input's 0.1-99.9 percentile
        range, capped at 1: the mean gap between their quantile functions. Unlike a bin-by-bin
        distance it does not see the comb an integer image's histogram has after scaling (the
        default model's test input has 9 grey levels), only how far the values moved."""
        v = _finite(values)
        if not v.size:
            return 1.0
        gap = float(np.mean(np.abs(np.percentile(v, QUANTILES) - self.quantiles)))
        return min(1.0, gap / (self.high - self.low))


def _finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def outside_penalty(outside_fraction: float) -> float:
    """The share of the confidence an input shift takes: values beyond the test input's
    0.1-99.9 percentile range, more than the 0.2 % the test input itself has there, over
    :data:`OUTSIDE_SCALE`, capped at 1 (NaN stays NaN).

    >>> outside_penalty(0.002), outside_penalty(0.052), outside_penalty(0.5)
    (0.0, 0.5, 1.0)
    """
    if not math.isfinite(outside_fraction):
        return math.nan
    own = 1.0 - (REFERENCE_PERCENTILES[1] - REFERENCE_PERCENTILES[0]) / 100.0
    return round(min(1.0, max(0.0, outside_fraction - own) / OUTSIDE_SCALE), 12)


def combine(consistency: float, ambiguity_: float, outside_fraction: float) -> float:
    """``consistency x (1 - ambiguity) x (1 - outside_penalty(outside_fraction))``, each factor
    clipped to [0, 1]; a NaN component (one that does not apply) is left out; 1 when none applies.

    >>> combine(0.9, 0.1, 0.0), combine(float("nan"), 0.5, float("nan"))
    (0.81, 0.5)
    """
    scores = [consistency, 1.0 - ambiguity_, 1.0 - outside_penalty(outside_fraction)]
    found = [min(1.0, max(0.0, s)) for s in scores if s is not None and math.isfinite(s)]
    return float(np.prod(found)) if found else 1.0


# ---------------------------------------------------------------------- the result
@dataclass
class Confidence:
    """A prediction's confidence and its components (NaN: does not apply; docs/confidence.md).

    ``object_fraction``: per object of ``labels`` (1..N), the fraction of the copies in which
    it is found again (IoU > 0.5); ``transforms``: the copies' transforms; ``left_out``: why
    other transforms or components were not used. ``prediction`` and ``labels`` are the plain
    (untransformed) prediction and its objects, so a caller never predicts the image twice."""

    confidence: float
    consistency: float = math.nan
    tta_f1: float = math.nan
    tta_mad: float = math.nan
    foreground_mad: float = math.nan
    ambiguity: float = math.nan
    outside_fraction: float = math.nan
    histogram_distance: float = math.nan
    object_fraction: np.ndarray = field(default_factory=lambda: np.zeros(0))
    transforms: Tuple[str, ...] = ()
    left_out: Tuple[str, ...] = ()
    seed: int = 0
    seconds: float = 0.0
    prediction: Any = field(default=None, repr=False, compare=False)
    labels: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    def components(self) -> Dict[str, float]:
        """``{"confidence": ..., component: value}`` in :data:`COMPONENTS` order."""
        return {"confidence": self.confidence, **{c: getattr(self, c) for c in COMPONENTS}}

    def describe(self) -> str:
        """One line: which copies were compared, and what was left out and why."""
        used = ", ".join(self.transforms) or "none"
        return f"copies: {used}" + (f"; {'; '.join(self.left_out)}" if self.left_out else "")

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (JSON; NaN as None), without the arrays."""
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.components().items()}
        return {**d, "transforms": list(self.transforms), "left_out": list(self.left_out), "seed": self.seed,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], object_fraction: Optional[np.ndarray] = None) -> "Confidence":
        def num(key: str) -> float:
            v = d.get(key)
            return math.nan if v is None else float(v)

        return cls(num("confidence"), **{c: num(c) for c in COMPONENTS},
                   object_fraction=np.zeros(0) if object_fraction is None else np.asarray(object_fraction),
                   transforms=tuple(str(t) for t in d.get("transforms", ())),
                   left_out=tuple(str(t) for t in d.get("left_out", ())), seed=int(d.get("seed", 0)),
                   seconds=float(d.get("seconds", 0.0)))


# ---------------------------------------------------------------------- what is compared
def _family(recipe: Optional[Mapping[str, Any]]) -> Optional[str]:
    from . import families

    method = (recipe or {}).get("method")
    return method if method in families.methods() else None


def compared_channels(spec: Any, output_id: str, recipe: Optional[Mapping[str, Any]]) -> Optional[List[int]]:
    """The channels of an output whose values a flip or rotation leaves in place (None: all).

    A StarDist output's ray distances and a Cellpose output's flows point in directions, which
    a flip or rotation permutes; only StarDist's probability (channel 1) is a value per pixel.
    Outputs of other models are taken as values per pixel (probabilities, intensities)."""
    family = _family(recipe)
    if family is None or (recipe or {}).get("output", output_id) != output_id:
        return None
    return [0] if family == "stardist" else []


def is_probability(spec: Any, output_id: str, recipe: Optional[Mapping[str, Any]]) -> bool:
    """Whether an output holds probabilities: its post-processing ends in a sigmoid or softmax,
    or the instance recipe thresholds it as one. Not StarDist's: its "object probability" is the
    normalised distance to the object's edge, between 0.3 and 0.7 over most of every object by
    design, so its ambiguity would measure object size, not doubt."""
    try:
        post = spec.output(output_id).postprocessing
    except Exception:  # a worker's RemoteSpec has no processing: the recipe decides
        post = ()
    ids = [getattr(op, "id", None) for op in post if getattr(op, "id", None) != "ensure_dtype"]
    if _family(recipe) is not None and (recipe or {}).get("output", output_id) == output_id:
        return False  # a family's outputs: StarDist's distances, Cellpose's flows and logits
    if ids and ids[-1] in _PROBABILITY_OPS:
        return True
    method = (recipe or {}).get("method")
    return method in ("threshold", "watershed", "seeded_watershed") and (recipe or {}).get(
        "output", output_id) == output_id


def foreground_probability(prediction: Mapping[str, np.ndarray], axes: Mapping[str, str], spec: Any,
                           recipe: Optional[Mapping[str, Any]]) -> Optional[np.ndarray]:
    """The probability that each pixel belongs to an object, from the output the objects are
    made from (the recipe's, else the first): the recipe's foreground channels summed (seeded
    watershed), its channel (threshold, watershed); None when that
    output is not a probability (intensities, StarDist's distances, Cellpose's flows, labels)."""
    recipe = dict(recipe or {})
    oid = recipe.get("output") or next(iter(prediction))
    if oid not in prediction or recipe.get("method") in ("labels", "cellpose", "deepimagej"):
        return None
    if not is_probability(spec, oid, recipe):
        return None
    out, ax = prediction[oid], axes[oid]

    def channel(i: int) -> np.ndarray:
        return np.take(out, int(i), axis=ax.index("c")) if "c" in ax else out

    if recipe.get("method") == "seeded_watershed":
        return np.clip(sum(channel(i) for i in recipe.get("foreground", [0])), 0.0, 1.0)
    if "c" in ax and out.shape[ax.index("c")] > 1 and "channel" not in recipe:
        # a softmax over classes with no recipe: everything but the first class (background)
        return np.clip(1.0 - channel(0), 0.0, 1.0)
    return channel(recipe.get("channel", 0))


# ---------------------------------------------------------------------- input shift
_REFERENCES: Dict[Tuple[str, str, str], Reference] = {}
_REFERENCES_LOCK = threading.Lock()


def preprocessed(spec: "ModelSpec", layouts: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Each input of one sample (model layout, batch 1) after the package's own pre-processing,
    fitted on the whole input as a prediction fits it."""
    from .prediction import fit_preprocessing
    from .tiling import tiled_axes

    ids = [a.id for a in tiled_axes(spec, layouts, True)]
    prepared, pre = fit_preprocessing(spec, layouts, ids)
    return {tid: np.asarray(pre[tid](np.asarray(arr).astype(np.float32, copy=False))) for tid, arr in prepared.items()}


def references(spec: "ModelSpec") -> Dict[str, Reference]:
    """The test input of each input tensor after pre-processing, summarised (:class:`Reference`);
    computed once per package and process. Inputs without a test tensor are missing."""
    key = (str(spec.rdf_path), spec.rdf_sha256)
    with _REFERENCES_LOCK:
        found = {k[2]: r for k, r in _REFERENCES.items() if k[:2] == key}
        if found:
            return found
        tests = {t.id: np.load(t.test_tensor, allow_pickle=False) for t in spec.inputs if t.test_tensor is not None}
        if len(tests) == len(spec.inputs):
            for tid, values in preprocessed(spec, tests).items():
                _REFERENCES[(*key, tid)] = found[tid] = Reference.of(values)
        return found


# ---------------------------------------------------------------------- the whole measurement
def measure(model: Any, image: Union[np.ndarray, Mapping[str, np.ndarray]], axes: Union[None, str, Mapping[str, str]] = None,
            *, augmentations: int = DEFAULT_AUGMENTATIONS, seed: int = 0,
            objects: Union[None, bool, Mapping[str, Any]] = None, tile: Any = None, batch_size: Optional[int] = None,
            pad_mode: Optional[str] = None, name: str = "image") -> Confidence:
    """The confidence of ``model`` (a :class:`dlmodel.api.Model`) on one image: the plain
    prediction, ``augmentations`` transformed copies, and the signals of this module.

    ``objects``: None makes objects when the package has a recipe for them (its own or its
    family's); True with :data:`dlmodel.instances.DEFAULT_RECIPE` otherwise; a mapping gives
    :meth:`dlmodel.api.Model.labels`' keyword arguments (method, threshold, min_size, ...);
    False compares outputs only."""
    import time

    from . import axes as axes_mod

    t0 = time.perf_counter()
    spec = model.spec
    inputs = model._as_inputs(image)
    given = {}
    for t in spec.inputs:
        ax = axes.get(t.id) if isinstance(axes, Mapping) else axes
        arr = np.asarray(inputs[t.id])
        what = name if len(spec.inputs) == 1 else f"{name} (input {t.id!r})"
        given[t.id] = axes_mod.check_axes(ax, arr.ndim, what) if ax else axes_mod.guess_axes(arr.ndim, t, what)
    found, left_out = allowed_transforms(spec, tile)
    found = [t for t in found if all(t.fits(a) for a in given.values())]
    chosen = choose(found, augmentations, seed)
    if len(chosen) < len(found):
        left_out.append(f"{len(found) - len(chosen)} of the {len(found)} valid transforms not drawn (augmentations="
                        f"{augmentations}, seed {seed})")
    opts: Dict[str, Any] = {"tile": tile, "batch_size": batch_size, "pad_mode": pad_mode, "name": name}
    plain = model.predict(inputs, axes=given, **opts)

    # objects: None = when the package has a recipe; the same keyword arguments as Model.labels
    label_args: Optional[Dict[str, Any]] = None
    if objects is True or (objects is None and model.instance_recipe):
        label_args = {}
    elif isinstance(objects, Mapping):
        label_args = dict(objects)
    from . import instances

    recipe = instances.resolve_recipe(model.instance_recipe, **label_args) if label_args is not None \
        else model.instance_recipe
    labels = model.labels(plain, **label_args) if label_args is not None else None
    label_axes = None
    if labels is not None:
        oid = recipe.get("output") or spec.outputs[0].id
        label_axes = plain.axes[oid].replace("c", "")
        if len(label_axes) != labels.ndim:
            left_out.append("objects not compared: their axes are not the output's")
            label_axes = None

    mads: List[float] = []  # in the outputs' own units
    relative: List[float] = []  # divided by the outputs' spread (1 for probabilities)
    fg_mads: List[float] = []  # of the foreground probability, over pixels either calls foreground
    f1s: List[float] = []
    found_in = np.zeros(int(labels.max()) if labels is not None and labels.size else 0)
    compared: Dict[str, Optional[List[int]]] = {}
    for oid, ax in plain.axes.items():
        channels = compared_channels(spec, oid, recipe)
        if channels == [] or not any(a in ax for a in "zyx"):
            continue
        compared[oid] = channels
    plain_fg = foreground_probability(plain, plain.axes, spec, recipe)
    for tr in chosen:
        copy_inputs = {tid: np.ascontiguousarray(tr.apply(np.asarray(inputs[tid]), given[tid])) for tid in inputs}
        pred = model.predict(copy_inputs, axes=given, **opts)
        per_output = []
        for oid, channels in compared.items():
            ax = plain.axes[oid]
            back = tr.undo(np.asarray(pred[oid]), ax)
            a, b = np.asarray(plain[oid]), back
            if channels is not None and "c" in ax:
                a, b = np.take(a, channels, axis=ax.index("c")), np.take(b, channels, axis=ax.index("c"))
            if a.shape != b.shape:  # a half-resolution output of an odd-sized image, say: not comparable
                continue
            mad = mean_abs_difference(a, b)
            spread = 1.0 if is_probability(spec, oid, recipe) else _spread(a)
            per_output.append((mad, mad / spread if spread > 0 else float(mad > 0)))
        if plain_fg is not None:
            fg_oid = (recipe or {}).get("output") or next(iter(plain))
            copy_fg = foreground_probability({k: tr.undo(np.asarray(v), pred.axes[k]) for k, v in pred.items()
                                              if k == fg_oid}, plain.axes, spec, recipe)
            if copy_fg is not None and copy_fg.shape == plain_fg.shape:
                fg_mads.append(foreground_mad(plain_fg, copy_fg))
        if per_output:
            mads.append(float(np.mean([m for m, _ in per_output])))
            relative.append(float(np.mean([r for _, r in per_output])))
        if label_axes is not None:
            other = tr.undo(np.asarray(model.labels(pred, **label_args)), label_axes)
            f1s.append(object_f1(labels, other))
            found_in += matched_objects(labels, other)
    if chosen and not compared:
        left_out.append("outputs not compared: their channels are directions (rays, flows), not values per pixel")
    if not chosen:
        left_out.append("no transformed copies: consistency not measured")

    amb = ambiguity(plain_fg) if plain_fg is not None else math.nan

    outside = distance = math.nan
    refs = references(spec)
    if refs:
        layouts, loop, _ = model._layouts(inputs, given, name)
        outs, dists = [], []
        for idx in np.ndindex(*next(iter(layouts.values())).shape[: len(loop)]):
            values = preprocessed(spec, {tid: arr[idx] for tid, arr in layouts.items()})
            for tid, ref in refs.items():
                outs.append(ref.outside_fraction(values[tid]))
                dists.append(ref.distance(values[tid]))
        outside, distance = max(outs), max(dists)  # the input (or slice) furthest from the test input
    else:
        left_out.append("input shift not measured: the package has no test input")

    tta_f1 = float(np.mean(f1s)) if f1s else math.nan
    tta_mad = float(np.mean(mads)) if mads else math.nan
    fg_mad = float(np.mean(fg_mads)) if fg_mads else math.nan
    if fg_mads:  # objects and probabilities: both must agree
        consistency = (tta_f1 if f1s else 1.0) * (1.0 - fg_mad)
    elif f1s:
        consistency = tta_f1
    else:
        consistency = 1.0 - min(1.0, float(np.mean(relative))) if relative else math.nan
    fraction = found_in / len(chosen) if chosen and label_axes is not None else np.full(found_in.shape, np.nan)
    return Confidence(combine(consistency, amb, outside), consistency, tta_f1, tta_mad, fg_mad, amb, outside, distance,
                      fraction, tuple(t.name for t in chosen), tuple(left_out), seed, time.perf_counter() - t0,
                      prediction=plain, labels=labels)


def _spread(a: np.ndarray) -> float:
    """The 0.1-99.9 percentile range of an intensity output (the unit its disagreement is in)."""
    v = _finite(a)
    if not v.size:
        return 0.0
    low, high = np.percentile(v, REFERENCE_PERCENTILES)
    return float(high - low)
