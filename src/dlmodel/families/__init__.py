"""Model families: the step a model's family adds after its network to make objects.

A StarDist network outputs, per pixel, an object probability and ray distances; a Cellpose
network flows and a cell probability; neither is an image a biologist wants. The family's own
step (StarDist's non-maximum suppression, Cellpose's flow dynamics, a deepImageJ
post-processing macro) makes the objects. Each family is one module here with:

- ``recipe(spec)``: the package's instance recipe when its family says how to make objects
  (StarDist's exporter writes thresholds in ``config.stardist``; deepImageJ lists macros in
  ``config.deepimagej``), else None;
- ``labels(output, axes, recipe)``: int32 labels from one whole, stitched output (never per
  tile: no object is cut or doubled at a tile seam);
- ``describe(recipe)``: one line for ``dlmodel info`` and RunDLModel's model information;
- ``op_labels(op, x, axis_ids)`` for the spec 0.5 ops that make labels inside the rdf's own
  post-processing (``stardist_postprocessing``, ``cellpose_flow_dynamics``).

The families' libraries (``stardist``, ``cellpose``) are optional extras, imported only when a
step runs; without one, the step fails with one line naming ``pip install 'dlmodel[...]'``.

The registry: every module (or package) in this folder is a family, found by :func:`registry`.
Besides the functions above each declares ``METHODS`` (the recipe methods it makes objects by),
``LABEL_OPS`` (the spec 0.5 ops it runs), ``PRECEDENCE`` (which family's recipe wins when a
package carries two: exporters' own configs before macros) and, where it has any,
``left_out(spec)`` (the package's steps it recognises but does not run). Callers ask here (:func:`methods`, :func:`label_ops`,
:func:`left_out`), never a family by name: a new family is one new module.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import EngineError, SpecError

if TYPE_CHECKING:
    from ..spec import ModelSpec

@functools.lru_cache(maxsize=None)
def registry() -> Dict[str, Any]:
    """Every family module of this package by name, in order of ``PRECEDENCE`` (imported on first
    use: they import numpy only, their libraries when a step runs)."""
    found = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
             if not m.name.startswith("_")]
    return {m.__name__.rsplit(".", 1)[1]: m for m in sorted(found, key=lambda m: (m.PRECEDENCE, m.__name__))}


def methods() -> Dict[str, Any]:
    """Recipe method -> the family module that makes objects by it."""
    return {method: m for m in registry().values() for method in m.METHODS}


def label_ops() -> Dict[str, Any]:
    """Spec 0.5 post-processing op that makes labels -> the family module that runs it."""
    return {op: m for m in registry().values() for op in m.LABEL_OPS}


def left_out(spec: "ModelSpec") -> List[str]:
    """The package's steps that a family recognises and dlmodel does not run (warned once)."""
    return [note for m in registry().values() if hasattr(m, "left_out") for note in m.left_out(spec)]


def package_recipe(spec: "ModelSpec") -> Optional[Dict[str, Any]]:
    """The family's own instance recipe for a package, or None.

    An output whose rdf post-processing already makes labels (a spec 0.5 StarDist or Cellpose
    op) is used as it is (method ``labels``); else the first family whose exporter's config is
    in the package."""
    ops = label_ops()
    for o in spec.outputs:
        if any(getattr(op, "id", None) in ops for op in o.postprocessing):
            # the op's objects as they are: none dropped, none filled (a family's step is whole)
            return {"method": "labels", "output": o.id, "min_size": 0, "fill_holes": False}
    for family in registry().values():
        recipe = family.recipe(spec)
        if recipe is not None:
            return recipe
    return None


def complete(spec: "ModelSpec") -> "ModelSpec":
    """The view with its family's parts: the family's own step for objects
    (``spec.family_recipe``), the deepImageJ macros dlmodel runs (``spec.macros``), and a note
    for each thing dlmodel adds to or leaves out of the rdf (``spec.notes``)."""
    import dataclasses

    for family in registry().values():
        spec = family.complete(spec)
    return dataclasses.replace(spec, family_recipe=package_recipe(spec))


def labels(output: np.ndarray, axes: str, recipe: Mapping[str, Any]) -> np.ndarray:
    """Objects from one whole output (axes letters, e.g. ``yxc``) by a family's recipe; axes
    other than channel and space (``t``, say) are looped over."""
    family = methods()[recipe["method"]]
    own = [i for i, a in enumerate(axes) if a not in "czyx"]
    if not own:
        return family.labels(output, axes, recipe)
    rest = "".join(a for a in axes if a in "czyx")
    moved = np.moveaxis(output, own, range(len(own)))
    parts = [family.labels(moved[idx], rest, recipe) for idx in np.ndindex(*moved.shape[: len(own)])]
    return np.stack(parts).reshape(moved.shape[: len(own)] + parts[0].shape)


def describe(recipe: Optional[Mapping[str, Any]]) -> Optional[str]:
    """One line on a family's instance step, or None for a recipe that is not a family's."""
    family = methods().get((recipe or {}).get("method"))
    return family.describe(recipe) if family is not None else None


def op_labels(op: Any, x: np.ndarray, axis_ids: Sequence[str]) -> np.ndarray:
    """A spec 0.5 label-making post-processing op on a whole output tensor (its own axis ids,
    batch included): labels with the same axes, one channel."""
    return label_ops()[op.id].op_labels(op, x, axis_ids)


def number(value: Any, what: str, lo: Optional[float] = None, hi: Optional[float] = None,
           integer: bool = False) -> Any:
    """A number a package supplies (a threshold, a bin count, a grid), checked before it sizes
    memory or decides objects: a real number (not a string, not a bool), finite, a whole number
    if ``integer``, within [``lo``, ``hi``]. Anything else is a one-line SpecError naming ``what``.

    >>> number("0.5", "config.stardist.thresholds.prob", 0, 1)
    Traceback (most recent call last):
    ...
    dlmodel.errors.SpecError: config.stardist.thresholds.prob is '0.5'; it must be a number from 0 to 1
    """
    import math
    import numbers

    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    ok = ok and (not integer or float(value) == int(value))
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        kind = "a whole number" if integer else "a number"
        bounds = (f" from {lo:g} to {hi:g}" if lo is not None and hi is not None else f" of at least {lo:g}" if lo is not None
                  else f" of at most {hi:g}" if hi is not None else "")
        raise SpecError(f"{what} is {value!r}; it must be {kind}{bounds}")
    return int(value) if integer else float(value)


def require(module: str, extra: str, what: str) -> Any:
    """Import a family's library, or fail in one line saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EngineError(f"{what} needs the {extra!r} package, which is not installed here: "
                          f"pip install 'dlmodel[{extra}]'") from e
