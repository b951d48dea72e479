"""Tiny real models, packaged as real BioImage Model Zoo packages for the tests.

Every package's rdf is built from bioimageio.spec's own classes (so it is validated as it is
made) and written with ``save_bioimageio_yaml_only``. Test outputs come from the reference
implementation, bioimageio.core, run on the package itself (or, for TF/Keras packages without
processing, from the framework itself), so ``dlmodel test`` passing means matching them.
"""
from __future__ import annotations

import csv
import hashlib
import shutil
import textwrap
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

ARCH_SOURCE = textwrap.dedent(
    '''
    import torch


    class TinyConv(torch.nn.Module):
        """Two 3x3 convolutions: translation-equivariant, receptive radius 2 (halo 2 is exact)."""

        def __init__(self, c_in: int = 1, c_out: int = 1, ndim: int = 2, upsample: int = 1):
            super().__init__()
            conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
            self.c1 = conv(c_in, 4, 3, padding=1)
            self.c2 = conv(4, c_out, 3, padding=1)
            self.up = torch.nn.Upsample(scale_factor=upsample, mode="nearest") if upsample > 1 else None

        def forward(self, x):
            y = self.c2(torch.relu(self.c1(x)))
            return self.up(y) if self.up is not None else y


    class Passthrough(torch.nn.Module):
        """Output = input (a stand-in for a network whose outputs the test computes itself)."""

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.scale


    class TwoInTwoOut(torch.nn.Module):
        """Inputs a (1 channel) and b (2 channels); outputs sum (1 channel) and pair (2 channels)."""

        def __init__(self):
            super().__init__()
            self.net = TinyConv(3, 3)

        def forward(self, a, b):
            y = self.net(torch.cat([a, b], dim=1))
            return y[:, :1], y[:, 1:]


    class ThreeIn(torch.nn.Module):
        """Three inputs (2, 1, 1 channels) -> outputs of 1, 2 and 3 channels."""

        def __init__(self):
            super().__init__()
            self.net = TinyConv(4, 6)

        def forward(self, x1, x2, x3):
            y = self.net(torch.cat([x1, x2, x3], dim=1))
            return y[:, :1], y[:, 1:3], y[:, 3:]
    '''
)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_descr(folder: Path, name: str):
    from bioimageio.spec.model.v0_5 import FileDescr

    return FileDescr(source=name, sha256=sha256(folder / name))


def _arch_module(folder: Path):
    import importlib.util
    import sys

    path = folder / "tiny_arch.py"
    path.write_text(ARCH_SOURCE)
    name = f"tiny_arch_{abs(hash(str(folder)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def torch_weights(folder: Path, module, example: Sequence[np.ndarray], formats: Sequence[str], arch: Optional[dict] = None) -> dict:
    """Save a torch module as state dict / TorchScript / ONNX; return WeightsDescr kwargs."""
    import torch
    from bioimageio.spec.model.v0_5 import (
        Version,
    )

    from bioimageio.spec import ValidationContext

    module.eval()
    with ValidationContext(root=folder, perform_io_checks=False):
        return _torch_weights(folder, module, example, formats, arch, Version(torch.__version__.split("+")[0]))


def _torch_weights(folder, module, example, formats, arch, tv) -> dict:
    import torch
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        OnnxWeightsDescr,
        PytorchStateDictWeightsDescr,
        TorchscriptWeightsDescr,
    )

    xs = tuple(torch.from_numpy(np.ascontiguousarray(e, dtype=np.float32)) for e in example)
    out = {}
    if "pytorch_state_dict" in formats:
        torch.save(module.state_dict(), folder / "weights_state.pt")
        out["pytorch_state_dict"] = PytorchStateDictWeightsDescr(
            source="weights_state.pt",
            sha256=sha256(folder / "weights_state.pt"),
            architecture=ArchitectureFromFileDescr(
                source="tiny_arch.py", sha256=sha256(folder / "tiny_arch.py"),
                callable=arch["callable"], kwargs=arch.get("kwargs", {}),
            ),
            pytorch_version=tv,
        )
    if "torchscript" in formats:
        traced = torch.jit.script(module)
        traced.save(str(folder / "weights.torchscript.pt"))
        out["torchscript"] = TorchscriptWeightsDescr(
            source="weights.torchscript.pt", sha256=sha256(folder / "weights.torchscript.pt"), pytorch_version=tv
        )
    if "onnx" in formats:
        names = [f"in{i}" for i in range(len(xs))]
        n_out = len(module(*xs)) if isinstance(module(*xs), (tuple, list)) else 1
        dyn = {n: {0: "b", 2: "h", 3: "w"} if xs[i].ndim == 4 else {0: "b", 2: "d", 3: "h", 4: "w"} for i, n in enumerate(names)}
        onames = [f"out{i}" for i in range(n_out)]
        for i, o in enumerate(onames):
            dyn[o] = {0: "b", 2: "h", 3: "w"}
        torch.onnx.export(module, xs, str(folder / "weights.onnx"), input_names=names, output_names=onames,
                          dynamic_axes=dyn, opset_version=17, dynamo=False)
        out["onnx"] = OnnxWeightsDescr(source="weights.onnx", sha256=sha256(folder / "weights.onnx"), opset_version=17)
    return out


def build(
    folder: Path,
    name: str,
    make_inputs: Callable[[Callable[[str], object]], list],
    make_outputs: Callable[[Callable[[str], object]], list],
    weights: dict,
    test_inputs: Dict[str, np.ndarray],
    reference: Optional[Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]] = None,
    reference_format: Optional[str] = None,
    config: Optional[dict] = None,
    attachments: Sequence[str] = (),
) -> Path:
    """Write test tensors, compute test outputs, and write a validated bioimageio.yaml.

    ``make_inputs(test_file)`` / ``make_outputs(test_file)`` build the tensor descriptions;
    ``test_file(tensor_id)`` gives the FileDescr of that tensor's test .npy."""
    from bioimageio.spec import ValidationContext, save_bioimageio_yaml_only
    from bioimageio.spec.model.v0_5 import Author, CiteEntry, ModelDescr, WeightsDescr

    folder.mkdir(parents=True, exist_ok=True)
    for tid, arr in test_inputs.items():
        np.save(folder / f"test_{tid}.npy", arr)

    def make_descr():
        with ValidationContext(root=folder, perform_io_checks=False):
            test_file = lambda tid: file_descr(folder, f"test_{tid}.npy")  # noqa: E731
            (folder / "README.md").write_text(f"# {name}\nA tiny model made by the dlmodel tests.\n")
            return ModelDescr(
                name=name,
                description=f"{name}: a tiny test model",
                authors=[Author(name="dlmodel tests")],
                cite=[CiteEntry(text="dlmodel tests", doi="10.5281/zenodo.0000000")],
                license="MIT",
                documentation=file_descr(folder, "README.md"),
                inputs=make_inputs(test_file),
                outputs=make_outputs(test_file),
                weights=WeightsDescr(**weights),
                config=config or {},
                **({"attachments": [file_descr(folder, a) for a in attachments]} if attachments else {}),
            )

    # placeholders so the first descr validates; replaced by the reference outputs below
    for placeholder in (str(o.id) for o in make_outputs(lambda tid: None)):
        np.save(folder / f"test_{placeholder}.npy", np.zeros((1,), np.float32))
    descr = make_descr()
    if reference is not None:
        outs = reference(test_inputs)
    else:
        outs = core_predict(descr, test_inputs, reference_format)
    for tid, arr in outs.items():
        np.save(folder / f"test_{tid}.npy", arr)
    descr = make_descr()
    rdf = folder / "bioimageio.yaml"
    save_bioimageio_yaml_only(descr, rdf)
    return rdf


def core_predict(descr, inputs: Dict[str, np.ndarray], weight_format: Optional[str] = None) -> Dict[str, np.ndarray]:
    """bioimageio.core's output for the test inputs (the reference implementation).

    bioimageio.core 0.11 computes every statistic before the forward pass, so it cannot run
    post-processing that needs statistics of an output (it fails with a KeyError). Such
    outputs get that post-processing from core's own op classes afterwards, with statistics
    from core's own calculators over the raw inputs and the raw outputs."""
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline
    from bioimageio.core.proc_ops import get_proc
    from bioimageio.core.stat_calculators import compute_sample_measures

    def stats_post(o) -> bool:
        return hasattr(o, "id") and any(getattr(p, "id", "") in ("zero_mean_unit_variance", "scale_range",
                                                                   "scale_mean_variance") for p in o.postprocessing)

    # a deep copy only when needed: it validates a 0.4 architecture file again, outside its folder
    stripped = descr.model_copy(deep=True) if any(stats_post(o) for o in descr.outputs) else descr
    deferred = {}
    for o in stripped.outputs:
        if stats_post(o):
            deferred[str(o.id)] = (o.model_copy(), list(o.postprocessing))
            o.postprocessing = []
    pp = create_prediction_pipeline(stripped, weight_format=weight_format)
    from bioimageio.core.digest_spec import get_axes_infos, get_member_id

    members = {}
    for t in descr.inputs:  # format 0.4 or 0.5
        tid = str(get_member_id(t))
        members[tid] = Tensor.from_numpy(inputs[tid], dims=tuple(str(a.id) for a in get_axes_infos(t)))
    sample = Sample(members=dict(members), stat={}, id="test")
    # as bioimageio.core's own test_model runs test tensors: no halo padding, no cropping
    out = pp.predict_sample_without_blocking(sample, skip_input_padding=True, skip_output_cropping=True)
    for oid, (tensor_descr, ops) in deferred.items():
        both = Sample(members={**members, **out.members}, stat={}, id="test")
        for proc_descr in ops:
            op = get_proc(proc_descr, tensor_descr)
            both.stat.update(compute_sample_measures(op.required_measures, both))
            op(both)
        out.members[oid] = both.members[oid]
    return {str(k): v.data.to_numpy() for k, v in out.members.items()}


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """A CSV table of ``rows`` (dicts with the same keys), as CellProfiler and dlmodel plate write them."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return target


def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def build_v0_4(folder: Path, name: str, module, inputs: Sequence[dict], outputs: Sequence[dict],
               test_inputs: Dict[str, np.ndarray], kwargs: Optional[dict] = None, callable_name: str = "TinyConv",
               config: Optional[dict] = None) -> Path:
    """A format 0.4 package (as a 0.4 exporter writes one) with a state dict from the tiny
    architecture file: the rdf written as YAML and validated by bioimageio.spec as 0.4, its
    test outputs from bioimageio.core run on it. ``inputs``/``outputs``: 0.4 tensor dicts
    (name, axes, shape, ...) without test files."""
    import torch
    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr
    from ruyaml import YAML

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), folder / "weights.pt")
    (folder / "README.md").write_text(f"# {name}\nA tiny format 0.4 model made by the dlmodel tests.\n")
    for tid, arr in test_inputs.items():
        np.save(folder / f"test_{tid}.npy", arr)
    out_names = [o["name"] for o in outputs]
    for o in out_names:
        np.save(folder / f"test_{o}.npy", np.zeros((1,), np.float32))
    rdf = folder / "rdf.yaml"
    data = dict(
        format_version="0.4.10", type="model", name=name, description=f"{name}: a tiny 0.4 test model",
        authors=[{"name": "dlmodel tests"}], cite=[{"text": "dlmodel tests", "doi": "10.5281/zenodo.0000000"}],
        license="MIT", documentation="README.md", timestamp="2021-09-12T14:04:52",
        inputs=[dict(data_range=[-1e30, 1e30], data_type="float32", **t) for t in inputs],
        outputs=[dict(data_range=[-1e30, 1e30], data_type="float32", **t) for t in outputs],
        test_inputs=[f"test_{t['name']}.npy" for t in inputs],
        test_outputs=[f"test_{o}.npy" for o in out_names],
        config=config or {},
        weights={"pytorch_state_dict": {
            "source": "weights.pt", "sha256": sha256(folder / "weights.pt"),
            "architecture": f"tiny_arch.py:{callable_name}",
            "architecture_sha256": sha256(folder / "tiny_arch.py"), "kwargs": kwargs or {},
            "pytorch_version": torch.__version__.split("+")[0]}},
    )

    def write_and_read():
        with open(rdf, "w") as f:
            YAML(typ="safe", pure=True).dump(data, f)
        descr = load_description(rdf, perform_io_checks=False, format_version="discover")
        assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
        return descr

    outs = core_predict(write_and_read(), test_inputs)
    for tid, arr in outs.items():
        np.save(folder / f"test_{tid}.npy", arr)
    write_and_read()
    return rdf
