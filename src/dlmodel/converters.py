"""Weight conversion: add TorchScript or ONNX weights to a package (``dlmodel convert``).

pytorch_state_dict -> torchscript -> onnx, and keras -> onnx where ``tf2onnx`` is installed.
New weights are written beside the package's, checked against the package's own test outputs
with its tolerance, and only then is the rdf rewritten (through bioimageio.spec) to list them;
a conversion that does not reproduce leaves the package as it was.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .errors import EngineError, SourceError, SpecError, one_line
from .trust import Gate

ONNX_OPSET = 17
TARGETS = {"torchscript": "weights.torchscript.pt", "onnx": "weights.onnx"}


def torch_to_torchscript(module: Any, target: Path) -> Path:
    import torch

    try:
        scripted = torch.jit.script(module.eval())
    except Exception as e:  # modules with Python-only constructs cannot be scripted
        raise EngineError(f"cannot convert to TorchScript: {one_line(e)}") from e
    scripted.save(str(target))
    return strip_torchscript_debug_info(target)


def strip_torchscript_debug_info(path: Path) -> Path:
    """Rewrite a TorchScript archive without its ``*.debug_pkl`` records, in place.

    Those records hold the source ranges of every scripted line, with the absolute paths of the
    Python files on the machine that scripted it (``/home/me/.venv/lib/.../torch/nn/...``): a
    shared package should not carry them. TorchScript loads and runs the same without them (only
    its error messages lose their source lines); torch.jit.save has no option to leave them out.
    """
    import zipfile

    path = Path(path)
    tmp = path.with_name(f".{path.name}.strip")
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                if not info.filename.endswith(".debug_pkl"):
                    dst.writestr(info, src.read(info))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def torch_to_onnx(module: Any, example: np.ndarray, target: Path) -> Path:
    """Export with the space axes (and batch) dynamic, so any valid tile size runs."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    dims = {0: "batch", **{i: f"s{i}" for i in range(2, x.ndim)}}
    try:
        torch.onnx.export(module.eval(), (x,), str(target), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": dims, "output": dims}, opset_version=ONNX_OPSET, dynamo=False)
    except Exception as e:
        raise EngineError(f"cannot convert to ONNX: {one_line(e)}") from e
    return target


def keras_to_onnx(path: Path, target: Path) -> Path:
    try:
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise EngineError("converting Keras weights to ONNX needs tf2onnx: pip install tf2onnx") from e
    import keras
    import tensorflow as tf

    model = keras.models.load_model(str(path), compile=False)
    spec = [tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), tf.float32, name="input")]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET, output_path=str(target))
    return target


def convert(source: Union[str, os.PathLike], to: str, trust: Optional[bool] = None) -> Path:
    """Add ``to`` (``torchscript`` or ``onnx``) weights to a local package folder; return its rdf.

    ``trust``: as in :func:`dlmodel.load` (a state dict's architecture file is package code).
    Raises EngineError (and changes nothing) when the new weights do not reproduce the
    package's test outputs within its tolerance."""
    from bioimageio.spec import save_bioimageio_yaml_only

    from . import api
    from .package import open_spec

    if to not in TARGETS:
        raise SpecError(f"cannot convert to {to!r}; use torchscript or onnx")
    spec, resolved = open_spec(source)
    if not resolved.local or str(resolved.rdf).endswith(".zip") or not os.access(spec.root, os.W_OK):
        raise SourceError(f"convert needs a package folder you can write to; {source} is not one (unpack it first)")
    if to in spec.weights:
        raise SpecError(f"{spec.name!r} already has {to} weights")
    if spec.format_version.startswith("0.4"):
        raise SpecError(f"{spec.name!r} is a format {spec.format_version} rdf ({spec.format_note}); "
                        "convert writes format 0.5, so it cannot add weights to it")
    target = spec.root / TARGETS[to]
    if target.exists():
        raise SpecError(f"{target} exists but the rdf does not list it; remove it first")
    trial = spec.root / ".bioimageio.yaml.part"
    test_input = np.load(spec.inputs[0].test_tensor) if spec.inputs[0].test_tensor else None
    try:
        gate = Gate.decide(spec.name, spec.root, spec.rdf_sha256, resolved.kind, trust)
        entry = _convert_weights(spec, to, target, test_input, gate)
        from bioimageio.spec import ValidationContext

        with ValidationContext(root=spec.root, perform_io_checks=False):
            new_weights = spec.descr.weights.model_copy(update={to: entry(TARGETS[to], target)})
        save_bioimageio_yaml_only(spec.descr.model_copy(update={"weights": new_weights}), trial)
        # the new weights go through the whole pipeline before the rdf says they exist
        from .package import view
        from .spec import read_description

        checked = view(read_description(trial), spec.rdf_path)
        report = api.Model(checked, engine=to, device="cpu").test()
        if not report.ok:
            raise EngineError(f"{to} weights do not reproduce the test outputs; package unchanged: {report.summary()}")
        os.replace(trial, spec.rdf_path)
    except BaseException:
        target.unlink(missing_ok=True)
        trial.unlink(missing_ok=True)
        raise
    from .outputs import note_written

    note_written(spec.root, [target, spec.rdf_path])  # a package dlmodel wrote stays replaceable by --overwrite
    return spec.rdf_path


def _convert_weights(spec: Any, to: str, tmp: Path, test_input: Any, gate: Gate):
    """Write the converted weights to ``tmp``; return a function making the rdf entry."""
    import bioimageio.spec.model.v0_5 as v

    from .spec import sha256_file

    if to == "torchscript" or "torchscript" not in spec.weights:
        module = _torch_module(spec, gate)
    else:
        module = None
    if to == "torchscript":
        if module is None:
            raise EngineError(f"{spec.name!r} has no pytorch_state_dict weights to make TorchScript from")
        torch_to_torchscript(module, tmp)
        import torch

        return lambda name, path: v.TorchscriptWeightsDescr(
            source=name, sha256=sha256_file(path), pytorch_version=v.Version(torch.__version__.split("+")[0]),
            parent="pytorch_state_dict")
    # onnx: from TorchScript, else the state dict, else Keras
    if "torchscript" in spec.weights or module is not None:
        import torch

        src = torch.jit.load(str(spec.weight_paths["torchscript"])) if module is None else module
        if test_input is None:
            raise SpecError(f"{spec.name!r} has no test input to trace the ONNX export with")
        torch_to_onnx(src, test_input, tmp)
        parent = "torchscript" if module is None else "pytorch_state_dict"
    elif "keras_v3" in spec.weights or "keras_hdf5" in spec.weights:
        fmt = "keras_v3" if "keras_v3" in spec.weights else "keras_hdf5"
        keras_to_onnx(spec.weight_paths[fmt], tmp)
        parent = fmt
    else:
        raise EngineError(f"{spec.name!r} has no PyTorch or Keras weights to make ONNX from")
    return lambda name, path: v.OnnxWeightsDescr(source=name, sha256=sha256_file(path), opset_version=ONNX_OPSET,
                                                 parent=parent)


def _torch_module(spec: Any, gate: Gate) -> Any:
    if "pytorch_state_dict" not in spec.weights:
        return None
    from .engines import PytorchStateDictEngine

    return PytorchStateDictEngine(spec, device="cpu", gate=gate).module
