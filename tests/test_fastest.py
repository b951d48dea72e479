"""engine="fastest": each installed engine passes the package's test, is timed on the image's tile,
the fastest kept and remembered; real engines on real packages (the shared zoo U-Net, the default)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import dlmodel
from dlmodel import cli, fastest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / dlmodel.DEFAULT_MODEL / "bioimageio.yaml"
RNG = np.random.default_rng(3)


@pytest.fixture
def fresh_cache():
    fastest.clear_cache()
    yield fastest.cache_path()
    fastest.clear_cache()


@pytest.mark.parametrize("which", ["shared", "default"])
def test_fastest_measures_once_then_reads_its_cache(which, nuclei_model, fresh_cache, capsys):
    source = nuclei_model if which == "shared" else DEFAULT
    image = (RNG.random((300, 280)) * 4000).astype(np.uint16)
    model = dlmodel.load(source, engine="fastest", device="cpu")
    assert model.engine_choice is None  # nothing is measured before an image says the tile shape
    first = model.predict(image)
    choice = model.engine_choice
    assert not choice.cached and set(choice.seconds) == {"onnx", "torchscript"} and not choice.refused
    assert model.weights_format == min(choice.seconds, key=choice.seconds.get)
    assert choice.tile[-2:] >= (300, 280) and choice.tile[-1] >= 280  # one tile covers this image
    assert model.weights_format in choice.reason and "measured" in choice.reason
    entries = json.loads(fresh_cache.read_text())
    assert len(entries) == 1 and next(iter(entries.values()))["weights_format"] == model.weights_format
    stamp = fresh_cache.stat().st_mtime_ns
    # the fixed choice gives the same outputs: the same engine ran
    fixed = dlmodel.load(source, engine=model.weights_format, device="cpu").predict(image)
    for oid in first:
        np.testing.assert_array_equal(first[oid], fixed[oid])
    # a second model (another process's, say) reads the choice: no test, no timing, no write
    again = dlmodel.load(source, engine="fastest", device="cpu")
    again.predict(image)
    assert again.engine_choice.cached and again.weights_format == model.weights_format
    assert fresh_cache.stat().st_mtime_ns == stamp and len(json.loads(fresh_cache.read_text())) == 1
    assert again.info()["engine_reason"] == choice.reason
    assert dlmodel.engines.engine_text(again).startswith(f"{again.weights_format} (fastest: ")
    # dlmodel info says what was measured here, and why
    assert cli.main(["info", str(source)]) == 0
    assert f"engine='fastest' on cpu: {dlmodel.engines.ROWS[model.weights_format].name} (fastest: " in capsys.readouterr().out


def _onnx_that_differs(src: Path, dst: Path) -> Path:
    """The shared package with its ONNX weights really changed (one convolution's weights
    scaled by 1.5) and the rdf's sha256 updated: a package whose two weight files disagree."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    proto = onnx.load(str(dst / "weights.onnx"))
    init = next(i for i in proto.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(proto, str(dst / "weights.onnx"))
    rdf = dst / "bioimageio.yaml"
    old = "85f5ac80fa977fea3562ef97c8c5950288be2c4f4cdb5d994807df97008ce088"
    assert old in rdf.read_text()
    rdf.write_text(rdf.read_text().replace(old, fastest_sha(dst / "weights.onnx")))
    return rdf


def fastest_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_engine_that_does_not_reproduce_the_test_outputs_is_never_picked(nuclei_model, tmp_path, fresh_cache):
    rdf = _onnx_that_differs(nuclei_model.parent, tmp_path / "pkg")
    assert not dlmodel.load(rdf, engine="onnx", device="cpu").test().ok  # the ONNX weights really differ
    model = dlmodel.load(rdf, engine="fastest", device="cpu")
    assert model.weights_format == "onnx"  # auto's pick until an image is measured
    model.predict((RNG.random((200, 200)) * 4000).astype(np.uint16))
    choice = model.engine_choice
    assert model.weights_format == "torchscript" and set(choice.seconds) == {"torchscript"}
    assert "differ" in choice.refused["onnx"] and "not used: onnx" in choice.reason
