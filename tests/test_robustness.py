"""Trust, memory, interrupted runs, and random inputs (issue: trust and robustness)."""
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlmodel
import zoo
from conftest import DSB_VAL, ROOT
from test_sources import Server

RNG = np.random.default_rng(8)


# --- code from packages runs only with consent ---------------------------------------------------

@pytest.fixture
def served_torch2d(torch2d, tmp_path, monkeypatch):
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    zoo.copy_package(torch2d.parent, tmp_path / "www" / "pkg")
    server = Server(tmp_path / "www")
    yield f"{server.url}/pkg/bioimageio.yaml"
    server.stop()


def test_downloaded_architecture_code_needs_trust(served_torch2d, torch2d):
    with pytest.raises(dlmodel.TrustError) as err:
        dlmodel.load(served_torch2d, engine="pytorch")
    msg = str(err.value)
    assert "was downloaded" in msg and "tiny_arch.py" in msg and "trust=True" in msg and "\n" not in msg
    assert dlmodel.load(served_torch2d, engine="pytorch", trust=True).test().ok
    assert dlmodel.load(served_torch2d, engine="onnx").test().ok  # ONNX runs no package code
    assert dlmodel.load(torch2d, engine="pytorch").test().ok  # the user's own disk: trusted


def _custom_package(torch2d, folder):
    """torch2d with a spec 0.5.12 `custom` post-processing op shipped as a .py file."""
    import bioimageio.spec.model.v0_5 as v
    from bioimageio.spec import ValidationContext, save_bioimageio_yaml_only

    from dlmodel.spec import read_description

    pkg = zoo.copy_package(torch2d.parent, folder)
    (pkg / "halve.py").write_text("class halve:\n    def __init__(self, factor=0.5):\n        self.factor = factor\n\n"
                                  "    def __call__(self, x):\n        return x * self.factor\n")
    descr = read_description(pkg / "bioimageio.yaml")
    with ValidationContext(root=pkg, perform_io_checks=False):
        op = v.CustomProcessingDescr(callable="halve", source="halve.py", sha256=zoo.sha256(pkg / "halve.py"), kwargs={"factor": 0.5})
        out = descr.outputs[0].model_copy(update={"postprocessing": [*descr.outputs[0].postprocessing, op]})
        test = np.load(pkg / "test_prob.npy") * 0.5
        np.save(pkg / "test_prob.npy", test)
        out = out.model_copy(update={"test_tensor": v.FileDescr(source="test_prob.npy", sha256=zoo.sha256(pkg / "test_prob.npy"))})
        save_bioimageio_yaml_only(descr.model_copy(update={"outputs": [out]}), pkg / "bioimageio.yaml")
    return pkg


def test_custom_postprocessing_runs_locally_and_only_with_trust_when_downloaded(torch2d, tmp_path, monkeypatch):
    pkg = _custom_package(torch2d, tmp_path / "www" / "custom")
    local = dlmodel.load(pkg)
    report = local.test()
    assert report.ok, report.summary()
    x = RNG.normal(size=(40, 40)).astype(np.float32)
    assert local.predict(x)["prob"].max() <= 0.5
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    server = Server(tmp_path / "www")
    try:
        remote = dlmodel.load(f"{server.url}/custom/bioimageio.yaml")
        with pytest.raises(dlmodel.TrustError, match="runs the package.s own code.*trust=True"):
            remote.predict(x)
        assert dlmodel.load(f"{server.url}/custom/bioimageio.yaml", trust=True).test().ok
    finally:
        server.stop()


def test_keras_lambda_layers_need_trust_when_downloaded(tmp_path, monkeypatch):
    import keras

    import dlmodel.packaging as packaging

    inp = keras.Input(shape=(None, None, 1))
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Conv2D(1, 3, padding="same")(inp)))
    rdf = packaging.package(model, RNG.normal(size=(32, 32)).astype(np.float32), tmp_path / "www" / "lam",
                            name="lambda", description="has a Lambda layer", authors=["T"], halo=1)
    assert dlmodel.load(rdf).test().ok  # local: the user's own package
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    server = Server(tmp_path / "www")
    try:
        with pytest.raises(dlmodel.TrustError, match="Lambda layers.*trust=True"):
            dlmodel.load(f"{server.url}/lam/bioimageio.yaml")
        assert dlmodel.load(f"{server.url}/lam/bioimageio.yaml", trust=True).test().ok
    finally:
        server.stop()


# --- memory ----------------------------------------------------------------------------------

def test_images_too_large_are_refused_before_allocating(torch2d, monkeypatch):
    model = dlmodel.load(torch2d)
    monkeypatch.setenv("DLMODEL_MEMORY_LIMIT", str(8 << 20))
    with pytest.raises(dlmodel.InputError, match="big.tif: its outputs alone need"):
        model.predict(np.zeros((2000, 2000), np.float32), name="big.tif")
    monkeypatch.setenv("DLMODEL_MEMORY_LIMIT", str(60 << 20))
    x = RNG.normal(size=(1000, 1000)).astype(np.float32)
    with pytest.raises(dlmodel.InputError, match=r"use a smaller tile, e\.g\. tile=(\d+)") as err:
        model.predict(x, tile=False)
    tile = int(re.search(r"tile=(\d+)", str(err.value)).group(1))
    assert model.predict(x, tile=tile)["prob"].shape == x.shape


# --- interrupted runs ------------------------------------------------------------------------

def _inputs(folder, n=10):
    folder.mkdir()
    images = sorted((DSB_VAL / "images").glob("*.tif"))
    for i in range(n):
        shutil.copy(images[i % len(images)], folder / f"img{i:02d}.tif")
    return folder


def _predict(src, out, *extra):
    return [sys.executable, "-m", "dlmodel.cli", "predict", str(src), str(src.parent), "-o", str(out), "--labels", *extra]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_predict_leaves_no_half_file_and_resume_completes(tmp_path, sig):
    model = ROOT / "models" / "nuclei_default"
    images = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dlmodel.cli", "predict", str(model), str(images), "-o", str(out), "--labels"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*_labels.tif"))) < 2:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    done_before = sorted(p.name for p in out.glob("*.tif"))
    assert 0 < len(done_before) < 20
    for p in out.glob("*.tif"):  # every visible output is complete
        tifffile.imread(p)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert not list(out.glob(".*.part"))  # cleaned up on Ctrl-C
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "already done" in res.stdout
    assert not list(out.glob(".*.part"))
    assert len(list(out.glob("*_labels.tif"))) == len(list(out.glob("*_prediction.tif"))) == 10
    # the resumed outputs equal a clean run's, bit for bit
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, "-m", "dlmodel.cli", "predict", str(model), str(images / "img09.tif"), "-o", str(clean),
                    "--labels"], check=True, capture_output=True, timeout=300)
    assert np.array_equal(tifffile.imread(out / "img09_labels.tif"), tifffile.imread(clean / "img09_labels.tif"))


# --- random inputs ---------------------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 150), w=st.integers(1, 150), tile=st.integers(8, 96),
       dtype=st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "bool"]))
def test_tiled_equals_untiled_for_random_shapes_and_types(torch2d_model, h, w, tile, dtype):
    x = RNG.uniform(0, 200, (h, w))
    x = (x > 100) if dtype == "bool" else x.astype(dtype)
    whole = torch2d_model.predict(x, tile=False)["prob"]
    tiled = torch2d_model.predict(x, tile=tile)["prob"]
    assert tiled.shape == (h, w)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


@pytest.fixture(scope="module")
def torch2d_model(torch2d):
    return dlmodel.load(torch2d, engine="onnx")


@pytest.fixture(scope="module")
def rdf_lines(torch2d):
    return torch2d.read_text().splitlines()


def test_mutated_rdfs_give_only_clean_errors(torch2d, rdf_lines, tmp_path_factory):
    """Randomly damaged rdfs either load and predict or give one clean line; the mutations must
    really refuse some rdfs, or the test would pass without testing the refusals."""
    outcomes = {"refused": 0, "ran": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
              database=None)
    @given(data=st.data())
    def check(data):
        lines = list(rdf_lines)
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(lines) - 1))
            action = data.draw(st.sampled_from(["delete", "garble", "duplicate", "value"]))
            if action == "delete":
                del lines[i]
            elif action == "duplicate":
                lines.insert(i, lines[i])
            elif action == "garble":
                lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))] + data.draw(st.sampled_from([":", "- ", "{", "]", "'", "\t"]))
            elif ":" in lines[i]:
                key = lines[i].split(":", 1)[0]
                lines[i] = key + ": " + data.draw(st.sampled_from(["-1", "0", "null", "[]", "{}", "x" * 300, "1e309", "'??'", "10.0.0"]))
        pkg = tmp_path_factory.mktemp("mut")
        for p in torch2d.parent.iterdir():
            shutil.copy(p, pkg / p.name)
        (pkg / "bioimageio.yaml").write_text("\n".join(lines) + "\n")
        try:
            model = dlmodel.load(pkg)
            model.predict(np.ones((20, 20), np.float32))
            outcomes["ran"] += 1
        except dlmodel.DLModelError as e:
            assert "\n" not in str(e) and str(e)
            outcomes["refused"] += 1

    check()
    assert outcomes["refused"] >= 10, outcomes
