"""TensorFlow graphs and Keras layers: what runs without trust is an allowlist (issue 25, point 4).

Each hostile model is built here, by TensorFlow or Keras themselves, and served from a real
HTTP server on 127.0.0.1 or zipped (both: someone else's package)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlmodel
import zoo
from test_sources import Server

RNG = np.random.default_rng(25)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dlmodel.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _saved_model_package(folder: Path, serve, title: str) -> Path:
    """A package whose SavedModel's serving function is ``serve(module, raw) -> conv output``
    (built by tf.saved_model.save), zipped as the zoo ships them; the test outputs are computed
    here, not by the graph."""
    import tensorflow as tf
    from conftest import _v, channel, space_in, space_out

    v = _v()
    kernel = RNG.normal(size=(3, 3, 1, 2)).astype(np.float32)

    class Hostile(tf.Module):
        def __init__(self):
            super().__init__()
            self.k = tf.Variable(kernel)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="raw")])
        def serve(self, raw):
            return {"out": serve(tf.nn.conv2d(raw, self.k, 1, "SAME"))}

    module = Hostile()
    folder.mkdir(parents=True)
    tf.saved_model.save(module, str(folder / "saved_model"), signatures={"serving_default": module.serve})
    zoo.zip_folder(folder / "saved_model", folder / "saved_model.zip")
    shutil.rmtree(folder / "saved_model")
    x = RNG.normal(size=(1, 32, 24, 1)).astype(np.float32)
    expected = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    from bioimageio.spec import ValidationContext

    with ValidationContext(root=folder, perform_io_checks=False):
        weights = {"tensorflow_saved_model_bundle": v.TensorflowSavedModelBundleWeightsDescr(
            source="saved_model.zip", sha256=zoo.sha256(folder / "saved_model.zip"),
            tensorflow_version=v.Version(tf.__version__))}

    def inputs(tf_):
        return [v.InputTensorDescr(id=v.TensorId("raw"), axes=[v.BatchAxis(), *space_in("yx"), channel(["c0"])],
                                   test_tensor=tf_("raw"))]

    def outputs(tf_):
        return [v.OutputTensorDescr(id=v.TensorId("out"), axes=[v.BatchAxis(), *space_out("raw", "yx", halo=1),
                                    channel(["o0", "o1"])], test_tensor=tf_("out"))]

    return zoo.build(folder, title, inputs, outputs, weights, {"raw": x}, reference=lambda _: {"out": expected})


def _caching_package(folder: Path, target: Path) -> Path:
    """The attack the denylist missed: the serving function passes its result through a
    ``tf.data`` file cache (CacheDatasetV2), which writes ``target.index`` and
    ``target.data-00000-of-00001`` as the model predicts."""
    import tensorflow as tf

    def serve(out):
        # read to the end, so that the cache is complete and kept
        return tf.data.Dataset.from_tensors(out).cache(str(target)).reduce(tf.zeros_like(out), lambda a, b: a + b)

    return _saved_model_package(folder, serve, "graph caches a dataset to a file")


def _written(target: Path) -> list:
    return sorted(p.name for p in target.parent.glob(target.name + "*"))


# --- the attack: a SavedModel that writes files through tf.data's cache ----------------------------

def test_a_downloaded_savedmodel_that_caches_a_dataset_to_a_file_needs_trust(tmp_path, cache):
    target = tmp_path / "victim" / "cache"
    target.parent.mkdir()
    rdf = _caching_package(tmp_path / "www" / "evil", target)
    server = Server(tmp_path / "www")
    try:
        url = f"{server.url}/evil/bioimageio.yaml"
        image = RNG.normal(size=(32, 32)).astype(np.float32)
        with pytest.raises(dlmodel.TrustError) as err:
            dlmodel.load(url).predict(image, axes="yx")
        message = str(err.value)
        assert "CacheDatasetV2" in message and "was downloaded" in message and "trust=True" in message
        assert "\n" not in message
        assert _written(target) == []
        res = cli("test", url)
        assert res.returncode == 2 and "CacheDatasetV2" in res.stderr and "Traceback" not in res.stderr
        assert _written(target) == []
        assert dlmodel.load(url, trust=True).test().ok  # with consent it runs, and writes its cache
        assert _written(target) == ["cache.data-00000-of-00001", "cache.index"]
    finally:
        server.stop()
    for p in target.parent.iterdir():
        p.unlink()
    zipped = zoo.zip_folder(rdf.parent, tmp_path / "evil.zip")  # a zip is someone else's package too
    res = cli("test", zipped)
    assert res.returncode == 2 and "CacheDatasetV2" in res.stderr and "comes from a zip archive" in res.stderr
    assert _written(target) == []
