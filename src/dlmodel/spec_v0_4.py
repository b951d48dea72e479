"""The view of a format 0.4 rdf that bioimageio.spec cannot convert to 0.5, read as 0.4.

bioimageio.spec converts 0.4 rdfs to 0.5 and refuses some valid ones on the way (an output
with a fixed size and a halo, ``unet2d_fixed_shape`` in the spec's own examples). bioimageio.core
runs them as 0.4; so does dlmodel, through this translation of the 0.4 description into the same
:class:`~dlmodel.spec.ModelSpec` a 0.5 rdf gives:

- axes are letters (``bcyx``); a 0.4 shape is a list (fixed), ``min``/``step`` (``step`` 0: fixed)
  or ``reference_tensor``/``scale``/``offset`` (``out = ref * scale + 2 * offset``, axis by axis);
- an output of fixed size equal, along a space axis, to an input's fixed size follows that input
  one to one (what a fixed size with a halo means; ``spec.follow_fixed_inputs``, as for 0.5);
- processing ops are converted with bioimageio.spec's own op conversion, with axis letters made
  0.5 axis ids (``c`` -> ``channel``) and a ``scale_range`` reference tensor kept;
- the state dict's architecture (``file.py:Class`` or ``module.Class``) and its kwargs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import SpecError
from .spec import (LETTER_TO_AXIS, Architecture, Axis, ModelSpec, Tensor, description_fields,
                   follow_fixed_inputs, local_path, weight_entries)

_TYPE = {"b": "batch", "c": "channel", "t": "time", "i": "index", "x": "space", "y": "space", "z": "space"}


def spec_from_v0_4(descr: Any, rdf_path: Path, note: str = "") -> ModelSpec:
    """The view of a validated v0_4 ``ModelDescr`` whose files lie beside ``rdf_path``."""
    root = rdf_path.parent
    inputs = tuple(_tensor(t, True, root, test, descr) for t, test in zip(descr.inputs, descr.test_inputs))
    outputs = follow_fixed_inputs(inputs, [_tensor(t, False, root, test, descr)
                                           for t, test in zip(descr.outputs, descr.test_outputs)])
    weights, paths = weight_entries(descr, root)
    architecture = environment = None
    state = weights.get("pytorch_state_dict")
    if state is not None:
        architecture = _architecture(state)
        if state.dependencies is not None:
            environment = root / str(state.dependencies).split(":", 1)[-1]
    config = dict(descr.config or {})
    return ModelSpec(
        **description_fields(descr, rdf_path),
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        weight_paths=paths,
        config=config,
        architecture=architecture,
        environment_file=environment,
        format_version=str(descr.format_version),
        format_note=note,
    )


def _architecture(entry: Any) -> Architecture:
    arch = entry.architecture
    kwargs = dict(entry.kwargs or {})
    if hasattr(arch, "source_file"):  # "file.py:Class"
        return Architecture(callable=str(arch.callable_name), kwargs=kwargs, source=str(arch.source_file))
    return Architecture(callable=str(arch.callable_name), kwargs=kwargs, import_from=str(arch.module_name))


def _tensor(t: Any, is_input: bool, root: Path, test: Any, descr: Any) -> Tensor:
    letters = str(t.axes)
    ops = t.preprocessing if is_input else t.postprocessing
    return Tensor(
        id=str(t.name),
        axes=tuple(_axes(t, letters, descr)),
        dtype=str(t.data_type),
        description=t.description or "",
        preprocessing=tuple(_op(p, letters) for p in ops or ()) if is_input else (),
        postprocessing=() if is_input else tuple(_op(p, letters) for p in ops or ()),
        test_tensor=local_path(root, test),
    )


def _per_axis(t: Any, letters: str, field: str, values: Any, whole: bool = True, least: float = 0) -> List[Any]:
    """A 0.4 per-axis list, checked: one value per axis letter, each a whole number (or a number)
    of at least ``least``; bioimageio.spec's 0.4 model checks neither, and a short list would fail
    later with an IndexError, a negative halo crop every tile wrongly."""
    values = list(values)
    if len(values) != len(letters):
        raise SpecError(f"tensor {t.name!r}: {field} has {len(values)} value(s) for the {len(letters)} axes {letters!r}")
    for letter, v in zip(letters, values):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
        if not ok or (whole and v != int(v)) or v < least:
            kind = "a whole number" if whole else "a number"
            raise SpecError(f"tensor {t.name!r}: {field} along {letter!r} is {v!r}; it must be {kind} >= {least:g}")
    return values


def _axes(t: Any, letters: str, descr: Any) -> List[Axis]:
    shape = t.shape
    halo = _per_axis(t, letters, "halo", getattr(t, "halo", None) or [0] * len(letters))
    if isinstance(shape, list):
        _per_axis(t, letters, "shape", shape, least=1)
    elif hasattr(shape, "step"):
        _per_axis(t, letters, "shape.min", shape.min, least=1)
        _per_axis(t, letters, "shape.step", shape.step)
    else:  # an axis the output adds has scale null (0.4): its size is 2 * offset
        _per_axis(t, letters, "shape.scale", [0 if s is None else s for s in shape.scale], whole=False)
        _per_axis(t, letters, "shape.offset", shape.offset, whole=False, least=-float("inf"))
    axes = []
    for i, letter in enumerate(letters):
        kind = _TYPE.get(letter)
        if kind is None:
            raise SpecError(f"tensor {t.name!r}: unknown axis {letter!r} in {letters!r}")
        common = dict(id=LETTER_TO_AXIS.get(letter, letter), type=kind, halo=int(halo[i]))
        if isinstance(shape, list):  # fixed (an output as large as a fixed input follows it: spec.follow_fixed_inputs)
            axes.append(_sized(int(shape[i]), letter, common))
        elif hasattr(shape, "step"):  # min/step
            lo, step = int(shape.min[i]), int(shape.step[i])
            axes.append(_sized(lo, letter, common) if step == 0 else Axis(min=lo, step=step, **common))
        else:  # implicit: out = ref * scale + 2 * offset
            scale, offset = float(shape.scale[i] or 0), float(shape.offset[i])
            ref_tensor = next((r for r in descr.inputs + descr.outputs if str(r.name) == str(shape.reference_tensor)), None)
            if ref_tensor is None or len(str(ref_tensor.axes)) != len(letters):
                raise SpecError(f"tensor {t.name!r}: its shape refers to tensor {str(shape.reference_tensor)!r}, which "
                                f"{'is not in the rdf' if ref_tensor is None else 'has other axes'}")
            if scale == 0:
                axes.append(_sized(int(round(2 * offset)), letter, common))
                continue
            if 2 * offset != int(2 * offset):
                raise SpecError(f"tensor {t.name!r}: offset {offset} along {letter!r} is not a whole number of pixels")
            ref_axis = LETTER_TO_AXIS.get(str(ref_tensor.axes)[i], str(ref_tensor.axes)[i])
            axes.append(Axis(ref=(str(shape.reference_tensor), ref_axis), offset=int(2 * offset), scale=1.0 / scale,
                             **common))
    return axes


def _sized(size: int, letter: str, common: Dict[str, Any]) -> Axis:
    if letter == "c":
        return Axis(size=size, channel_names=tuple(f"channel{k}" for k in range(size)), **common)
    return Axis(size=size, **common)


def _op(p: Any, letters: str) -> Any:
    """A 0.4 processing op as the 0.5 op dlmodel's processing runs: bioimageio.spec's own
    conversion, with axis letters made 0.5 axis ids and a reference tensor kept."""
    from bioimageio.spec.model import v0_5

    try:
        op = v0_5._convert_proc(p, letters)
    except (ValueError, AssertionError) as e:
        raise SpecError(f"processing op {p.name!r} cannot be read: {e}") from e
    kw = getattr(op, "kwargs", None)
    if kw is None:
        return op
    update: Dict[str, Any] = {}
    axes = getattr(kw, "axes", None)
    if axes is not None:
        update["axes"] = [v0_5.AxisId(LETTER_TO_AXIS.get(str(a), str(a))) for a in axes]
    ref = getattr(p.kwargs, "reference_tensor", None)
    if ref is not None and "reference_tensor" in type(kw).model_fields:
        update["reference_tensor"] = v0_5.TensorId(str(ref))
    axis = getattr(kw, "axis", None)
    if axis is not None:
        update["axis"] = v0_5.AxisId(LETTER_TO_AXIS.get(str(axis), str(axis)))
    return op.model_copy(update={"kwargs": kw.model_copy(update=update)}) if update else op


def files_v0_4(descr: Any) -> List[Tuple[Any, Optional[str]]]:
    """Files a 0.4 rdf names outside nodes with a ``source`` and ``sha256`` (the package's
    integrity check finds those itself): test and sample tensors, attachments, documentation,
    the architecture file (with its ``architecture_sha256``) and environment files."""
    found: List[Tuple[Any, Optional[str]]] = []
    for name in ("test_inputs", "test_outputs", "sample_inputs", "sample_outputs"):
        found += [(f, None) for f in getattr(descr, name, None) or ()]
    if descr.attachments is not None:
        found += [(f, None) for f in descr.attachments.files or ()]
    if descr.documentation is not None:
        found.append((descr.documentation, None))
    from .engines import ENGINE_EXTRA

    for fmt in ENGINE_EXTRA:
        entry = getattr(descr.weights, fmt, None)
        if entry is None:
            continue
        arch = getattr(entry, "architecture", None)
        if arch is not None and hasattr(arch, "source_file"):
            found.append((arch.source_file, getattr(entry, "architecture_sha256", None)))
        deps = getattr(entry, "dependencies", None)
        if deps is not None:
            found.append((str(deps).split(":", 1)[-1], None))
    return found
