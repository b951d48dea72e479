"""Shared fixtures: the shared zoo model and data, and tiny packages built once per session."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pytest

import zoo

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NUCLEI_MODEL = SHARED / "models" / "unet2d_nuclei_broad"
DSB_VAL = SHARED / "data" / "dsb2018_nuclei_val"


@contextlib.contextmanager
def dask_cluster(folder: Path, workers: int = 2, nanny: bool = True,
                 cwd: Path | None = None) -> Iterator[Tuple[str, List[subprocess.Popen]]]:
    """A real Dask scheduler on 127.0.0.1 and ``workers`` single-threaded workers, as processes;
    yields the scheduler's address and the processes (scheduler first). ``nanny=False``: killing
    a worker's process kills the worker itself, not a nanny that would restart it."""
    dask = Path(sys.executable).parent / "dask"
    sched_file = folder / "scheduler.json"
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(sched_file), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        worker = [str(dask), "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
        worker += ["--nworkers", "1"] if nanny else ["--no-nanny"]
        for _ in range(workers):
            procs.append(subprocess.Popen(worker, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache, and never reach the network."""
    os.environ["DLMODEL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("DLMODEL_HTTP_TIMEOUT", "5")
    # a zoo id or DOI must never resolve to the real internet in tests
    os.environ["DLMODEL_ZOO_URL"] = "http://127.0.0.1:9/{id}/rdf.yaml"
    os.environ["DLMODEL_ZENODO_API"] = "http://127.0.0.1:9/api"
    os.environ["DLMODEL_CATALOG_URL"] = "http://127.0.0.1:9/children"
    # the approved Python environments (dlmodel env add) are the tests' own, never the user's:
    # this Python, and the engine environment the CellProfiler 4.2.8 leg runs its models in
    os.environ["DLMODEL_CONFIG"] = str(tmp_path_factory.mktemp("config"))
    from dlmodel import approvals

    approvals.approve(os.environ.get("DLMODEL_ENGINE_PYTHON") or sys.executable, how="tests")
    if os.environ.get("DLMODEL_CAREAMICS_PYTHON"):  # the opt-in CAREamics tests' own environment
        approvals.approve(os.environ["DLMODEL_CAREAMICS_PYTHON"], how="tests")
    yield


@pytest.fixture(scope="session")
def cellprofiler_modules():
    """CellProfiler's modules and this plugin, registered once per test run.

    CellProfiler 5's ``fill_modules`` forgets plugins, and it never loads a plugin twice, so a second call in
    another test file would lose RunDLModel: fill once and let every file instantiate from the same registry.
    """
    pytest.importorskip("cellprofiler_core")
    import cellprofiler_core.preferences as prefs

    prefs.set_headless()
    prefs.set_plugin_directory(str(ROOT / "plugins"))
    from cellprofiler_core.utilities.core.modules import fill_modules, instantiate_module

    fill_modules()
    try:
        from cellprofiler_core.utilities.core.plugins import load_plugins
    except ImportError:  # CellProfiler 4: fill_modules loads the plugins itself
        pass
    else:
        load_plugins(modules_only=True)
    instantiate_module("RunDLModel")  # fails here, once, if the plugin does not load
    return instantiate_module


@pytest.fixture(scope="session")
def nuclei_model() -> Path:
    if not (NUCLEI_MODEL / "bioimageio.yaml").exists():
        pytest.skip("../shared/models/unet2d_nuclei_broad is not there")
    return NUCLEI_MODEL / "bioimageio.yaml"


def make_environment(folder: Path, base_python: str, block=(), approve=True) -> Path:
    """A real venv (made by ``base_python``) that sees ``base_python``'s packages and this
    project's src through a .pth file, with the modules in ``block`` not importable in it (as
    if not installed): an engine environment that lacks an engine, say. ``approve``: approved on
    this (test) machine by ``dlmodel env add``'s own check."""
    import subprocess

    subprocess.run([base_python, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    sites = subprocess.run([base_python, "-c", "import site; print('\\n'.join(site.getsitepackages()))"],
                           check=True, capture_output=True, text=True, timeout=120).stdout.split()
    lines = [str(ROOT / "src"), *sites]
    if block:
        lines.append("import sys; sys.modules.update({m: None for m in %r})" % (list(block),))
    site_dir = next((folder / "lib").glob("python*/site-packages"))
    (site_dir / "_dlmodel_test.pth").write_text("\n".join(lines) + "\n")
    if approve:
        from dlmodel import approvals

        approvals.approve(folder / "bin" / "python", how="tests")
    return folder / "bin" / "python"


def _rng(seed: int = 0):
    return np.random.default_rng(seed)


def _torch_module(folder: Path, name: str, *args, **kwargs):
    import torch

    mod = zoo._arch_module(folder)
    torch.manual_seed(0)
    return mod, getattr(mod, name)(*args, **kwargs)


@pytest.fixture(scope="session")
def torch2d(tmp_path_factory) -> Path:
    """2D, parameterized size (min 16, step 8), halo 2; state dict + TorchScript + ONNX;
    zero_mean_unit_variance then sigmoid, like the shared nuclei model."""
    import bioimageio.spec.model.v0_5 as v

    folder = tmp_path_factory.mktemp("torch2d")
    _, net = _torch_module(folder, "TinyConv")
    x = _rng().normal(10, 3, (1, 1, 64, 48)).astype(np.float32)
    weights = zoo.torch_weights(folder, net, [x], ["pytorch_state_dict", "torchscript", "onnx"], {"callable": "TinyConv"})

    def inputs(tf):
        return [v.InputTensorDescr(
            id=v.TensorId("raw"),
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("c0")]),
                  v.SpaceInputAxis(id=v.AxisId("y"), size=v.ParameterizedSize(min=16, step=8)),
                  v.SpaceInputAxis(id=v.AxisId("x"), size=v.ParameterizedSize(min=16, step=8))],
            test_tensor=tf("raw"),
            preprocessing=[v.ZeroMeanUnitVarianceDescr(kwargs=v.ZeroMeanUnitVarianceKwargs(axes=[v.AxisId("y"), v.AxisId("x")]))],
        )]

    def outputs(tf):
        return [v.OutputTensorDescr(
            id=v.TensorId("prob"),
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("p")]),
                  v.SpaceOutputAxisWithHalo(id=v.AxisId("y"), halo=2, size=v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=v.AxisId("y"))),
                  v.SpaceOutputAxisWithHalo(id=v.AxisId("x"), halo=2, size=v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=v.AxisId("x")))],
            test_tensor=tf("prob"),
            postprocessing=[v.SigmoidDescr()],
        )]

    return zoo.build(folder, "tiny torch 2d", inputs, outputs, weights, {"raw": x}, reference_format="torchscript")


# --- small helpers to describe axes -------------------------------------------------------------

def _v():
    import bioimageio.spec.model.v0_5 as v

    return v


def channel(names):
    v = _v()
    return v.ChannelAxis(channel_names=[v.Identifier(n) for n in names])


def space_in(axis_ids, min_=16, step=8):
    v = _v()
    return [v.SpaceInputAxis(id=v.AxisId(a), size=v.ParameterizedSize(min=min_, step=step)) for a in axis_ids]


def space_out(tensor_id, axis_ids, halo=0, scale=1.0):
    v = _v()
    ref = lambda a: v.SizeReference(tensor_id=v.TensorId(tensor_id), axis_id=v.AxisId(a))  # noqa: E731
    if halo:
        return [v.SpaceOutputAxisWithHalo(id=v.AxisId(a), halo=halo, size=ref(a), scale=scale) for a in axis_ids]
    return [v.SpaceOutputAxis(id=v.AxisId(a), size=ref(a), scale=scale) for a in axis_ids]


def _torch_package_files(tmp_path_factory, key: str, module: str, arrays, formats, **module_kwargs):
    """A fresh folder with a seeded tiny torch module's weights in ``formats``: (folder, weights)."""
    folder = tmp_path_factory.mktemp(key)
    _, net = _torch_module(folder, module, **module_kwargs)
    return folder, zoo.torch_weights(folder, net, list(arrays), formats)


def _one_in_one_out(tmp_path_factory, key: str, title: str, x: np.ndarray, in_axes, out_id: str, out_axes,
                    preprocessing=(), **module_kwargs) -> Path:
    """A TinyConv TorchScript package with one input ``raw`` and one output."""
    v = _v()
    folder, weights = _torch_package_files(tmp_path_factory, key, "TinyConv", [x], ["torchscript"], **module_kwargs)

    def inputs(tf):
        return [v.InputTensorDescr(id=v.TensorId("raw"), axes=in_axes, test_tensor=tf("raw"), preprocessing=list(preprocessing))]

    def outputs(tf):
        return [v.OutputTensorDescr(id=v.TensorId(out_id), axes=out_axes, test_tensor=tf(out_id))]

    return zoo.build(folder, title, inputs, outputs, weights, {"raw": x})


@pytest.fixture(scope="session")
def torch3d(tmp_path_factory) -> Path:
    """3D (bczyx), parameterized sizes, halo 2, TorchScript; scale_range preprocessing."""
    v = _v()
    x = _rng().normal(100, 20, (1, 1, 12, 20, 16)).astype(np.float32)
    scale = v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=[v.AxisId(a) for a in "zyx"], min_percentile=1, max_percentile=99.8))
    return _one_in_one_out(tmp_path_factory, "torch3d", "tiny torch 3d", x,
                           [v.BatchAxis(), channel(["c0"]), *space_in("zyx", 8, 4)], "out",
                           [v.BatchAxis(), channel(["o"]), *space_out("raw", "zyx", halo=2)], [scale], ndim=3)


@pytest.fixture(scope="session")
def two_io(tmp_path_factory) -> Path:
    """Two inputs (1 and 2 channels), two outputs; TorchScript and ONNX."""
    v = _v()
    rng = _rng(1)
    a = rng.normal(0, 1, (1, 1, 40, 32)).astype(np.float32)
    b = rng.normal(0, 1, (1, 2, 40, 32)).astype(np.float32)
    folder, weights = _torch_package_files(tmp_path_factory, "two_io", "TwoInTwoOut", [a, b], ["torchscript", "onnx"])

    def inputs(tf):
        return [
            v.InputTensorDescr(id=v.TensorId("a"), axes=[v.BatchAxis(), channel(["a0"]), *space_in("yx")], test_tensor=tf("a")),
            v.InputTensorDescr(id=v.TensorId("b"), axes=[v.BatchAxis(), channel(["b0", "b1"]), *space_in("yx")], test_tensor=tf("b")),
        ]

    def outputs(tf):
        return [
            v.OutputTensorDescr(id=v.TensorId("sum"), axes=[v.BatchAxis(), channel(["s"]), *space_out("a", "yx", halo=2)], test_tensor=tf("sum")),
            v.OutputTensorDescr(id=v.TensorId("pair"), axes=[v.BatchAxis(), channel(["p0", "p1"]), *space_out("a", "yx", halo=2)], test_tensor=tf("pair")),
        ]

    return zoo.build(folder, "tiny two in two out", inputs, outputs, weights, {"a": a, "b": b})


@pytest.fixture(scope="session")
def upsample2(tmp_path_factory) -> Path:
    """Output twice the input size (output axis scale 0.5), halo 4 output pixels."""
    v = _v()
    x = _rng(2).normal(0, 1, (1, 1, 32, 24)).astype(np.float32)
    return _one_in_one_out(tmp_path_factory, "upsample2", "tiny upsample x2", x,
                           [v.BatchAxis(), channel(["c0"]), *space_in("yx")], "up",
                           [v.BatchAxis(), channel(["u"]), *space_out("raw", "yx", halo=4, scale=0.5)], upsample=2)


@pytest.fixture(scope="session")
def allops(tmp_path_factory) -> Path:
    """Three inputs and three outputs whose processing uses every op of spec 0.5."""
    v = _v()
    rng = _rng(3)
    x1 = rng.gamma(2.0, 50.0, (1, 2, 40, 32)).astype(np.float32)
    x2 = rng.normal(20, 5, (1, 1, 40, 32)).astype(np.float32)
    x3 = rng.uniform(0, 1000, (1, 1, 40, 32)).astype(np.float32)
    folder, weights = _torch_package_files(tmp_path_factory, "allops", "ThreeIn", [x1, x2, x3], ["torchscript"])
    yx = [v.AxisId("y"), v.AxisId("x")]
    ch = v.AxisId("channel")

    def inputs(tf):
        return [
            v.InputTensorDescr(id=v.TensorId("x1"), axes=[v.BatchAxis(), channel(["a", "b"]), *space_in("yx")], test_tensor=tf("x1"), preprocessing=[
                v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=yx, min_percentile=1, max_percentile=99.5)),
                v.ClipDescr(kwargs=v.ClipKwargs(min=0.0, max=1.0)),
                v.ScaleLinearDescr(kwargs=v.ScaleLinearAlongAxisKwargs(axis=ch, gain=[1.0, 2.0], offset=[0.0, 0.5])),
                v.SoftmaxDescr(kwargs=v.SoftmaxKwargs(axis=ch)),
                v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
            ]),
            v.InputTensorDescr(id=v.TensorId("x2"), axes=[v.BatchAxis(), channel(["c"]), *space_in("yx")], test_tensor=tf("x2"), preprocessing=[
                v.ZeroMeanUnitVarianceDescr(),
                v.FixedZeroMeanUnitVarianceDescr(kwargs=v.FixedZeroMeanUnitVarianceKwargs(mean=0.1, std=2.0)),
                v.SigmoidDescr(),
                v.BinarizeDescr(kwargs=v.BinarizeKwargs(threshold=0.5)),
                v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
            ]),
            v.InputTensorDescr(id=v.TensorId("x3"), axes=[v.BatchAxis(), channel(["d"]), *space_in("yx")], test_tensor=tf("x3"), preprocessing=[
                v.ClipDescr(kwargs=v.ClipKwargs(min_percentile=2.0, max_percentile=98.0, axes=yx)),
                v.FixedZeroMeanUnitVarianceDescr(kwargs=v.FixedZeroMeanUnitVarianceAlongAxisKwargs(axis=ch, mean=[500.0], std=[250.0])),
                v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=0.5, offset=0.1)),
            ]),
        ]

    def outputs(tf):
        return [
            v.OutputTensorDescr(id=v.TensorId("y1"), axes=[v.BatchAxis(), channel(["y1"]), *space_out("x1", "yx", halo=2)], test_tensor=tf("y1"), postprocessing=[
                v.ScaleMeanVarianceDescr(kwargs=v.ScaleMeanVarianceKwargs(reference_tensor=v.TensorId("x2"), axes=yx)),
            ]),
            v.OutputTensorDescr(id=v.TensorId("y2"), axes=[v.BatchAxis(), channel(["p", "q"]), *space_out("x1", "yx", halo=2)], test_tensor=tf("y2"), postprocessing=[
                v.SigmoidDescr(),
                # (binarize along an axis is tested in test_processing: bioimageio.core 0.11 fails on it)
                v.BinarizeDescr(kwargs=v.BinarizeKwargs(threshold=0.45)),
                v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="uint8")),
            ]),
            v.OutputTensorDescr(id=v.TensorId("y3"), axes=[v.BatchAxis(), channel(["r", "s", "t"]), *space_out("x1", "yx", halo=2)], test_tensor=tf("y3"), postprocessing=[
                v.SoftmaxDescr(kwargs=v.SoftmaxKwargs(axis=ch)),
            ]),
        ]

    return zoo.build(folder, "tiny every op", inputs, outputs, weights, {"x1": x1, "x2": x2, "x3": x3})


def _keras_model():
    """A channel-last keras conv net (b, y, x, c) with 3x3 receptive field (halo 1 is exact)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(None, None, 1), name="raw")
    out = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inp)
    return keras.Model(inp, out, name="tiny_keras")


def _keras_package(tmp_path_factory, kind: str) -> Path:
    import keras
    import tensorflow as tf

    v = _v()
    folder = tmp_path_factory.mktemp(kind)
    model = _keras_model()
    x = _rng(4).normal(0, 1, (1, 32, 24, 1)).astype(np.float32)
    tv = v.Version(tf.__version__)
    from bioimageio.spec import ValidationContext

    with ValidationContext(root=folder, perform_io_checks=False):
        if kind == "keras_hdf5":
            model.save(folder / "weights.h5")
            weights = {kind: v.KerasHdf5WeightsDescr(source="weights.h5", sha256=zoo.sha256(folder / "weights.h5"), tensorflow_version=tv)}
        elif kind == "keras_v3":
            model.save(folder / "weights.keras")
            weights = {kind: v.KerasV3WeightsDescr(source="weights.keras", sha256=zoo.sha256(folder / "weights.keras"),
                                                   keras_version=v.Version(keras.__version__), backend=("tensorflow", tv))}
        else:
            model.export(str(folder / "saved_model"), format="tf_saved_model", verbose=False)
            zoo.zip_folder(folder / "saved_model", folder / "saved_model.zip")
            import shutil

            shutil.rmtree(folder / "saved_model")
            weights = {kind: v.TensorflowSavedModelBundleWeightsDescr(
                source="saved_model.zip", sha256=zoo.sha256(folder / "saved_model.zip"), tensorflow_version=tv)}

    def inputs(tf_):
        return [v.InputTensorDescr(id=v.TensorId("raw"), axes=[v.BatchAxis(), *space_in("yx"), channel(["c0"])], test_tensor=tf_("raw"))]

    def outputs(tf_):
        return [v.OutputTensorDescr(id=v.TensorId("out"), axes=[v.BatchAxis(), *space_out("raw", "yx", halo=1), channel(["o0", "o1"])], test_tensor=tf_("out"))]

    expected = np.asarray(model(x, training=False))
    return zoo.build(folder, f"tiny {kind}", inputs, outputs, weights, {"raw": x}, reference=lambda _: {"out": expected})


@pytest.fixture(scope="session")
def keras_h5(tmp_path_factory) -> Path:
    return _keras_package(tmp_path_factory, "keras_hdf5")


@pytest.fixture(scope="session")
def keras_v3(tmp_path_factory) -> Path:
    return _keras_package(tmp_path_factory, "keras_v3")


@pytest.fixture(scope="session")
def tf_saved_model(tmp_path_factory) -> Path:
    return _keras_package(tmp_path_factory, "tensorflow_saved_model_bundle")


def _v04_package(folder: Path, torch2d: Path, mode: str) -> Path:
    """A format 0.4 rdf around the torch2d TorchScript weights, with 0.4's
    zero_mean_unit_variance in ``mode`` per_sample / per_dataset / fixed."""
    import shutil
    from datetime import datetime, timezone

    import bioimageio.spec.model.v0_4 as v4
    from bioimageio.spec import ValidationContext, save_bioimageio_yaml_only

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(torch2d.parent / "weights.torchscript.pt", folder)
    x = _rng(5).normal(10, 3, (1, 1, 40, 32)).astype(np.float32)
    np.save(folder / "test_raw.npy", x)
    (folder / "README.md").write_text("# tiny 0.4 model\n")
    kwargs = {"mode": mode, "axes": "xy"}
    if mode == "fixed":
        kwargs.update(mean=9.5, std=2.5)

    def descr():
        with ValidationContext(root=folder, perform_io_checks=False):
            return v4.ModelDescr(
                format_version="0.4.10", type="model", name=f"tiny 0.4 {mode}", description="format 0.4 test model",
                authors=[v4.Author(name="dlmodel tests")], cite=[v4.CiteEntry(text="dlmodel tests", doi="10.5281/zenodo.0000000")],
                documentation="README.md", license="MIT", timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc),
                inputs=[v4.InputTensorDescr(
                    name="raw", axes="bcyx", data_type="float32",
                    shape=v4.ParameterizedInputShape(min=[1, 1, 16, 16], step=[0, 0, 8, 8]),
                    preprocessing=[v4.ZeroMeanUnitVarianceDescr(kwargs=v4.ZeroMeanUnitVarianceKwargs(**kwargs))],
                )],
                outputs=[v4.OutputTensorDescr(
                    name="prob", axes="bcyx", data_type="float32", halo=[0, 0, 2, 2],
                    shape=v4.ImplicitOutputShape(reference_tensor="raw", scale=[1, 1, 1, 1], offset=[0, 0, 0, 0]),
                    postprocessing=[v4.SigmoidDescr()],
                )],
                test_inputs=["test_raw.npy"], test_outputs=["test_prob.npy"],
                weights=v4.WeightsDescr(torchscript=v4.TorchscriptWeightsDescr(
                    source="weights.torchscript.pt", sha256=zoo.sha256(folder / "weights.torchscript.pt"), pytorch_version="2.1")),
            )

    np.save(folder / "test_prob.npy", np.zeros(1, np.float32))
    out = zoo.core_predict(descr(), {"raw": x})
    np.save(folder / "test_prob.npy", out["prob"])
    save_bioimageio_yaml_only(descr(), folder / "rdf.yaml")
    return folder / "rdf.yaml"


@pytest.fixture(scope="session", params=["per_sample", "per_dataset", "fixed"])
def v04(request, tmp_path_factory, torch2d) -> Path:
    return _v04_package(tmp_path_factory.mktemp(f"v04_{request.param}"), torch2d, request.param)
