"""The Python API: axes, inputs that do not fit, info, threads."""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import dlmodel

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def model(torch2d):
    return dlmodel.load(torch2d, engine="onnx")


def test_axes_strings_map_onto_the_model(model):
    x = RNG.normal(size=(30, 50)).astype(np.float32)
    yx = model.predict(x, axes="yx")
    assert yx.axes["prob"] == "yx" and yx["prob"].shape == (30, 50)
    xy = model.predict(x.T, axes="xy")  # transposed data, same result in the model's order
    np.testing.assert_allclose(xy["prob"], yx["prob"], atol=1e-6)
    cyx = model.predict(x[None], axes="cyx")
    assert cyx.axes["prob"] == "cyx" and cyx["prob"].shape == (1, 30, 50)
    guessed = model.predict(x)
    np.testing.assert_array_equal(guessed["prob"], yx["prob"])


def test_extra_axes_are_looped_over(model):
    stack = RNG.normal(size=(3, 30, 50)).astype(np.float32)
    out = model.predict(stack, axes="tyx")
    assert out.axes["prob"] == "tyx" and out["prob"].shape == (3, 30, 50)
    np.testing.assert_allclose(out["prob"][1], model.predict(stack[1], axes="yx")["prob"], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.uint16, np.int32, np.float64])
def test_pixel_types(model, dtype):
    x = (RNG.uniform(0, 200, size=(33, 21)) > 100) if dtype is np.bool_ else RNG.uniform(0, 200, size=(33, 21)).astype(dtype)
    out = model.predict(x)["prob"]
    assert out.shape == (33, 21) and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize(
    "image, axes, message",
    [
        (np.zeros((3, 30, 30), np.float32), "cyx", r"wants 1 channel\(s\).*has 3"),
        (np.zeros((30, 30), np.float32), "zyx", "name 3 axes but the image has 2"),
        (np.zeros((30, 30), np.float32), "yq", "unknown axis letter"),
        (np.zeros((30, 30), np.float32), "yy", "twice"),
        (np.zeros((0, 30), np.float32), "yx", "empty"),
        (np.full((30, 30), np.nan, np.float32), "yx", "NaN"),
        (np.zeros((4, 5, 30, 30), np.float32), None, "cannot tell the axes"),
    ],
)
def test_inputs_that_do_not_fit_get_one_line(model, image, axes, message):
    with pytest.raises(dlmodel.InputError, match=message) as err:
        model.predict(image, axes=axes, name="cells.tif")
    assert "\n" not in str(err.value) and "cells.tif" in str(err.value)


def test_labels_of_an_image_instead_of_its_prediction_is_one_line(model):
    image = RNG.random((64, 64)).astype(np.float32)
    with pytest.raises(dlmodel.InputError, match=r"takes a prediction .* model\.labels\(model\.predict\(image\)\)") as err:
        model.labels(image)  # was: TypeError from str.join over the array's rows
    assert "\n" not in str(err.value)
    assert model.labels(model.predict(image)).shape == image.shape


def test_3d_model_refuses_a_2d_image(torch3d):
    model = dlmodel.load(torch3d)
    with pytest.raises(dlmodel.InputError, match=r"needs 3D \(z\)"):
        model.predict(np.zeros((40, 40), np.float32), axes="yx")


def test_multi_input_model_wants_a_dict(two_io):
    model = dlmodel.load(two_io)
    with pytest.raises(dlmodel.InputError, match="has 2 inputs"):
        model.predict(np.zeros((20, 20), np.float32))
    with pytest.raises(dlmodel.InputError, match="missing"):
        model.predict({"a": np.zeros((20, 20), np.float32)})


def test_info(nuclei_model):
    info = dlmodel.load(nuclei_model).info()
    assert info["name"] == "UNet 2D Nuclei Broad" and info["license"] == "MIT"
    assert "Constantin Pape;@bioimage-io" in info["authors"] and info["cite"]
    (inp,), (out,) = info["inputs"], info["outputs"]
    assert inp["axes"] == "bcyx" and inp["shape"]["y"] == "512"
    assert out["halo"] == {"y": 32, "x": 32}
    assert inp["preprocessing"][1].startswith("zero_mean_unit_variance")
    assert out["postprocessing"][0] == "sigmoid"
    assert set(info["weights"]) == {"onnx", "torchscript"} and info["engine"] == "onnx"
    assert len(info["rdf_sha256"]) == 64


def test_predict_from_several_threads(model):
    images = [RNG.normal(size=(60 + i, 45)).astype(np.float32) for i in range(6)]
    alone = [model.predict(im, tile=32)["prob"] for im in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda im: model.predict(im, tile=32)["prob"], images))
    for a, b in zip(alone, together):
        assert np.array_equal(a, b)


def test_load_cached_reuses_the_model(torch2d):
    dlmodel.clear_cache()
    a = dlmodel.load_cached(str(torch2d))
    assert dlmodel.load_cached(str(torch2d)) is a
    assert dlmodel.load_cached(str(torch2d), engine="torchscript") is not a
    dlmodel.clear_cache()


def test_unknown_engine_and_missing_weights(torch2d, nuclei_model):
    with pytest.raises(dlmodel.EngineError, match="unknown engine"):
        dlmodel.load(torch2d, engine="caffe")
    with pytest.raises(dlmodel.EngineError, match="has no tensorflow weights"):
        dlmodel.load(nuclei_model, engine="tensorflow")


def test_missing_engine_names_the_extra(nuclei_model):
    # a Python where neither onnxruntime nor torch can be imported
    code = (
        "import sys; sys.modules['onnxruntime'] = None; sys.modules['torch'] = None\n"
        "import dlmodel\n"
        f"dlmodel.load({str(nuclei_model)!r})\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "no engine installed" in res.stderr and "pip install 'dlmodel[onnx]'" in res.stderr


def test_compare_refuses_a_different_shape_of_the_same_size():
    """Only singleton axes may differ; a transposed output is a mismatch (issue 17)."""
    from dlmodel.spec import Tolerance

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert dlmodel.api.compare(a[None], a, Tolerance(), "o").ok  # a batch of 1 kept
    assert not dlmodel.api.compare(a.reshape(4, 3), a, Tolerance(), "o").ok


def test_a_test_input_below_the_declared_minimum_runs_as_given(tmp_path, torch2d):
    """Some exporters (a 3D StarDist export) write a test input smaller than the rdf's minimum,
    with the network's output on it as given. Padded to the minimum, the borders differ; run as
    given (where the network takes it), the package's own test passes, and the report says so."""
    import hashlib
    import shutil

    import torch

    pkg = tmp_path / "pkg"
    shutil.copytree(Path(torch2d).parent, pkg)
    small = np.random.default_rng(1).normal(10, 3, (1, 1, 12, 10)).astype(np.float32)  # min is 16
    net = torch.jit.load(str(pkg / "weights.torchscript.pt"))
    x = (small - small.mean()) / (small.std() + 1e-6)  # the rdf's zero_mean_unit_variance
    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    rdf = pkg / "bioimageio.yaml"
    text = rdf.read_text()
    for name, arr in (("test_raw.npy", small), ("test_prob.npy", expected)):
        old = hashlib.sha256((pkg / name).read_bytes()).hexdigest()
        np.save(pkg / name, arr)
        text = text.replace(old, hashlib.sha256((pkg / name).read_bytes()).hexdigest())
    rdf.write_text(text)
    report = dlmodel.load(pkg, engine="torchscript").test()
    assert report.ok, report.summary()
    assert "y 12 (smallest allowed 16), x 10 (smallest allowed 16)" in report.note and "run as given" in report.summary()
    # a network that cannot take the given size is padded, as any image is: ONNX here can
    assert dlmodel.load(pkg, engine="onnx").test().ok
