"""Cellpose: cells from flows and a cell probability, by Cellpose's own flow dynamics.

A Cellpose network outputs, per pixel, flows (the gradient of a diffusion from each cell's
centre; y and x in 2D, z, y and x in 3D) and a cell probability (logit). Pixels above
``cellprob_threshold`` follow the flows to where they converge, each sink one cell; cells whose
flows disagree with the network's by more than ``flow_threshold`` are dropped, holes filled and
cells under ``min_size`` pixels removed. dlmodel runs Cellpose's own ``compute_masks`` and
``fill_holes_and_remove_small_masks`` (``pip install 'dlmodel[cellpose]'``) on the whole
stitched output, as bioimageio.core 0.11 computes the spec 0.5 ``cellpose_flow_dynamics`` op.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence

import numpy as np

from ..errors import SpecError

# the family registry (dlmodel.families): its recipe method, its spec 0.5 op, and its export
# (recognised by its own flow output) before macros
METHODS = ("cellpose",)
LABEL_OPS = ("cellpose_flow_dynamics",)
PRECEDENCE = 0

if TYPE_CHECKING:
    from ..spec import ModelSpec

# Cellpose's own defaults
DEFAULTS = {"cellprob_threshold": 0.0, "flow_threshold": 0.4, "min_size": 15}


def is_export(spec: "ModelSpec") -> bool:
    """Whether a package was written by Cellpose's own exporter (``python -m cellpose.export``):
    a CPnet architecture or a "cellpose" tag, and its ``flow`` output (flows + cell probability)."""
    arch = spec.architecture.callable if spec.architecture is not None else ""
    cellpose = arch.startswith("CPnet") or "cellpose" in {t.lower() for t in spec.tags}
    return cellpose and _flow_output(spec) is not None


def _flow_output(spec: "ModelSpec") -> Any:
    for o in spec.outputs:
        space = sum(a.type == "space" and a.id != "z" for a in o.axes)
        if o.id == "flow" and o.n_channels == space + 1:
            return o
    return None


def recipe(spec: "ModelSpec") -> Optional[Dict[str, Any]]:
    """The instance recipe of a package written by Cellpose's exporter (it states no
    thresholds: Cellpose's own defaults), or None."""
    if not is_export(spec):
        return None
    return {"method": "cellpose", "output": _flow_output(spec).id, **DEFAULTS, "from": "Cellpose's defaults"}


def complete(spec: "ModelSpec") -> "ModelSpec":
    """A Cellpose export without pre-processing gets a note: Cellpose normalises each channel of
    each plane to its 1st..99th percentiles before its network (``normalize99``), and its
    exporter leaves that out of the rdf. dlmodel runs what the rdf says (its test input was
    normalised and then zero-padded, so adding the normalisation would break the package's own
    test); the note tells the user to give normalised images."""
    import dataclasses

    if not is_export(spec) or any(op.id != "ensure_dtype" for t in spec.inputs for op in t.preprocessing):
        return spec
    note = ("Cellpose export: its rdf has no pre-processing, but Cellpose's network expects each channel normalised "
            "to its 1st..99th percentiles (Cellpose's normalize99); dlmodel runs the rdf as it is, so give it images "
            "normalised that way")
    return dataclasses.replace(spec, notes=spec.notes + (note,))


def labels(output: np.ndarray, axes: str, recipe: Mapping[str, Any]) -> np.ndarray:
    """Cells from a whole output whose channels are the flows then the cell probability."""
    space = "".join(a for a in axes if a in "zyx")
    if "c" not in axes:
        raise SpecError(f"a Cellpose output needs a channel axis (flows + cell probability); this one has axes {axes!r}")
    x = np.moveaxis(np.asarray(output), [axes.index(a) for a in "c" + space], range(len(space) + 1))
    if space.startswith("z") and x.shape[1] == 1 and x.shape[0] == 3:  # a 2D output with a z of 1
        return _masks(x[:-1, 0], x[-1, 0], recipe)[None]
    return _masks(x[:-1], x[-1], recipe)


def _masks(flows: np.ndarray, cellprob: np.ndarray, recipe: Mapping[str, Any]) -> np.ndarray:
    from . import number, require

    # the package's (or the user's) numbers, checked before Cellpose uses them: the cell
    # probability threshold is a logit (Cellpose's range -6..6), the flow error a distance
    cellprob_threshold = number(recipe.get("cellprob_threshold", DEFAULTS["cellprob_threshold"]),
                                "the Cellpose cell probability threshold", -20, 20)
    flow_threshold = number(recipe.get("flow_threshold", DEFAULTS["flow_threshold"]), "the Cellpose flow threshold", 0, 100)
    min_size = number(recipe.get("min_size", DEFAULTS["min_size"]), "the Cellpose minimum size", -1, 1e9, integer=True)
    require("cellpose", "cellpose", "Cellpose's flow dynamics")
    from cellpose.dynamics import compute_masks
    from cellpose.utils import fill_holes_and_remove_small_masks

    do_3d = bool(recipe.get("do_3D", cellprob.ndim == 3))
    if flows.shape[0] != cellprob.ndim:
        raise SpecError(f"a {cellprob.ndim}D Cellpose output needs {cellprob.ndim} flow channels and a cell probability; "
                        f"this one has {flows.shape[0] + 1} channels")
    masks = compute_masks(np.asarray(flows, np.float32), np.asarray(cellprob, np.float32),
                          cellprob_threshold=cellprob_threshold, flow_threshold=flow_threshold, do_3D=do_3d)
    if isinstance(masks, tuple):  # older Cellpose returns (masks, p)
        masks = masks[0]
    masks = fill_holes_and_remove_small_masks(masks, min_size=min_size)
    return np.asarray(masks, dtype=np.int32)


def op_labels(op: Any, x: np.ndarray, axis_ids: Sequence[str]) -> np.ndarray:
    """spec 0.5 ``cellpose_flow_dynamics`` on a whole output (batch, channel, space axes):
    labels with the tensor's axes, one channel, in the op's ``output_dtype``."""
    kw = op.kwargs
    if "channel" not in axis_ids:
        raise SpecError("cellpose_flow_dynamics: the output has no channel axis (flows + cell probability)")
    space = [a for a in axis_ids if a in ("z", "y", "x")]
    recipe = {"cellprob_threshold": kw.cellprob_threshold, "flow_threshold": kw.flow_threshold, "do_3D": kw.do_3D,
              "min_size": kw.min_size}
    order = ["batch"] if "batch" in axis_ids else []
    moved = np.moveaxis(x, [axis_ids.index(a) for a in order + ["channel"] + space], range(len(order) + 1 + len(space)))
    batch = moved if order else moved[None]
    stacked = np.stack([_masks(s[:-1], s[-1], recipe)[None] for s in batch])  # (b, 1, *space)
    if not order:
        stacked = stacked[0]
    back = order + ["channel"] + space
    return np.moveaxis(stacked, range(len(back)), [axis_ids.index(a) for a in back]).astype(np.dtype(kw.output_dtype))


def describe(recipe: Mapping[str, Any]) -> str:
    values = {k: recipe.get(k, v) for k, v in DEFAULTS.items()}
    return (f"Cellpose: flow dynamics of output {recipe.get('output')!r}, cell probability threshold "
            f"{values['cellprob_threshold']:g}, flow threshold {values['flow_threshold']:g}, minimum size "
            f"{values['min_size']} ({recipe.get('from', 'the package')}); needs pip install 'dlmodel[cellpose]'")
