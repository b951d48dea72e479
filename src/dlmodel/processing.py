"""The pre- and post-processing operations of the bioimage.io model spec (0.4 via conversion, 0.5).

An op is *fitted* once on a whole tensor (statistics such as mean, std or percentiles are
computed over the whole image, never per tile) and the fitted op is then a pure function that
may be applied to the whole tensor or to any tile of it. Numerics follow bioimageio.core 0.11:
population std, ``eps`` added to the std, linear percentiles for ``scale_range`` and
inverted-cdf percentiles for ``clip``.

Arrays here carry the tensor's own axes in the rdf's order (``axis_ids``), batch included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import SpecError

if TYPE_CHECKING:
    from .trust import Gate

Array = np.ndarray
FittedOp = Callable[[Array], Array]


@dataclass(frozen=True)
class Fitted:
    """A processing chain fitted on one tensor, ready for whole images or tiles.

    ``tile_safe`` is False when a statistic varies along a tiled (space/time) axis, in which
    case the chain must be applied to the whole tensor."""

    ops: Tuple[FittedOp, ...]
    tile_safe: bool

    def __call__(self, x: Array) -> Array:
        for op in self.ops:
            x = op(x)
        return x


# Ops whose result depends on a whole tensor (statistics) or on every output (custom code); a
# family's op that makes objects (dlmodel.families.label_ops) also runs on the whole output, so
# that no object is cut at a tile seam.
_STAT_OPS = {"zero_mean_unit_variance", "scale_range", "scale_mean_variance", "custom"}


def needs_statistics(op: Any) -> bool:
    """Whether an op must see a whole tensor (so runs once, not per tile)."""
    from . import families

    if op.id in _STAT_OPS or op.id in families.label_ops():
        return True
    if op.id == "clip":
        return op.kwargs.min_percentile is not None or op.kwargs.max_percentile is not None
    return False


def _reduce_axes(axis_ids: Sequence[str], axes: Optional[Sequence[Any]]) -> Tuple[int, ...]:
    """Dimensions to reduce for a statistic over spec ``axes`` (None: all axes jointly)."""
    if axes is None:
        return tuple(range(len(axis_ids)))
    wanted = [str(a) for a in axes]
    return tuple(i for i, a in enumerate(axis_ids) if a in wanted)


def _along(values: Sequence[float], axis: str, axis_ids: Sequence[str], what: str) -> Array:
    """Per-index parameters (e.g. one gain per channel) shaped to broadcast along ``axis``."""
    axis = str(axis)
    if axis not in axis_ids:
        raise SpecError(f"{what}: axis {axis!r} is not an axis of this tensor ({', '.join(axis_ids)})")
    shape = [1] * len(axis_ids)
    shape[list(axis_ids).index(axis)] = len(values)
    return np.asarray(values, dtype=np.float32).reshape(shape)


# Elements per chunk when a statistic needs a temporary copy: 2 MB of float64, not a
# whole-image float64 copy (512 MB for an 8192x8192 image). Small enough that the allocator
# reuses one chunk's memory for the next instead of mapping (and page-faulting) fresh memory.
_CHUNK = 1 << 18


def _mean_std(x: Array, dims: Tuple[int, ...]) -> Tuple[Array, Array]:
    # float64 accumulation: float32 sums over 10^8 pixels lose digits. Two passes (mean, then
    # squared deviations) because sum-of-squares cancels badly on bright, flat images.
    mean = x.mean(axis=dims, keepdims=True, dtype=np.float64)
    count = np.prod([x.shape[d] for d in dims]) if dims else 1
    var = _sum_sq_dev(x, mean, dims) / max(count, 1)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def _sum_sq_dev(x: Array, mean: Array, dims: Tuple[int, ...]) -> Array:
    """``sum((x - mean)**2)`` over ``dims`` (keepdims), chunked along x's longest axis."""
    if x.ndim == 0 or x.size <= _CHUNK:
        return np.square(x - mean, dtype=np.float64).sum(axis=dims, keepdims=True)
    ax = int(np.argmax(x.shape))
    step = max(1, _CHUNK // (x.size // x.shape[ax]))
    parts = []
    total = None
    for s in range(0, x.shape[ax], step):
        sl = (slice(None),) * ax + (slice(s, s + step),)
        m = mean if mean.shape[ax] == 1 else mean[sl]
        d = np.subtract(x[sl], m, dtype=np.float64)
        r = np.square(d, out=d).sum(axis=dims, keepdims=True)
        del d  # before the next chunk's allocation, which then reuses its memory
        if ax in dims:
            total = r if total is None else total + r
        else:
            parts.append(r)
    return total if ax in dims else np.concatenate(parts, axis=ax)


def _quantile(x: Array, q: Any, dims: Tuple[int, ...], method: str) -> Array:
    """Quantile(s) over ``dims`` (keepdims); a list of q gives them stacked first, from one
    partition of one copy of the image instead of one per quantile."""
    return np.quantile(x, q, axis=dims, keepdims=True, method=method).astype(np.float32)


def _sigmoid(x: Array) -> Array:
    # 1 / (1 + exp(-x)) as bioimageio.core computes it, in one buffer with numpy's vectorised
    # exp: a sixth of scipy's expit time (it runs on every tile). exp(-x) = inf for x < -88
    # gives exactly 0, as it should.
    e = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(e, out=e)
    e += 1
    return np.reciprocal(e, out=e)


def _softmax(x: Array, axis: int) -> Array:
    # scipy.special.softmax's formula, in one buffer instead of three (it runs on every tile)
    e = x - x.max(axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _as_float(x: Array) -> Array:
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)


def fit_op(
    op: Any, x: Array, axis_ids: Sequence[str], reference: Mapping[str, Array], custom: Optional["Gate"] = None
) -> FittedOp:
    """Fit one spec op on the whole tensor ``x`` and return the function that applies it.

    ``reference`` maps tensor ids to whole tensors for ops with a ``reference_tensor``."""
    kind = op.id
    kw = op.kwargs if hasattr(op, "kwargs") else None

    if kind == "ensure_dtype":
        dtype = np.dtype(kw.dtype)
        return lambda t: t.astype(dtype, copy=False)

    if kind == "sigmoid":
        return lambda t: _sigmoid(_as_float(t))

    if kind == "softmax":
        idx = list(axis_ids).index(str(kw.axis)) if str(kw.axis) in axis_ids else None
        if idx is None:
            raise SpecError(f"softmax: axis {kw.axis!r} is not an axis of this tensor")
        return lambda t: _softmax(_as_float(t), idx)

    if kind == "binarize":
        if hasattr(kw, "axis"):
            thr = _along(kw.threshold, kw.axis, axis_ids, "binarize")
        else:
            thr = np.float32(kw.threshold)
        return lambda t: t > thr

    if kind == "scale_linear":
        if hasattr(kw, "axis"):
            gain = _along(np.atleast_1d(kw.gain), kw.axis, axis_ids, "scale_linear")
            offset = _along(np.atleast_1d(kw.offset), kw.axis, axis_ids, "scale_linear")
        else:
            gain, offset = np.float32(kw.gain), np.float32(kw.offset)
        return lambda t: _as_float(t) * gain + offset

    if kind == "fixed_zero_mean_unit_variance":
        eps = np.float32(1e-6)
        if hasattr(kw, "axis"):
            mean = _along(kw.mean, kw.axis, axis_ids, "fixed_zero_mean_unit_variance")
            std = _along(kw.std, kw.axis, axis_ids, "fixed_zero_mean_unit_variance")
        else:
            mean, std = np.float32(kw.mean), np.float32(kw.std)
        return lambda t: (_as_float(t) - mean) / (std + eps)

    if kind == "zero_mean_unit_variance":
        mean, std = _mean_std(x, _reduce_axes(axis_ids, kw.axes))
        denom = std + np.float32(kw.eps)
        return _with_stats(lambda t: (_as_float(t) - mean) / denom, mean, denom)

    if kind == "scale_range":
        ref = x if kw.reference_tensor is None else _reference(reference, kw.reference_tensor, kind)
        dims = _reduce_axes(axis_ids, kw.axes)
        lo, hi = _quantile(ref, [kw.min_percentile / 100.0, kw.max_percentile / 100.0], dims, "linear")
        denom = hi - lo + np.float32(kw.eps)
        return _with_stats(lambda t: (_as_float(t) - lo) / denom, lo, denom)

    if kind == "scale_mean_variance":
        ref = _reference(reference, kw.reference_tensor, kind)
        dims = _reduce_axes(axis_ids, kw.axes)
        mean, std = _mean_std(x, dims)
        ref_mean, ref_std = _mean_std(ref, dims)
        eps = np.float32(kw.eps)
        gain = (ref_std + eps) / (std + eps)
        return _with_stats(lambda t: (_as_float(t) - mean) * gain + ref_mean, mean, gain, ref_mean)

    if kind == "clip":
        dims = _reduce_axes(axis_ids, kw.axes)
        lo = kw.min if kw.min_percentile is None else _quantile(x, kw.min_percentile / 100.0, dims, "inverted_cdf")
        hi = kw.max if kw.max_percentile is None else _quantile(x, kw.max_percentile / 100.0, dims, "inverted_cdf")
        return _with_stats(lambda t: np.clip(t, lo, hi), lo, hi)

    if kind == "custom" and custom is not None:
        return _custom(op, custom)
    from . import families

    if kind in families.label_ops():
        return _with_stats(lambda t: families.op_labels(op, t, list(axis_ids)))
    raise SpecError(
        f"processing op {kind!r} is not supported by dlmodel"
        + (" here (it runs code from the package on whole outputs)" if kind == "custom" else "")
    )


def _custom(op: Any, gate: "Gate") -> FittedOp:
    """Run a package's own post-processing code (spec 0.5.12 ``custom``; its file was checked
    against its sha256), only through the trust gate. As in bioimageio.core,
    ``op = callable(**kwargs)`` once, then ``op(tensor)`` on the whole output as it reaches it."""
    from .spec import local_path

    path = local_path(gate.root, op.source)
    module = gate.load_module(path, "its post-processing")
    try:
        factory = getattr(module, str(op.callable))
    except AttributeError as e:
        raise SpecError(f"custom op file {path.name} defines no {op.callable!r}") from e
    fn = factory(**dict(op.kwargs))
    return lambda t: np.asarray(fn(t))


def _reference(tensors: Mapping[str, Array], tensor_id: Any, op: str) -> Array:
    try:
        return tensors[str(tensor_id)]
    except KeyError as e:
        raise SpecError(f"{op}: reference tensor {str(tensor_id)!r} is not available") from e


def fit(
    ops: Sequence[Any],
    x: Array,
    axis_ids: Sequence[str],
    reference: Optional[Mapping[str, Array]] = None,
    tiled_axes: Sequence[str] = (),
    custom: Optional["Gate"] = None,
) -> Fitted:
    """Fit a chain of spec ops on the whole tensor ``x``.

    Each op's statistics are those of the tensor as it reaches that op (after the earlier ops).
    Intermediate whole-tensor results are computed only while a later op still needs
    statistics, so the common ``[zero_mean_unit_variance, ensure_dtype]`` never copies the image;
    nor does a leading lossless ``ensure_dtype`` (uint16 to float32): statistics of the cast
    equal those of the original, which the statistics compute in float64 anyway.
    """
    reference = reference or {}
    fitted: List[FittedOp] = []
    remaining_stats = sum(needs_statistics(op) for op in ops)
    current = x
    tiled_dims = [i for i, a in enumerate(axis_ids) if a in tiled_axes]
    tile_safe = True
    for op in ops:
        f = fit_op(op, current, axis_ids, reference, custom)
        if needs_statistics(op):
            remaining_stats -= 1
            tile_safe &= _stats_broadcast_over(f, tiled_dims)
        fitted.append(f)
        if remaining_stats > 0 and not _lossless_cast(op, current):
            current = f(current)
    return Fitted(tuple(fitted), tile_safe)


def _lossless_cast(op: Any, x: Array) -> bool:
    # numbers only: numpy's percentiles refuse booleans
    return op.id == "ensure_dtype" and x.dtype.kind in "iuf" and np.can_cast(x.dtype, np.dtype(op.kwargs.dtype), "safe")


def _with_stats(fn: FittedOp, *stats: Any) -> FittedOp:
    fn.statistics = tuple(s for s in stats if isinstance(s, np.ndarray))  # type: ignore[attr-defined]
    return fn


def _stats_broadcast_over(f: FittedOp, dims: Sequence[int]) -> bool:
    """Whether every statistic of a fitted op has length 1 along ``dims`` (tiles can use it)."""
    for value in getattr(f, "statistics", ()):
        if any(value.shape[d] != 1 for d in dims if d < value.ndim):
            return False
    return True


def describe(op: Any) -> str:
    """``zero_mean_unit_variance(axes=['x', 'y'])``: an op as the info listing shows it."""
    kw = getattr(op, "kwargs", None)
    if kw is None:
        return op.id
    args: Dict[str, Any] = {
        k: v for k, v in kw.model_dump(mode="json", exclude_unset=True).items() if v is not None
    }
    if not args:
        return op.id
    return f"{op.id}(" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"
