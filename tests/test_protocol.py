"""One model interface (dlmodel.protocol): the in-process Model and the worker's RemoteModel offer
every method with the same parameters, and every method is reachable through a real worker."""
import inspect
import sys

import numpy as np
import pytest
import tifffile

from conftest import ROOT, SHARED

import dlmodel
from dlmodel import client, protocol
from dlmodel.api import Model
from dlmodel.client import RemoteModel
from dlmodel.worker import Server

MODEL = ROOT / "models" / "nuclei_default"  # ONNX, small: a worker loads it in about a second
IMAGE = sorted((SHARED / "data" / "ExampleSBSImages").glob("Channel2-*.tif"))[0]


@pytest.fixture(autouse=True)
def _close_workers():
    yield
    client.clear_cache()


def _params(func):
    return [(p.name, p.kind) for p in inspect.signature(func).parameters.values()]


@pytest.mark.parametrize("name", protocol.METHODS)
def test_both_models_have_each_method_with_the_protocols_parameters(name):
    want = _params(getattr(protocol.ModelInterface, name))
    assert _params(getattr(Model, name)) == want, f"api.Model.{name} differs from the protocol"
    assert _params(getattr(RemoteModel, name)) == want, f"RemoteModel.{name} differs from the protocol"
    assert name in Server.OPS, f"the worker has no request for {name}"
    # a default the proxy leaves to the core is None there; any other default is the same
    here, there = inspect.signature(getattr(Model, name)), inspect.signature(getattr(RemoteModel, name))
    for p in there.parameters.values():
        assert p.default in (None, here.parameters[p.name].default), (name, p.name)


def test_run_options_are_one_schema_for_here_and_the_worker():
    fields = [f for f in inspect.signature(protocol.RunOptions).parameters]
    predict = inspect.signature(Model.predict).parameters
    assert all(f in predict for f in fields), "a RunOptions field that Model.predict does not take"
    o = protocol.RunOptions(tile={"y": 64, "x": 64}, batch_size=2, pad_mode="edge", name="a.tif")
    assert protocol.RunOptions.from_wire(o.to_wire()) == o


def test_every_method_is_reachable_through_the_worker(tmp_path):
    """Each protocol method called on a real worker, checked against the same call here; a new
    method without a call below fails this test."""
    image = tifffile.imread(IMAGE)
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, image)
    here = dlmodel.load(MODEL)
    there = dlmodel.load(MODEL, python=sys.executable)
    # every method, property and fact of the protocol, on both
    assert isinstance(there, RemoteModel) and isinstance(there, protocol.ModelInterface)
    assert isinstance(here, protocol.ModelInterface)
    a = here.predict(image, axes="yx", tile=256, batch_size=2, pad_mode="edge", name="plate image")
    b = there.predict(image, axes="yx", tile=256, batch_size=2, pad_mode="edge", name="plate image")
    calls = {
        "predict": lambda: all(np.array_equal(a[k], b[k]) for k in a),
        "labels": lambda: np.array_equal(here.labels(a, min_size=5), there.labels(b, min_size=5)),
        "confidence": lambda: (here.confidence(image, axes="yx", augmentations=1).confidence
                               == pytest.approx(there.confidence(image, axes="yx", augmentations=1).confidence)),
        "test": lambda: there.test().ok == here.test().ok is True,
        "info": lambda: there.info()["name"] == here.info()["name"],
        "check_file_fits": lambda: there.check_file_fits(path, axes="yx", tile=(256, 256)) is None,
        "unload": lambda: there.unload() is None,
    }
    assert set(calls) == set(protocol.METHODS)
    for name in protocol.METHODS:  # unload last
        assert calls[name](), name
    assert (there.local, there.instance_recipe, there.makes_objects) == (here.local, here.instance_recipe,
                                                                        here.makes_objects)


def test_fastest_in_a_worker_says_which_engine_ran_and_why():
    """engine="fastest" measures in the worker at the first image; the proxy then reports the engine
    that ran and why, as RunDLModel's DLModel_Engine shows it in this process."""
    from dlmodel import engines

    image = tifffile.imread(IMAGE)[:256, :256]
    there = dlmodel.load(MODEL, engine="fastest", python=sys.executable)
    there.predict(image, axes="yx")
    text = engines.engine_text(there)
    assert text.startswith(there.weights_format) and "fastest" in text, text
