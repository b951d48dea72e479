"""Bundle a trained network as a BioImage Model Zoo package (format 0.5), like deepImageJ's
"bundled models": weights, an rdf written through bioimageio.spec, test tensors made by running
the model on a sample, a cover image and a README.

Everything is assembled in a temporary folder next to the target and moved into place only
when the package validates and reproduces its own test outputs, so a failure writes nothing.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DLModelError, EngineError, SpecError, one_line
from .outputs import PACKAGE_MARKER, check_replaceable, marker_text, replace

PathLike = Union[str, os.PathLike]
TEST_SIDE = 256


@dataclass
class Architecture:
    """Where a PyTorch module's class lives: a .py file shipped in the package, its callable
    and the keyword arguments to build it."""

    source: PathLike
    callable: str
    kwargs: Dict[str, Any] = field(default_factory=dict)


def _weights_kind(weights: Any) -> str:
    if isinstance(weights, (str, os.PathLike)):
        suffix = Path(weights).suffix.lower()
        kinds = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".torchscript": "torchscript",
                 ".keras": "keras_v3", ".h5": "keras_hdf5", ".hdf5": "keras_hdf5"}
        if suffix not in kinds:
            raise SpecError(f"weights file {weights}: unknown kind {suffix!r} (use .onnx, .pt (TorchScript), .keras or .h5)")
        if not Path(weights).is_file():
            raise SpecError(f"weights file {weights} does not exist")
        return kinds[suffix]
    mod = type(weights).__module__
    if mod.startswith("torch") or any(c.__module__.startswith("torch.nn") for c in type(weights).__mro__):
        return "torch_module"
    if mod.startswith("keras") or any(c.__module__.startswith("keras") for c in type(weights).__mro__):
        return "keras_model"
    raise SpecError(f"cannot package weights of type {type(weights).__name__}: give a torch module, a Keras model, "
                    "or a .onnx / TorchScript .pt / .keras / .h5 file")


def _processing(items: Sequence[Any], kind: str) -> List[Any]:
    """Spec processing descriptions from spec objects or plain dicts ({"id": ..., "kwargs": ...})."""
    from pydantic import TypeAdapter, ValidationError

    import bioimageio.spec.model.v0_5 as v

    adapter = TypeAdapter(v.PreprocessingDescr if kind == "pre" else v.PostprocessingDescr)
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            out.append(item)
            continue
        try:
            out.append(adapter.validate_python(dict(item)))
        except ValidationError as e:
            first = e.errors()[0]
            raise SpecError(f"{kind}processing {dict(item).get('id')!r}: {first['msg']}") from e
    return out


def package(
    weights: Any,
    sample: np.ndarray,
    out: PathLike,
    *,
    name: str,
    description: str,
    authors: Sequence[Union[str, Mapping[str, str]]],
    license: str = "MIT",
    cite: Sequence[Mapping[str, str]] = (),
    tags: Sequence[str] = (),
    sample_axes: str = "yx",
    preprocessing: Sequence[Any] = (),
    postprocessing: Sequence[Any] = (),
    architecture: Optional[Architecture] = None,
    formats: Sequence[str] = ("pytorch_state_dict", "torchscript", "onnx"),
    input_id: str = "raw",
    output_id: str = "prediction",
    output_channel_names: Optional[Sequence[str]] = None,
    size: Union[int, Tuple[int, int]] = (16, 16),
    halo: int = 0,
    output_scale: float = 1.0,
    instances: Optional[Dict[str, Any]] = None,
    documentation: Optional[str] = None,
    version: Optional[str] = None,
    parent: Optional[str] = None,
    config: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    """Write a zoo package (a folder, or a ``.zip`` when ``out`` ends so) and return its rdf path.

    Args:
        weights: a ``torch.nn.Module`` (with ``architecture`` for its state dict; TorchScript
            and ONNX are exported too, see ``formats``), a Keras model, or a file: ``.onnx``,
            TorchScript ``.pt``, ``.keras``, ``.h5``.
        sample: an image with ``sample_axes`` (``yx`` or ``cyx``): the test input, cropped to a
            size the model accepts. Keras models get channel-last tensors.
        preprocessing / postprocessing: spec ops, as bioimageio.spec objects or dicts such as
            ``{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "max_percentile": 99.8}}``.
        size: a fixed side length, or ``(min, step)`` for any ``min + n*step``.
        halo: output pixels to crop on each side of a tile.
        output_scale: input pixels per output pixel along y and x (2 for a network that, as
            StarDist's, predicts on a grid of every 2nd pixel); the rdf declares the output's size
            as the input's divided by it.
        instances: a recipe to turn the output into objects (stored in the rdf's ``config``;
            see :func:`dlmodel.instances.from_recipe`).
        parent: the zoo id of the model this one derives from (the rdf's ``parent``).
        config: more facts for the rdf's ``config: dlmodel`` (``dlmodel finetune`` puts its
            training facts there), beside the recipe.
        cite: ``[{"text": ..., "doi": ...}]`` or with ``"url"``.
    """
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise SpecError(f"{out} exists; pass overwrite=True (or --overwrite) to replace it")
    check_replaceable(out, [p for p in (weights, sample) if isinstance(p, (str, os.PathLike))])
    kind = _weights_kind(weights)
    sample = np.asarray(sample)
    if sample.ndim != len(sample_axes) or set(sample_axes) - set("cyx") or not {"y", "x"} <= set(sample_axes):
        raise SpecError(f"sample has shape {sample.shape}; sample_axes {sample_axes!r} must be yx or cyx and match it")
    pre = _processing(preprocessing, "pre")
    post = _processing(postprocessing, "post")
    folder = out.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # -o under a file (weights.pt/pkg), or no permission: one line
        raise SpecError(f"cannot make the folder of {out}: {e.strerror or e}") from e
    work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=folder))
    try:
        about = About(name=name, description=description, authors=tuple(authors), license=license, cite=tuple(cite),
                      tags=tuple(tags), documentation=documentation, version=version, sample_axes=sample_axes,
                      preprocessing=tuple(pre), postprocessing=tuple(post), architecture=architecture,
                      formats=tuple(formats), input_id=input_id, output_id=output_id,
                      output_channel_names=None if output_channel_names is None else tuple(output_channel_names),
                      size=size, halo=halo, output_scale=float(output_scale), instances=instances, parent=parent,
                      config=dict(config) if config else None)
        rdf = _assemble(work, kind, weights, sample, about)
        # every file with its sha256: --overwrite later replaces the package only if nothing was added or changed
        (work / PACKAGE_MARKER).write_text(marker_text("dlmodel package" if parent is None else "dlmodel finetune", work))
        return _move_into_place(work, rdf, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class About:
    """Everything :func:`package` is told about the package besides the weights and the sample:
    its metadata, its tensors' layout and processing, and its recipe for objects."""

    name: str
    description: str
    authors: Tuple[Union[str, Mapping[str, str]], ...]
    license: str = "MIT"
    cite: Tuple[Mapping[str, str], ...] = ()
    tags: Tuple[str, ...] = ()
    documentation: Optional[str] = None
    version: Optional[str] = None
    sample_axes: str = "yx"
    preprocessing: Tuple[Any, ...] = ()
    postprocessing: Tuple[Any, ...] = ()
    architecture: Optional[Architecture] = None
    formats: Tuple[str, ...] = ("pytorch_state_dict", "torchscript", "onnx")
    input_id: str = "raw"
    output_id: str = "prediction"
    output_channel_names: Optional[Tuple[str, ...]] = None
    size: Union[int, Tuple[int, int]] = (16, 16)
    halo: int = 0
    output_scale: float = 1.0
    instances: Optional[Dict[str, Any]] = None
    parent: Optional[str] = None
    config: Optional[Dict[str, Any]] = None


def _assemble(work: Path, kind: str, weights: Any, sample: np.ndarray, about: About) -> Path:
    import bioimageio.spec.model.v0_5 as v

    sample_axes, pre, post = about.sample_axes, list(about.preprocessing), list(about.postprocessing)
    input_id, output_id, size, halo = about.input_id, about.output_id, about.size, about.halo
    meta = _metadata(about.name, about.description, about.authors, about.license, about.cite, about.tags,
                     about.documentation, work)
    channel_last = kind in ("keras_model", "keras_v3", "keras_hdf5")
    x = sample if "c" in sample_axes else sample[np.newaxis]
    if sample_axes.startswith(("y", "x")) and "c" in sample_axes:
        x = np.moveaxis(sample, sample_axes.index("c"), 0)
    if sample_axes.index("y") > sample_axes.index("x"):
        x = np.swapaxes(x, -1, -2)
    n_channels = x.shape[0]
    smin, step = (size, 0) if isinstance(size, int) else size
    # test tensors ship in the package: a corner of the sample, at most 256 pixels a side
    x = x[:, : max(TEST_SIDE, smin), : max(TEST_SIDE, smin)]
    x = _valid_sample(x.astype(np.float32), smin, step)
    batch = x[None] if not channel_last else np.moveaxis(x, 0, -1)[None]
    weight_entries, n_out = _write_weights(work, kind, weights, batch, about.architecture, about.formats)
    out_names = list(about.output_channel_names or [f"c{i}" for i in range(n_out)])
    if len(out_names) != n_out:
        raise SpecError(f"output_channel_names gives {len(out_names)} names; the model outputs {n_out} channel(s)")

    def space(axis_id):
        ax = v.AxisId(axis_id)
        sz = smin if step == 0 else v.ParameterizedSize(min=smin, step=step)
        return v.SpaceInputAxis(id=ax, size=sz)

    def out_space(axis_id):
        ref = v.SizeReference(tensor_id=v.TensorId(input_id), axis_id=v.AxisId(axis_id))
        scale = about.output_scale  # output size = input size * input scale (1) / output scale
        if halo:
            return v.SpaceOutputAxisWithHalo(id=v.AxisId(axis_id), halo=halo, size=ref, scale=scale)
        return v.SpaceOutputAxis(id=v.AxisId(axis_id), size=ref, scale=scale)

    in_channel = v.ChannelAxis(channel_names=[v.Identifier(f"channel{i}") for i in range(n_channels)])
    out_channel = v.ChannelAxis(channel_names=[v.Identifier(n) for n in out_names])
    in_axes = [v.BatchAxis(), in_channel, space("y"), space("x")]
    out_axes = [v.BatchAxis(), out_channel, out_space("y"), out_space("x")]
    if channel_last:
        in_axes = [in_axes[0], in_axes[2], in_axes[3], in_axes[1]]
        out_axes = [out_axes[0], out_axes[2], out_axes[3], out_axes[1]]

    np.save(work / f"test_{input_id}.npy", batch)
    np.save(work / f"test_{output_id}.npy", np.zeros(1, np.float32))  # replaced below

    def build(with_cover: bool):
        from bioimageio.spec import ValidationContext

        from .spec import sha256_file

        def fd(fname):
            return v.FileDescr(source=fname, sha256=sha256_file(work / fname))

        config: Dict[str, Any] = {}
        if about.config:
            config["dlmodel"] = dict(about.config)
        if about.instances:
            config["dlmodel"] = {**config.get("dlmodel", {}), "instances": {"output": output_id, **about.instances}}
        extra = {"parent": v.LinkedModel(id=v.ModelId(about.parent))} if about.parent else {}
        try:
            with ValidationContext(root=work, perform_io_checks=False):
                return v.ModelDescr(
                    **meta,
                    documentation=fd("README.md"),
                    covers=[fd("cover.png")] if with_cover else [],
                    inputs=[v.InputTensorDescr(id=v.TensorId(input_id), axes=in_axes, test_tensor=fd(f"test_{input_id}.npy"),
                                               preprocessing=pre)],
                    outputs=[v.OutputTensorDescr(id=v.TensorId(output_id), axes=out_axes, test_tensor=fd(f"test_{output_id}.npy"),
                                                 postprocessing=post)],
                    weights=v.WeightsDescr(**{k: _entry(v, k, e, work) for k, e in weight_entries.items()}),
                    config=v.Config(**config),
                    **({"version": about.version} if about.version else {}),
                    **extra,
                )
        except Exception as e:  # pydantic ValidationError from bad metadata
            raise SpecError(f"invalid model description: {_pydantic_first(e)}") from e

    descr = build(with_cover=False)  # bad metadata fails here, before anything is kept
    from .api import Model
    from .package import view

    rdf = work / "bioimageio.yaml"
    from bioimageio.spec import save_bioimageio_yaml_only

    save_bioimageio_yaml_only(descr, rdf)
    spec = view(descr, rdf)
    try:
        model = Model(spec, engine=next(iter(weight_entries)), device="cpu")
        # whole, no halo: the test output is made as Model.test will check it
        outs = model._run_test(model.engine, {input_id: batch}, tile=False)
    except DLModelError as e:
        raise EngineError(f"the model does not run on the sample: {e}") from e
    result = outs[output_id]
    np.save(work / f"test_{output_id}.npy", result)
    _cover(work / "cover.png", batch, result, channel_last)
    descr = build(with_cover=True)
    save_bioimageio_yaml_only(descr, rdf)
    return rdf


def _metadata(name, description, authors, license, cite, tags, documentation, work) -> Dict[str, Any]:
    import bioimageio.spec.model.v0_5 as v

    if not name or not str(name).strip():
        raise SpecError("invalid model description: name: a name is required")
    if not authors:
        raise SpecError("invalid model description: authors: at least one author is required")
    if not all(isinstance(a, (str, Mapping)) for a in authors):
        raise SpecError("invalid model description: authors: give names or {'name': ..., 'affiliation': ...}")
    try:  # bioimageio.spec validates each author and citation as it builds it
        people = [v.Author(**a) if isinstance(a, Mapping) else v.Author(name=str(a)) for a in authors]
        cites = [v.CiteEntry(**dict(c)) for c in cite] or [v.CiteEntry(text=f"{name}", url="https://bioimage.io")]
    except Exception as e:
        raise SpecError(f"invalid model description: {_pydantic_first(e)}") from e
    text = documentation or f"# {name}\n\n{description}\n"
    (work / "README.md").write_text(_readme(text, name, description, authors, license, cites))
    return {"name": name, "description": description, "authors": people, "cite": cites, "license": license,
            "tags": list(tags)}


def _readme(text: str, name: str, description: str, authors, license: str, cites) -> str:
    if text.lstrip().startswith("#"):
        return text
    who = ", ".join(a if isinstance(a, str) else a.get("name", "") for a in authors)
    refs = "\n".join(f"- {c.text}" for c in cites)
    return f"# {name}\n\n{description}\n\n{text}\n\nAuthors: {who}. Licence: {license}.\n\n## Cite\n{refs}\n"


def _entry(v, kind: str, e: Dict[str, Any], work: Path):
    from .spec import sha256_file

    common = {"source": e["file"], "sha256": sha256_file(work / e["file"])}
    if kind == "onnx":
        return v.OnnxWeightsDescr(**common, opset_version=e["opset"])
    if kind == "torchscript":
        return v.TorchscriptWeightsDescr(**common, pytorch_version=v.Version(e["version"]))
    if kind == "pytorch_state_dict":
        arch = e["architecture"]
        return v.PytorchStateDictWeightsDescr(
            **common, pytorch_version=v.Version(e["version"]),
            architecture=v.ArchitectureFromFileDescr(source=arch["file"], sha256=sha256_file(work / arch["file"]),
                                                     callable=arch["callable"], kwargs=arch["kwargs"]))
    if kind == "keras_v3":
        return v.KerasV3WeightsDescr(**common, keras_version=v.Version(e["version"]), backend=("tensorflow", v.Version(e["tf"])))
    if kind == "keras_hdf5":
        return v.KerasHdf5WeightsDescr(**common, tensorflow_version=v.Version(e["tf"]))
    raise SpecError(f"unknown weights kind {kind}")


def _write_weights(work: Path, kind: str, weights: Any, batch: np.ndarray, architecture: Optional[Architecture],
                   formats: Sequence[str]) -> Tuple[Dict[str, Dict[str, Any]], int]:
    """Write weight files into ``work``; return their entries (in preference order) and the
    number of output channels."""
    entries: Dict[str, Dict[str, Any]] = {}
    if kind == "onnx":
        shutil.copy(weights, work / "weights.onnx")
        import onnx  # noqa: F401  (only to read the opset)

        model = onnx.load(str(work / "weights.onnx"))
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=17)
        entries["onnx"] = {"file": "weights.onnx", "opset": opset}
    elif kind == "torchscript":
        import torch

        shutil.copy(weights, work / "weights.torchscript.pt")
        entries["torchscript"] = {"file": "weights.torchscript.pt", "version": torch.__version__.split("+")[0]}
    elif kind == "torch_module":
        import torch

        tv = torch.__version__.split("+")[0]
        module = weights.eval()
        try:  # before any export: a model that cannot run on the sample gets a plain error
            with torch.inference_mode():
                y = module(torch.from_numpy(batch))
            n_out = int((y[0] if isinstance(y, (tuple, list)) else y).shape[1])
        except Exception as e:
            first = one_line(e)
            raise EngineError(f"the model does not run on the sample (shape {batch.shape}): {first}") from e
        unknown = set(formats) - {"pytorch_state_dict", "torchscript", "onnx"}
        if unknown:
            raise SpecError(f"formats {sorted(unknown)} cannot be written from a torch module")
        if "onnx" in formats:
            from .converters import torch_to_onnx

            torch_to_onnx(module, batch, work / "weights.onnx")
            entries["onnx"] = {"file": "weights.onnx", "opset": 17}
        if "torchscript" in formats:
            from .converters import torch_to_torchscript

            torch_to_torchscript(module, work / "weights.torchscript.pt")
            entries["torchscript"] = {"file": "weights.torchscript.pt", "version": tv}
        if "pytorch_state_dict" in formats:
            if architecture is None:
                raise SpecError("a torch module's state dict needs architecture=Architecture(file, callable, kwargs)")
            arch_file = Path(architecture.source)
            if not arch_file.is_file():
                raise SpecError(f"architecture file {arch_file} does not exist")
            shutil.copy(arch_file, work / arch_file.name)
            torch.save(module.state_dict(), work / "weights_state.pt")
            entries["pytorch_state_dict"] = {"file": "weights_state.pt", "version": tv, "architecture": {
                "file": arch_file.name, "callable": architecture.callable, "kwargs": dict(architecture.kwargs)}}
    elif kind in ("keras_model", "keras_v3", "keras_hdf5"):
        import keras
        import tensorflow as tf

        if kind == "keras_model":
            weights.save(work / "weights.keras")
            kind = "keras_v3"
        else:
            shutil.copy(weights, work / ("weights.keras" if kind == "keras_v3" else "weights.h5"))
        entries[kind] = {"file": "weights.keras" if kind == "keras_v3" else "weights.h5",
                         "version": keras.__version__, "tf": tf.__version__}
    if kind != "torch_module":
        n_out = _count_output_channels(work, entries, batch)
    return entries, n_out


def _count_output_channels(work: Path, entries: Dict[str, Dict[str, Any]], batch: np.ndarray) -> int:
    """Run the first weights once, raw, through their engine, to learn the output's channel count."""
    from .engines import ENGINES
    from .trust import local_gate

    fmt = next(iter(entries))
    if fmt not in ("onnx", "torchscript", "keras_v3", "keras_hdf5"):
        raise EngineError(f"cannot run {fmt} weights to count output channels")
    try:
        # the packager's own weights: their code (Keras Lambda layers) is theirs
        with ENGINES[fmt](None, "cpu", gate=local_gate(work), path=work / entries[fmt]["file"]) as engine:
            y = engine.run([batch.astype(np.float32)])[0]
    except EngineError as e:
        raise EngineError(f"the model does not run on the sample (shape {batch.shape}): {e}") from e
    return int(y.shape[-1] if fmt.startswith("keras") else y.shape[1])


def _valid_sample(x: np.ndarray, smin: int, step: int) -> np.ndarray:
    """Crop (or reflect-pad) a cyx sample to the largest size the model accepts."""
    out = x
    for axis in (1, 2):
        n = out.shape[axis]
        if step == 0:
            target = smin
        else:
            target = smin if n < smin else smin + ((n - smin) // step) * step
        if n > target:
            out = np.take(out, np.arange(target), axis=axis)
        elif n < target:
            pad = [(0, 0)] * 3
            pad[axis] = (0, target - n)
            out = np.pad(out, pad, mode="reflect")
    return np.ascontiguousarray(out)


def _cover(path: Path, batch: np.ndarray, result: np.ndarray, channel_last: bool) -> None:
    """Input and output side by side, as the zoo shows models."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    img = batch[0, ..., 0] if channel_last else batch[0, 0]
    res = np.asarray(result, dtype=np.float32)
    res = res[0, ..., -1] if channel_last else res[0, -1]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=80)
    for ax, data, title in ((axes[0], img, "input"), (axes[1], res, "output")):
        ax.imshow(data, cmap="gray" if title == "input" else "magma")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _move_into_place(work: Path, rdf: Path, out: Path) -> Path:
    """Validate, test, then rename the finished folder (or write the zip) to ``out``."""
    from .api import load

    model = load(work)
    for fmt in model.spec.weights:  # every format: ONNX and TorchScript exports are checked too
        report = model.test(fmt)
        if not report.ok:
            raise EngineError(f"the package does not reproduce its own test outputs: {report.summary()}")
    if out.suffix.lower() == ".zip":
        from .io import atomic_path

        with atomic_path(out) as tmp_zip, zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(work.rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(work).as_posix())
        return out
    work.chmod(0o755)  # mkdtemp made it private; a package is for sharing
    replace(work, out)  # the old package (checked again: ours) is removed only once this one is in place
    work.mkdir()  # so the caller's cleanup has something to remove
    return out / rdf.name


def _pydantic_first(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()) if not str(p)[:1].isupper())
            return f"{loc}: {first.get('msg')}" if loc else str(first.get("msg"))
        except Exception:
            pass
    return one_line(e)
