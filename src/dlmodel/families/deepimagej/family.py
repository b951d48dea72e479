"""The family interface (``dlmodel.families``): what dlmodel does with a package's deepImageJ
macros: which run, the package's instance recipe, objects from a whole output, the lines for
``dlmodel info``.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .macros import MacroStep, macro_steps


def _covered(spec: Any, step: MacroStep) -> bool:
    """Whether the rdf's own ops already do what an intensity macro does (then the rdf's op
    runs: the package's test tensors follow the rdf)."""
    tensors = spec.inputs[:1] if step.stage == "preprocess" else spec.outputs[:1]
    ops = [op.id for t in tensors for op in (t.preprocessing if step.stage == "preprocess" else t.postprocessing)]
    return step.equivalent_op is not None and step.equivalent_op in ops


def complete(spec: Any) -> Any:
    """The package's deepImageJ steps in the view: ``spec.macros`` holds those dlmodel runs (an
    intensity macro the rdf's ops do not already do: pre-processing of the first input before
    the rdf's own, post-processing of the first output after them); instance macros become the
    package's instance recipe (:func:`recipe`); every step gets a note saying what is done
    with it, an unrecognised one what is left out."""
    import dataclasses

    steps = macro_steps(spec.config, spec.root)
    if not steps:
        return spec
    run: List[MacroStep] = []
    notes: List[str] = []
    for step in steps:
        where = "its input" if step.stage == "preprocess" else "its output"
        if step.kind is None:
            notes.append(f"deepImageJ {step.stage}ing {step.summary()}: {where} is used without it")
        elif step.makes_objects:
            notes.append(f"deepImageJ {step.stage}ing {step.summary()} (the package's own step for objects)")
        elif _covered(spec, step):
            notes.append(f"deepImageJ {step.stage}ing {step.file}: the rdf's {step.equivalent_op} does the same and "
                         f"runs (the package's test tensors follow the rdf); deepImageJ's macro would give: "
                         f"{step.summary().split(': ', 1)[1]}")
        else:
            run.append(step)
            notes.append(f"deepImageJ {step.stage}ing {step.summary()} (run by dlmodel on the whole image)")
    return dataclasses.replace(spec, macros=tuple(run), notes=spec.notes + tuple(notes))


def unrecognised(spec: Any) -> List[str]:
    """The package's deepImageJ steps that dlmodel does not run, one line each."""
    return [s.summary() for s in macro_steps(spec.config, spec.root) if s.kind is None]


def recipe(spec: Any) -> Optional[Dict[str, Any]]:
    """The package's instance recipe when its deepImageJ post-processing makes objects."""
    for step in macro_steps(spec.config, spec.root):
        if step.makes_objects:
            return {"method": "deepimagej", "output": spec.outputs[0].id, "macro": step.file, "kind": step.kind,
                    "params": dict(step.params), "from": "config.deepimagej"}
    return None


def labels(output: np.ndarray, axes: str, recipe: Mapping[str, Any]) -> np.ndarray:
    """Objects from a whole output by the package's instance macro (recipe from :func:`recipe`)."""
    step = MacroStep(str(recipe["macro"]), "postprocess", str(recipe["kind"]), MappingProxyType(dict(recipe["params"])),
                     True, None)
    return step.apply(output, axes)


def describe(recipe: Mapping[str, Any]) -> str:
    """One line on the package's instance macro (recipe from :func:`recipe`) for ``dlmodel info``."""
    step = MacroStep(str(recipe["macro"]), "postprocess", str(recipe["kind"]), MappingProxyType(dict(recipe["params"])),
                     True, None)
    extra = "; needs pip install 'dlmodel[stardist]'" if recipe["kind"] == "stardist_2d" else ""
    return f"deepImageJ macro {step.summary()} (config.deepimagej){extra}"
