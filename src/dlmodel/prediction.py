"""One sample's trip through a model: statistics, tiles, engine, stitching, post-processing.

This module runs a plan; :mod:`dlmodel.tiling` makes it (which axes tile, tile sizes, the
memory check).

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import processing, tiling
from .tiling import Plan
from .engines import Engine
from .errors import EngineError, InputError
from .spec import ModelSpec, Tensor

if TYPE_CHECKING:
    from .trust import Gate

LOGGER = logging.getLogger("dlmodel")

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


def run_plan(
    spec: ModelSpec,
    engine: Engine,
    inputs: Mapping[str, np.ndarray],
    plan: Plan,
    pad_mode: Optional[str] = None,
    gate: Optional["Gate"] = None,
) -> Dict[str, np.ndarray]:
    """Predict one sample by its plan (:func:`dlmodel.tiling.plan_for_engine`); ``inputs`` and
    the returned outputs are in model layout (batch 1).

    ``gate``: consent for code the package brings (``custom`` post-processing); without one,
    such code is not run."""
    prepared, pre = fit_preprocessing(spec, inputs, [a.id for a in plan.axes])
    per_tile = not any(m.stage == "postprocess" for m in spec.macros) and all(
        not any(processing.needs_statistics(op) for op in o.postprocessing) for o in spec.outputs)
    post = {o.id: processing.fit(o.postprocessing, np.zeros((1,) * len(o.axes), np.float32), o.axis_ids)
            for o in spec.outputs} if per_tile else {}
    outputs = run_tiles(spec, engine, plan, prepared, pre, post, pad_mode)
    if not per_tile:
        outputs = whole_postprocessing(spec, outputs, inputs, gate)
    return outputs


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
        f = tiling.output_factor(ax, ref_ax)
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
