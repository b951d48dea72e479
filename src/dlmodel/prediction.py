"""One sample's trip through a model: statistics, tiles, engine, stitching, post-processing.

Arrays here are in the model's own axis order with a batch of 1 (``axes.to_model_layout``).
The steps, and why they are where they are:

1. Pre-processing is fitted on each whole input (per-image statistics), then applied per tile.
2. Tiles are planned along the space/time axes (``tiling``); context outside the image is
   padded with the input's pad mode (reflect when the rdf names none).
3. Tiles run through the engine in batches; the inner part of each output tile is written
   straight into one preallocated output per tensor (no whole-image intermediate copies).
4. Post-processing without statistics (sigmoid, ...) runs per tile; with statistics it runs
   once on the whole stitched output.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import processing, tiling
from .engines import Engine
from .errors import EngineError, InputError
from .spec import Axis, ModelSpec, Tensor

if TYPE_CHECKING:
    from .trust import Gate

LOGGER = logging.getLogger("dlmodel")

# Default tile budget (pixels or voxels per tile, batch and channels aside): large tiles waste
# less on halos, and 1 Mpx keeps a 2D U-Net's activations near 1 GB.
DEFAULT_TILE_PIXELS = 1 << 20

TileArg = Union[None, bool, int, Sequence[int], Mapping[str, int]]


@dataclass(frozen=True)
class TiledAxis:
    """A space/time axis shared by the inputs, with what the outputs need along it."""

    id: str
    length: int
    constraint: Axis  # the input axis that says which tile lengths are valid
    margin: int  # input pixels of context per side
    align: int
    whole: bool  # must be covered by one tile (an output does not follow this axis)


@dataclass(frozen=True)
class Plan:
    axes: Tuple[TiledAxis, ...]
    axis_plans: Tuple[tiling.AxisPlan, ...]
    tiles: Tuple[tiling.Tile, ...]
    batch_size: int

    @property
    def tile_shape(self) -> Dict[str, int]:
        return {p.axis: p.size for p in self.axis_plans}


def _factor(out_axis: Axis, in_axis: Axis) -> Fraction:
    """Output pixels per input pixel along a referenced axis (spec: size * ref.scale / scale)."""
    return Fraction(in_axis.scale / out_axis.scale).limit_denominator(64)


def tiled_axes(
    spec: ModelSpec, inputs: Mapping[str, np.ndarray], whole_image: bool, use_halo: bool = True
) -> Tuple[TiledAxis, ...]:
    """The axes to tile, with lengths, margins and constraints, checked across inputs."""
    found: Dict[str, Tuple[int, Axis, str]] = {}
    for t in spec.inputs:
        arr = inputs[t.id]
        for i, ax in enumerate(t.axes):
            if not ax.tileable:
                continue
            n = arr.shape[arr.ndim - len(t.axes) + i]
            if ax.id in found and found[ax.id][0] != n:
                other = found[ax.id][2]
                raise InputError(
                    f"inputs {other!r} and {t.id!r} differ in length along {ax.id!r} ({found[ax.id][0]} vs {n})"
                )
            if ax.id not in found or (found[ax.id][1].ref is not None and ax.ref is None):
                found[ax.id] = (n, ax, t.id)
    result = []
    for axis_id, (length, constraint, tid) in found.items():
        margin, align, follows = 0, 1, False
        for o in spec.outputs:
            out_ax = o.axis(axis_id)
            if out_ax is None:
                continue
            if out_ax.ref is None or out_ax.ref[1] != axis_id:
                continue  # fixed or data-dependent output length: no tiling along this axis
            follows = True
            ref_ax = spec.tensor(out_ax.ref[0]).axis(out_ax.ref[1])
            f = _factor(out_ax, ref_ax)
            a = tiling.alignment(f)
            halo = out_ax.halo if use_halo else 0
            align = math.lcm(align, a)
            margin = max(margin, tiling.margin_for(halo, out_ax.offset, f, a))
        margin += (-margin) % align  # whole output pixels of context
        if constraint.step:
            # a size step is the network's down-sampling (a U-Net's pooling): tiles that start a
            # whole number of steps apart see the image in the same phase, so they give the same
            # output as one whole-image pass (no seams)
            align = math.lcm(align, int(constraint.step))
        if constraint.ref is not None:  # sized by another axis: the whole image in one go
            follows = False
        result.append(TiledAxis(axis_id, length, constraint, margin, align, whole_image or not follows))
    return tuple(result)


PAD_MODES = ("reflect", "symmetric", "edge", "constant")


def check_options(tile: TileArg = None, batch_size: Optional[int] = None, pad_mode: Optional[str] = None) -> None:
    """Refuse tile, batch size and pad mode values that cannot mean anything, in one line
    (a tile of 0 would otherwise be rounded up to the smallest tile and run 40x slower)."""
    def positive(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1

    ok = (
        tile is None or tile is False or positive(tile)
        or (isinstance(tile, (list, tuple)) and len(tile) > 0 and all(positive(v) for v in tile))
        or (isinstance(tile, Mapping) and all(isinstance(k, str) and positive(v) for k, v in tile.items()))
    )
    if not ok:
        raise InputError(f"tile={tile!r}: use None (auto), False (whole image), a length >= 1, a list of them, "
                         "or a dict such as {'y': 512, 'x': 512}")
    if batch_size is not None and not positive(batch_size):
        raise InputError(f"batch_size={batch_size!r}: use a whole number >= 1 (tiles per forward pass)")
    if pad_mode is not None and pad_mode not in PAD_MODES:
        raise InputError(f"pad_mode={pad_mode!r}: use one of {', '.join(PAD_MODES)}")


def _tile_sizes(axes: Sequence[TiledAxis], tile: TileArg, max_pixels: int) -> Dict[str, int]:
    """Tile length per axis: the user's (rounded up to a valid length) or the largest that fits."""
    user: Dict[str, int] = {}
    if isinstance(tile, Mapping):
        user = {str(k): int(v) for k, v in tile.items()}
    elif isinstance(tile, int) and not isinstance(tile, bool):
        user = {a.id: tile for a in axes}
    elif isinstance(tile, (list, tuple)):
        if len(tile) != len(axes):
            raise InputError(f"tile {tuple(tile)} gives {len(tile)} sizes; the model tiles {len(axes)} axes ({', '.join(a.id for a in axes)})")
        user = {a.id: int(v) for a, v in zip(axes, tile)}
    unknown = set(user) - {a.id for a in axes}
    if unknown:
        raise InputError(f"tile names axis {sorted(unknown)[0]!r}; the model tiles {', '.join(a.id for a in axes) or 'no axes'}")
    sizes: Dict[str, int] = {}
    free = []
    fixed_pixels = 1
    for a in axes:
        need = a.length + 2 * a.margin
        c = a.constraint
        if a.whole:
            sizes[a.id] = c.smallest_valid(need)
            if sizes[a.id] < a.length:  # a fixed input whose outputs cannot be stitched from tiles
                raise InputError(f"the model takes at most {sizes[a.id]} pixels along {a.id!r} in one piece and its "
                                 f"outputs cannot be tiled along it; the image has {a.length}: crop it")
        elif a.id in user:
            sizes[a.id] = c.smallest_valid(max(user[a.id], 2 * a.margin + a.align))
        elif c.size is not None:
            sizes[a.id] = c.size
        else:
            free.append(a)
            continue
        fixed_pixels *= sizes[a.id]
    # axes short enough to take whole (a z of 1, say) first; the budget is shared by the others
    while free:
        cap = max(1.0, max_pixels / fixed_pixels) ** (1.0 / len(free))
        short = [a for a in free if a.constraint.smallest_valid(a.length + 2 * a.margin) <= cap]
        if not short:
            break
        for a in short:
            sizes[a.id] = a.constraint.smallest_valid(a.length + 2 * a.margin)
            fixed_pixels *= sizes[a.id]
        free = [a for a in free if a not in short]
    for a in free:
        c = a.constraint
        # fewest tiles the budget allows, then the smallest valid tile that keeps that
        # count: 2048 px with 1024-px tiles and a margin of 32 needs 3 tiles, and 3 of 752
        # do it with half the pixels of 3 of 1024
        big = max(c.largest_valid(int(cap)), c.smallest_valid(2 * a.margin + a.align))
        n = math.ceil(a.length / max(1, big - 2 * a.margin))
        tight = c.smallest_valid(math.ceil(a.length / n) + 2 * a.margin)
        if len(tiling.plan_axis(a.id, a.length, tight, a.margin, a.align).tiles) > n:
            # aligned tile starts can lose up to align-1 pixels of each tile's reach
            tight = c.smallest_valid(math.ceil(a.length / n) + 2 * a.margin + a.align - 1)
        sizes[a.id] = min(big, tight)
    return sizes


# Tiles per pass on a GPU unless the caller says: with one tile per pass a wide U-Net's GPU
# waited for the host a third of the time on an H200 (benchmarks/gpu.py, docs/performance.md).
GPU_BATCH = 4


def make_plan(
    spec: ModelSpec,
    inputs: Mapping[str, np.ndarray],
    tile: TileArg = None,
    batch_size: Optional[int] = None,
    max_tile_pixels: int = DEFAULT_TILE_PIXELS,
    use_halo: bool = True,
    as_given: bool = False,
) -> Plan:
    """Plan the tiles for one sample. ``tile=False`` runs the whole image as one tile (with
    context padded around it, so it differs from tiled output only by seams, if any).
    ``use_halo=False`` gives no context and crops nothing: the package's test tensors run so.
    ``as_given``: one tile of exactly the input's size, even one the rdf does not declare."""
    whole = tile is False or as_given
    axes = tiled_axes(spec, inputs, whole, use_halo)
    sizes = {a.id: a.length for a in axes} if as_given else _tile_sizes(axes, None if whole else tile, max_tile_pixels)
    plans = tuple(tiling.plan_axis(a.id, a.length, sizes[a.id], a.margin, a.align) for a in axes)
    tiles = tuple(tiling.plan(plans))
    bmax = _max_batch(spec)
    bs = max(1, min(batch_size or 1, bmax, len(tiles)))
    return Plan(axes, plans, tiles, bs)


def plan_checked(
    spec: ModelSpec, inputs: Mapping[str, np.ndarray], tile: TileArg = None, batch_size: Optional[int] = None,
    max_tile_pixels: int = DEFAULT_TILE_PIXELS, use_halo: bool = True, name: str = "image",
    retry_one: bool = False, extra_bytes: int = 0, samples: int = 1, as_given: bool = False,
) -> Plan:
    """:func:`make_plan`, then :func:`check_memory`; ``retry_one``: on a refusal, try one tile
    per pass before refusing (a default batch size must not refuse an image)."""
    plan = make_plan(spec, inputs, tile, batch_size, max_tile_pixels, use_halo, as_given)

    def replan(length: int, bs: Optional[int] = batch_size) -> Plan:
        return make_plan(spec, inputs, length, bs, max_tile_pixels, use_halo)

    try:
        check_memory(spec, plan, name, replan, extra_bytes, samples)
    except InputError:
        if not retry_one or plan.batch_size == 1:
            raise
        LOGGER.info("dlmodel: %s: %d tiles per pass do not fit in memory; one tile per pass", name, plan.batch_size)
        plan = make_plan(spec, inputs, tile, 1, max_tile_pixels, use_halo)
        check_memory(spec, plan, name, lambda length: replan(length, 1), extra_bytes, samples)
    return plan


def _max_batch(spec: ModelSpec) -> int:
    sizes = [a.size for t in spec.inputs for a in t.axes if a.type == "batch"]
    return min([s for s in sizes if s is not None], default=1 << 30)


# Bytes of engine working memory per tile pixel: activations of a U-Net with a few dozen
# channels, float32, forward only. A rough, deliberately generous figure.
WORK_BYTES_PER_PIXEL = 400


def available_memory() -> Optional[int]:
    """Bytes this process may still use: ``DLMODEL_MEMORY_LIMIT`` if set, else MemAvailable."""
    import os

    env = os.environ.get("DLMODEL_MEMORY_LIMIT")
    if env:
        return int(float(env))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # macOS, Windows: psutil where installed (CellProfiler brings it)
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None  # the guard is off: docs/security.md says so


def memory_need(spec: ModelSpec, plan: Plan, samples: int = 1) -> Tuple[int, int]:
    """(bytes of the outputs of ``samples`` samples, bytes of engine working memory) for a plan."""
    lengths = {a.id: a.length for a in plan.axes}
    out_bytes = 0
    for o in spec.outputs:
        n = 1
        for ax in o.axes:
            if ax.type == "batch":
                continue
            if ax.ref is not None and ax.id in lengths:
                ref_ax = spec.tensor(ax.ref[0]).axis(ax.ref[1])
                n *= int(lengths[ax.id] * _factor(ax, ref_ax))
            else:
                n *= ax.size or 1
        out_bytes += 4 * n
    tile_pixels = int(np.prod(list(plan.tile_shape.values()) or [1]))
    return out_bytes * samples, plan.batch_size * tile_pixels * WORK_BYTES_PER_PIXEL


def check_memory(
    spec: ModelSpec, plan: Plan, name: str = "image", replan: Optional[Callable[[int], Plan]] = None,
    extra_bytes: int = 0, samples: int = 1,
) -> None:
    """Refuse, before allocating anything, a prediction that cannot fit in memory.

    ``extra_bytes``: memory needed besides outputs and engine (the input image, when checked
    from a file's header before it is read). ``replan(tile)`` gives the plan for a tile length;
    with it, the advice names a tile that fits (found by planning it), never one that does not."""
    budget = available_memory()
    if budget is None:
        return
    out_bytes, work = memory_need(spec, plan, samples)
    fixed = out_bytes + extra_bytes
    if fixed + work <= budget:
        return
    if fixed > budget * 0.8:
        raise InputError(
            f"{name}: its outputs alone need {_size(fixed)} and {_size(budget)} are available; "
            "predict it in parts (crops) or on a machine with more memory"
        )
    advice = "free memory or use a machine with more"
    tile = _largest_fitting_tile(spec, plan, replan, budget - fixed) if replan is not None else None
    if tile is not None:
        advice = f"use a smaller tile, e.g. tile={tile}"
    elif replan is not None:
        advice = "even the smallest tile the model takes does not fit; " + advice
    raise InputError(
        f"{name}: predicting with tiles of {plan.tile_shape} needs about {_size(fixed + work)} and "
        f"{_size(budget)} are available; {advice}"
    )


def _largest_fitting_tile(spec: ModelSpec, plan: Plan, replan: Callable[[int], Plan], room: int) -> Optional[int]:
    """The largest tile length (valid for the model) whose plan's working memory fits in ``room``."""
    if not plan.axis_plans:
        return None
    hi_len = max(p.size for p in plan.axis_plans)
    free = [a for a in replan(hi_len).axes if not a.whole and a.constraint.size is None]
    if not free:
        return None  # fixed tile sizes, or an axis that must be whole: no smaller tile exists
    c = free[0].constraint
    lo_len = c.smallest_valid(2 * max(a.margin for a in free) + max(a.align for a in free))
    step = c.step or 1
    lo, hi = 0, max(0, (hi_len - lo_len) // step)  # candidate k: length lo_len + k * step
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        length = lo_len + mid * step
        if memory_need(spec, replan(length))[1] <= room:
            best, lo = length, mid + 1
        else:
            hi = mid - 1
    return best


def _size(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def _extract(arr: np.ndarray, tensor: Tensor, tile: tiling.Tile, mode: str, value: float) -> np.ndarray:
    """The tile's region of ``arr`` (model layout), padded where it leaves the image."""
    slices = []
    pads = []
    for i, ax in enumerate(tensor.axes):
        t = tile.axes.get(ax.id)
        n = arr.shape[i]
        if t is None or not ax.tileable:
            slices.append(slice(None))
            pads.append((0, 0))
            continue
        lo, hi = t.start, t.start + t.size
        slices.append(slice(max(lo, 0), min(hi, n)))
        pads.append((max(0, -lo), max(0, hi - n)))
    region = arr[tuple(slices)]
    if any(p != (0, 0) for p in pads):
        if mode == "constant":
            region = np.pad(region, pads, mode="constant", constant_values=value)
        else:
            region = np.pad(region, pads, mode=mode)
    return region


def run_sample(
    spec: ModelSpec,
    engine: Engine,
    inputs: Mapping[str, np.ndarray],
    tile: TileArg = None,
    batch_size: Optional[int] = None,
    pad_mode: Optional[str] = None,
    max_tile_pixels: int = DEFAULT_TILE_PIXELS,
    use_halo: bool = True,
    gate: Optional["Gate"] = None,
    name: str = "image",
    as_given: bool = False,
) -> Tuple[Dict[str, np.ndarray], Plan]:
    """Predict one sample; ``inputs`` and the returned outputs are in model layout (batch 1).

    ``gate``: consent for code the package brings (``custom`` post-processing); without one,
    such code is not run. ``as_given``: the input at its own size, unpadded (see :func:`make_plan`)."""
    gpu_default = batch_size is None and engine.asynchronous
    plan = plan_checked(spec, inputs, tile, GPU_BATCH if gpu_default else batch_size, max_tile_pixels, use_halo,
                        name, retry_one=gpu_default, as_given=as_given)
    prepared, pre = fit_preprocessing(spec, inputs, [a.id for a in plan.axes])
    per_tile = not any(m.stage == "postprocess" for m in spec.macros) and all(
        not any(processing.needs_statistics(op) for op in o.postprocessing) for o in spec.outputs)
    post = {o.id: processing.fit(o.postprocessing, np.zeros((1,) * len(o.axes), np.float32), o.axis_ids)
            for o in spec.outputs} if per_tile else {}
    outputs = run_tiles(spec, engine, plan, prepared, pre, post, pad_mode)
    if not per_tile:
        outputs = whole_postprocessing(spec, outputs, inputs, gate)
    return outputs, plan


def fit_preprocessing(
    spec: ModelSpec, inputs: Mapping[str, np.ndarray], tiled_ids: Sequence[str]
) -> Tuple[Dict[str, np.ndarray], Dict[str, processing.Fitted]]:
    """Step 1: each input's pre-processing fitted on the whole input (per-image statistics).
    Returns the inputs (pre-processed already where a statistic varies along a tiled axis,
    which is rare) and the fitted chains to apply per tile."""
    prepared: Dict[str, np.ndarray] = {}
    pre: Dict[str, processing.Fitted] = {}
    for t in spec.inputs:
        arr = inputs[t.id]
        if t is spec.inputs[0]:  # deepImageJ macros the rdf's ops do not do: on the whole image, first
            for macro in (m for m in spec.macros if m.stage == "preprocess"):
                arr = macro.apply(arr, t.letters)
        fitted = processing.fit(t.preprocessing, arr, t.axis_ids, inputs, tiled_ids)
        if not fitted.tile_safe:
            arr = fitted(arr.astype(np.float32, copy=False))
            fitted = processing.Fitted((), True)
        prepared[t.id] = arr
        pre[t.id] = fitted
    return prepared, pre


def run_tiles(
    spec: ModelSpec, engine: Engine, plan: Plan, prepared: Mapping[str, np.ndarray],
    pre: Mapping[str, processing.Fitted], post: Mapping[str, processing.Fitted], pad_mode: Optional[str] = None,
) -> Dict[str, np.ndarray]:
    """Steps 2-3: the plan's tiles, padded and pre-processed, through the engine in batches;
    each output tile's inner region (after ``post``, the element-wise post-processing) written
    straight into one whole-image output per tensor."""
    outputs: Dict[str, np.ndarray] = {}

    def store(batch_tiles: List[tiling.Tile], result: Callable[[], List[np.ndarray]]) -> None:
        for o, res in zip(spec.outputs, result()):
            res = np.asarray(res)
            if res.ndim != len(o.axes):
                raise EngineError(
                    f"output {o.id!r} has {res.ndim} dimensions, the rdf describes {len(o.axes)} ({o.letters})"
                )
            bdim = _batch_dim(o)
            for k, tl in enumerate(batch_tiles):
                part = res if len(batch_tiles) == 1 else np.take(res, [k], axis=bdim)
                _write(outputs, spec, o, part, tl, plan, post.get(o.id))

    # A GPU computes while the host goes on: then one thread stores (post-processes and copies)
    # the last batch while this one prepares the next, and the GPU waits for neither.
    pool = ThreadPoolExecutor(1, thread_name_prefix="dlmodel-store") if engine.asynchronous else None
    stored = None
    try:
        for b0 in range(0, len(plan.tiles), plan.batch_size):
            batch_tiles = plan.tiles[b0:b0 + plan.batch_size]
            result = engine.submit(_feeds(spec, batch_tiles, prepared, pre, pad_mode))
            if pool is None:
                store(batch_tiles, result)
                continue
            if stored is not None:
                stored.result()  # one batch stored at a time, in order; its errors surface here
            stored = pool.submit(store, batch_tiles, result)
        if stored is not None:
            stored.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return outputs


def _feeds(spec: ModelSpec, batch_tiles: Sequence[tiling.Tile], prepared: Mapping[str, np.ndarray],
           pre: Mapping[str, processing.Fitted], pad_mode: Optional[str]) -> List[np.ndarray]:
    """One batch's engine inputs: each tile's region, padded where it leaves the image, as float
    where the model wants float, pre-processed, stacked along the batch axis."""
    feeds = []
    for t in spec.inputs:
        mode = pad_mode or t.pad_mode or "reflect"
        parts = [pre[t.id](to_float(_extract(prepared[t.id], t, tl, mode, t.pad_value), t)) for tl in batch_tiles]
        feeds.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=_batch_dim(t)))
    return feeds


def whole_postprocessing(spec: ModelSpec, outputs: Dict[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                         gate: Optional["Gate"] = None) -> Dict[str, np.ndarray]:
    """Step 4: post-processing that needs whole outputs (statistics, custom code), in rdf order."""
    for o in spec.outputs:
        fitted = processing.fit(o.postprocessing, outputs[o.id], o.axis_ids, {**inputs, **outputs}, custom=gate)
        outputs[o.id] = fitted(outputs[o.id])
    first = spec.outputs[0]
    for macro in (m for m in spec.macros if m.stage == "postprocess"):  # deepImageJ's, after the rdf's ops
        outputs[first.id] = macro.apply(outputs[first.id], first.letters)
    return outputs


def to_float(region: np.ndarray, tensor: Tensor) -> np.ndarray:
    """An input region as the tensor's pre-processing takes it: integer (or bool) pixels of a
    float tensor as float32; anything else unchanged (no copy).

    Used for each tile here and by :mod:`dlmodel.training` for whole training images, so both
    see the same numbers.
    """
    if tensor.dtype.startswith("float") and region.dtype.kind in "biu":
        return region.astype(np.float32)
    return region


def _batch_dim(t: Tensor) -> Optional[int]:
    return next((i for i, a in enumerate(t.axes) if a.type == "batch"), None)


def _write(
    outputs: Dict[str, np.ndarray], spec: ModelSpec, o: Tensor, part: np.ndarray, tile: tiling.Tile, plan: Plan,
    post: Optional[processing.Fitted] = None,
) -> None:
    """Copy the part of one output tile that this tile owns into the whole-image output, after
    ``post`` (element-wise post-processing: only the kept part is worth computing)."""
    local: List[slice] = []
    glob: List[slice] = []
    full_shape: List[int] = []
    lengths = {a.id: a.length for a in plan.axes}
    for i, ax in enumerate(o.axes):
        t = tile.axes.get(ax.id)
        n = part.shape[i]
        if t is None or ax.ref is None or ax.ref[1] != ax.id:
            if ax.type == "batch":
                n = 1
            local.append(slice(0, n))
            glob.append(slice(0, n))
            full_shape.append(n)
            continue
        ref_ax = spec.tensor(ax.ref[0]).axis(ax.ref[1])
        f = _factor(ax, ref_ax)
        expected = int(t.size * ref_ax.scale / ax.scale + ax.offset)
        if n != expected:
            raise EngineError(
                f"output {o.id!r} is {n} long along {ax.id!r} for a tile of {t.size}; the rdf says {expected}"
            )
        shift = Fraction(ax.offset, 2)
        l0 = int((t.write_start - t.start) * f + shift)
        l1 = int((t.write_stop - t.start) * f + shift)
        g0 = int(t.write_start * f)
        total = int(lengths[ax.id] * f)
        g1 = min(g0 + (l1 - l0), total)
        local.append(slice(l0, l0 + (g1 - g0)))
        glob.append(slice(g0, g1))
        full_shape.append(total)
    kept = part[tuple(local)]
    if post is not None:
        kept = post(kept)
    out = outputs.get(o.id)
    if out is None:
        out = outputs[o.id] = np.zeros(full_shape, dtype=kept.dtype)
    out[tuple(glob)] = kept
