"""Tile planning: which axes tile, how big the tiles are, where they lie, and whether it all fits.

One image's plan (:func:`make_plan`, :func:`plan_checked`) is made here, from the spec and the
input shapes alone; :mod:`dlmodel.prediction` runs it. The steps:

1. :func:`tiled_axes`: the space/time axes the inputs share, each with the context (margin)
   its outputs need and the alignment that keeps tiles in the network's phase.
2. :func:`_tile_sizes`: the user's tile (rounded up to a valid length), else the largest valid
   tile within :data:`DEFAULT_TILE_PIXELS`, as few tiles as possible, each as small as that allows.
3. :func:`plan_axis` and :func:`cover`: the tiles along each axis, and all their combinations.
4. :func:`check_memory`: the outputs and the engine's working memory against what is available,
   refused before anything is allocated, with a tile that fits as advice.

Along each tiled axis an image of length ``L`` (input pixels) is covered by tiles of a valid
length ``T``. A tile needs ``margin`` pixels of context on each side (the output halo and any
size offset, in input pixels); only its inner part is kept. Inner parts are spread evenly so
the last tile ends exactly at the image border, neighbouring tiles overlap a little, and each
tile writes the output up to the middle of the overlap. Context that falls outside the image
is padded; an image shorter than ``T`` is padded up to ``T`` and the output cropped back.

Coordinates are input pixels of the whole image; a tile may start before 0 or end past ``L``.
"""
from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .spec import Axis, ModelSpec

LOGGER = logging.getLogger("dlmodel")

TileArg = Union[None, bool, int, Sequence[int], Mapping[str, int]]


@dataclass(frozen=True)
class AxisTile:
    start: int  # first input pixel the tile reads (may be < 0: padding)
    size: int  # tile length T
    write_start: int  # first input pixel whose output this tile writes
    write_stop: int  # one past the last


@dataclass(frozen=True)
class AxisPlan:
    axis: str
    length: int
    size: int
    margin: int
    tiles: Tuple[AxisTile, ...]


@dataclass(frozen=True)
class Tile:
    """One N-D tile: per tiled axis id, its AxisTile."""

    axes: Dict[str, AxisTile]


def plan_axis(axis: str, length: int, size: int, margin: int, align: int = 1) -> AxisPlan:
    """Plan tiles of length ``size`` over ``length`` pixels, keeping ``margin`` of context.

    ``align``: tile starts are multiples of it (down-sampling models need even starts so the
    output grid lines up)."""
    if length < 1:
        raise InputError(f"axis {axis!r} has length {length}; images need at least 1 pixel")
    inner = size - 2 * margin
    if inner < align:
        raise InputError(
            f"tile size {size} along {axis!r} leaves no output after cropping a context of "
            f"{margin} pixels on each side; use a tile larger than {2 * margin}"
        )
    if length <= inner:
        return AxisPlan(axis, length, size, margin, (AxisTile(-margin, size, 0, length),))
    n = max(2, math.ceil(length / inner))
    last = length - inner
    while True:
        # inner regions start at evenly spread, aligned positions; the last one ends at or
        # past ``length`` (its extra output is never written)
        starts = [_align_down(round(k * last / (n - 1)), align) for k in range(n - 1)]
        starts.append(last + (-last) % align)
        ends = [s + inner for s in starts]
        if all(starts[k + 1] <= ends[k] for k in range(n - 1)):
            break
        n += 1
    cuts = [0] + [_align_down((ends[k] + starts[k + 1]) // 2, align) for k in range(n - 1)] + [length]
    tiles = tuple(
        AxisTile(starts[k] - margin, size, cuts[k], cuts[k + 1]) for k in range(n) if cuts[k + 1] > cuts[k]
    )
    return AxisPlan(axis, length, size, margin, tiles)


def _align_down(v: int, align: int) -> int:
    return v - v % align


def cover(axis_plans: Sequence[AxisPlan]) -> List[Tile]:
    """All N-D tiles, in C order of the given axes."""
    return [
        Tile({p.axis: t for p, t in zip(axis_plans, combo)})
        for combo in itertools.product(*(p.tiles for p in axis_plans))
    ]


def alignment(factor: Fraction) -> int:
    """Input-pixel step that maps onto whole output pixels for an output/input size ratio."""
    return factor.denominator


def margin_for(halo: int, offset: int, factor: Fraction, align: int) -> int:
    """Context (input pixels per side) a tile needs so its output halo can be cropped.

    ``halo`` and ``offset`` are in output pixels; ``factor`` is output pixels per input pixel.
    A negative offset means the model's output is smaller than its input (valid convolutions).
    """
    need = (Fraction(halo) - Fraction(offset, 2)) / factor
    m = max(0, math.ceil(need))
    return m + (-m) % align


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
    axis_plans: Tuple[AxisPlan, ...]
    tiles: Tuple[Tile, ...]
    batch_size: int

    @property
    def tile_shape(self) -> Dict[str, int]:
        return {p.axis: p.size for p in self.axis_plans}


def output_factor(out_axis: Axis, in_axis: Axis) -> Fraction:
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
            f = output_factor(out_ax, ref_ax)
            a = alignment(f)
            halo = out_ax.halo if use_halo else 0
            align = math.lcm(align, a)
            margin = max(margin, margin_for(halo, out_ax.offset, f, a))
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
        if len(plan_axis(a.id, a.length, tight, a.margin, a.align).tiles) > n:
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
    # a plan depends on the package and the input shapes only: one per image, whether the file's
    # header is checked before reading it (Model.check_file_fits) and then predicted, or not
    key = (id(spec), tuple((k, np.shape(v)) for k, v in sorted(inputs.items())), _hashable(tile), batch_size,
           max_tile_pixels, use_halo, as_given)
    with _PLANS_LOCK:
        kept = _PLANS.get(key)
        if kept is not None and kept[0] is spec:  # the entry holds its spec: its id is not reused meanwhile
            _PLANS.move_to_end(key)
            return kept[1]
    whole = tile is False or as_given
    axes = tiled_axes(spec, inputs, whole, use_halo)
    sizes = {a.id: a.length for a in axes} if as_given else _tile_sizes(axes, None if whole else tile, max_tile_pixels)
    plans = tuple(plan_axis(a.id, a.length, sizes[a.id], a.margin, a.align) for a in axes)
    tiles = tuple(cover(plans))
    bmax = _max_batch(spec)
    bs = max(1, min(batch_size or 1, bmax, len(tiles)))
    plan = Plan(axes, plans, tiles, bs)
    with _PLANS_LOCK:
        _PLANS[key] = (spec, plan)
        while len(_PLANS) > _PLANS_KEPT:
            _PLANS.popitem(last=False)
    return plan


_PLANS: "collections.OrderedDict[tuple, Tuple[ModelSpec, Plan]]" = collections.OrderedDict()
_PLANS_KEPT = 32  # the last images' shapes: a screen's images share one or a few
_PLANS_LOCK = threading.Lock()


def _hashable(tile: TileArg) -> Any:
    if isinstance(tile, Mapping):
        return tuple(sorted((str(k), v) for k, v in tile.items()))
    if isinstance(tile, (list, tuple)):
        return tuple(tile)
    return tile


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


def plan_for_engine(
    spec: ModelSpec, inputs: Mapping[str, np.ndarray], asynchronous: bool, tile: TileArg = None,
    batch_size: Optional[int] = None, max_tile_pixels: int = DEFAULT_TILE_PIXELS, use_halo: bool = True,
    name: str = "image", as_given: bool = False,
) -> Plan:
    """The checked plan for one sample on an engine: ``batch_size=None`` is :data:`GPU_BATCH`
    tiles per pass on an engine that computes while the host goes on (a GPU), retried with one
    before refusing an image; else one. See :func:`make_plan` for the rest."""
    gpu_default = batch_size is None and asynchronous
    return plan_checked(spec, inputs, tile, GPU_BATCH if gpu_default else batch_size, max_tile_pixels, use_halo,
                        name, retry_one=gpu_default, as_given=as_given)


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
                n *= int(lengths[ax.id] * output_factor(ax, ref_ax))
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
