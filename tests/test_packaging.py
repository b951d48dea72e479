"""dlmodel package / convert: real packages from torch, TorchScript, ONNX and Keras, checked by
bioimageio.spec, by `dlmodel test` and by bioimageio.core's own test_model."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dlmodel
import dlmodel.packaging as packaging
import zoo
from dlmodel.converters import convert

RNG = np.random.default_rng(3)
SAMPLE = RNG.normal(100, 20, (70, 90)).astype(np.float32)
META = dict(name="tiny packaged", description="a tiny conv net", authors=["A. Tester"], license="MIT",
            cite=[{"text": "dlmodel tests", "doi": "10.5281/zenodo.0000000"}], tags=["test"])
PRE = [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]
POST = [{"id": "sigmoid"}]


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arch")
    mod = zoo._arch_module(folder)
    return folder / "tiny_arch.py", mod


def _module(arch):
    import torch

    torch.manual_seed(0)
    return arch[1].TinyConv()


def check(rdf):
    """bioimageio.spec validates it (file hashes included), dlmodel and bioimageio.core test it."""
    from bioimageio.core import test_model
    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr

    descr = load_description(rdf, perform_io_checks=True)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    report = dlmodel.load(rdf).test()
    assert report.ok, report.summary()
    summary = test_model(rdf)
    assert summary.status == "passed", summary.format()


def test_from_a_torch_module(arch, tmp_path):
    rdf = packaging.package(_module(arch), SAMPLE, tmp_path / "pkg", architecture=packaging.Architecture(arch[0], "TinyConv"),
                            preprocessing=PRE, postprocessing=POST, halo=2, **META)
    model = dlmodel.load(rdf)
    assert set(model.spec.weights) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert (rdf.parent / "cover.png").stat().st_size > 1000 and "tiny packaged" in (rdf.parent / "README.md").read_text()
    check(rdf)
    for engine in ("onnx", "torchscript", "pytorch"):
        assert dlmodel.load(rdf, engine=engine).test().ok


def test_from_torchscript_and_onnx_files(arch, tmp_path):
    import torch

    module = _module(arch)
    torch.jit.script(module).save(str(tmp_path / "net.pt"))
    from dlmodel.converters import torch_to_onnx

    torch_to_onnx(module, SAMPLE[None, None, :64, :64], tmp_path / "net.onnx")
    for src in ("net.pt", "net.onnx"):
        rdf = packaging.package(tmp_path / src, SAMPLE, tmp_path / f"pkg_{src}.zip", preprocessing=PRE, postprocessing=POST,
                                halo=2, **META)
        assert rdf.suffix == ".zip"
        check(rdf)


def test_from_a_keras_model(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(None, None, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp))
    rdf = packaging.package(model, SAMPLE, tmp_path / "keras_pkg", preprocessing=PRE, halo=1, **META)
    m = dlmodel.load(rdf)
    assert m.weights_format == "keras_v3" and m.spec.inputs[0].letters == "byxc"
    assert m.test().ok
    out = m.predict(SAMPLE)
    assert out["prediction"].shape == SAMPLE.shape


def test_bad_metadata_or_a_model_that_does_not_run_writes_nothing(arch, tmp_path):
    out = tmp_path / "pkg"
    with pytest.raises(dlmodel.SpecError, match="authors"):
        packaging.package(_module(arch), SAMPLE, out, **{**META, "authors": []})
    with pytest.raises(dlmodel.SpecError, match="processing 'zero_mean_unit_variance'"):
        packaging.package(_module(arch), SAMPLE, out, preprocessing=[{"id": "zero_mean_unit_variance", "kwargs": {"eps": -1}}], **META)
    with pytest.raises(dlmodel.EngineError, match="does not run on the sample"):
        packaging.package(_module(arch), np.stack([SAMPLE, SAMPLE]), out, sample_axes="cyx",
                          architecture=packaging.Architecture(arch[0], "TinyConv"), **META)
    assert list(tmp_path.iterdir()) == []


def test_cli_package(arch, tmp_path):
    import torch

    torch.jit.script(_module(arch)).save(str(tmp_path / "net.pt"))
    np.save(tmp_path / "sample.npy", SAMPLE)
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "package", tmp_path / "net.pt", "--sample", tmp_path / "sample.npy",
                          "-o", tmp_path / "pkg", "--name", "cli model", "--description", "from the shell", "--author", "Me",
                          "--cite", "dlmodel|10.5281/zenodo.0000000", "--postprocessing", '[{"id": "sigmoid"}]',
                          "--size", "16,8", "--halo", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert dlmodel.load(tmp_path / "pkg").test().ok


# --- conversion ------------------------------------------------------------------------------

def _state_dict_only(arch, tmp_path, callable_="TinyConv"):
    module = getattr(arch[1], callable_)()
    return packaging.package(module, SAMPLE, tmp_path / "pkg", architecture=packaging.Architecture(arch[0], callable_),
                             formats=("pytorch_state_dict",), preprocessing=PRE, postprocessing=POST, halo=2, **META)


def test_convert_state_dict_to_torchscript_then_onnx(arch, tmp_path):
    rdf = _state_dict_only(arch, tmp_path)
    assert dlmodel.load(rdf).weights_format == "pytorch_state_dict"
    convert(rdf.parent, "torchscript")
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "convert", rdf.parent, "--to", "onnx"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    model = dlmodel.load(rdf)
    assert set(model.spec.weights) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert model.weights_format == "onnx"  # auto now picks the faster engine
    check(rdf)


def test_a_conversion_that_does_not_reproduce_is_refused(arch, tmp_path):
    # a module that computes something else once scripted: TorchScript cannot reproduce it
    source = arch[0].read_text() + textwrap.dedent(
        '''

        class Drifts(TinyConv):
            def forward(self, x):
                y = self.c2(torch.relu(self.c1(x)))
                if torch.jit.is_scripting():
                    y = y + 1.0
                return y
        '''
    )
    arch[0].write_text(source)
    import importlib

    mod = importlib.util.spec_from_file_location("drift_arch", arch[0])
    module = importlib.util.module_from_spec(mod)
    mod.loader.exec_module(module)
    rdf = _state_dict_only((arch[0], module), tmp_path, "Drifts")
    before = {p.name: p.read_bytes() for p in rdf.parent.iterdir()}
    with pytest.raises(dlmodel.EngineError, match="do not reproduce the test outputs; package unchanged"):
        convert(rdf.parent, "torchscript")
    after = {p.name: p.read_bytes() for p in rdf.parent.iterdir()}
    assert after == before
