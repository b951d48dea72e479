"""Model families end to end (issue 16): StarDist packages made by StarDist's own exporter, the
spec 0.5 label-making ops, and how they reach `dlmodel predict` and RunDLModel."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

import dlmodel
import zoo
from conftest import DSB_VAL, ROOT

FIXTURES = Path(__file__).parent / "fixtures"
STARDIST_ZIP = FIXTURES / "stardist2d_tiny" / "stardist2d_tiny.zip"


def dsb_image(i: int = 0) -> np.ndarray:
    return tifffile.imread(sorted((DSB_VAL / "images").glob("*.tif"))[i])


@pytest.fixture(scope="module")
def stardist_model():
    return dlmodel.load(STARDIST_ZIP, trust=True)


def test_stardist_exporter_package_passes_its_own_test(stardist_model):
    """StarDist's own export (format 0.4.9, TF SavedModel, 17-channel raw output)."""
    report = stardist_model.test()
    assert report.ok, report.summary()


def test_stardist_exporter_package_makes_objects_by_stardist(stardist_model):
    recipe = stardist_model.instance_recipe
    assert recipe["method"] == "stardist" and recipe["n_rays"] == 16 and recipe["from"] == "config.stardist"
    assert recipe["prob_threshold"] == pytest.approx(0.2472543865442276) and recipe["nms_threshold"] == 0.3
    # the exported network returns its output at the input's resolution (StarDist upsamples its grid)
    assert recipe["grid"] == [1, 1]
    assert stardist_model.makes_objects
    assert "StarDist: non-maximum suppression" in dlmodel.api.describe(stardist_model.spec)["objects"]


def test_stardist_objects_have_no_seams(stardist_model):
    """An image larger than one tile: NMS runs once on the whole stitched output, so tiled and
    whole-image predictions give the same objects (none cut or doubled at a tile seam)."""
    from dlmodel.instances import f1_at_iou

    image = np.tile(dsb_image(1), (2, 2))[:400, :360]
    tiled = stardist_model.predict(image, axes="yx", tile=160)
    whole = stardist_model.predict(image, axes="yx", tile=False)
    assert len(tiled.plan.tiles) >= 9 and len(whole.plan.tiles) == 1
    np.testing.assert_allclose(tiled["output"], whole["output"], atol=1e-4)
    a, b = stardist_model.labels(tiled), stardist_model.labels(whole)
    assert a.shape == image.shape and a.dtype == np.int32 and a.max() > 5
    tp, fp, fn = f1_at_iou(a, b)
    assert fp == 0 and fn == 0, (tp, fp, fn)


def test_stardist_labels_are_stardists_own(stardist_model):
    """The same NMS StarDist's predict_instances runs on the same probabilities and distances."""
    from stardist import non_maximum_suppression, polygons_to_label

    pred = stardist_model.predict(dsb_image(0), axes="yx")
    out = pred["output"]
    points, prob, dist = non_maximum_suppression(out[..., 1:], out[..., 0], grid=(1, 1), prob_thresh=0.2472543865442276,
                                                 nms_thresh=0.3)
    theirs = polygons_to_label(dist, points, prob=prob, shape=out.shape[:2])
    ours = stardist_model.labels(pred)
    assert ours.max() == len(np.unique(theirs)) - 1 > 0  # the same objects, numbered 1..N
    np.testing.assert_array_equal(ours > 0, theirs > 0)


@pytest.fixture(scope="module")
def stardist_op_package(tmp_path_factory):
    """A format 0.5 package whose output carries the spec's own stardist_postprocessing op: the
    exporter's network, and test outputs from bioimageio.core's implementation of the op."""
    from bioimageio.spec import ValidationContext, load_description, save_bioimageio_yaml_only
    import bioimageio.spec.model.v0_5 as v

    folder = tmp_path_factory.mktemp("stardist_op")
    zipfile.ZipFile(STARDIST_ZIP).extractall(folder)
    descr = load_description(folder / "rdf.yaml", perform_io_checks=False, format_version="latest")
    op = v.StardistPostprocessingDescr(id="stardist_postprocessing", kwargs=v.StardistPostprocessingKwargs2D(
        grid=(1, 1), prob_threshold=0.4, nms_threshold=0.3, b=2, n_rays=16))
    with ValidationContext(root=folder, perform_io_checks=False):
        out = descr.outputs[0]
        axes = [a if a.type != "channel" else v.ChannelAxis(channel_names=["labels"]) for a in out.axes]
        labelled = out.model_copy(update={"axes": axes, "postprocessing": [op],
                                          "data": v.IntervalOrRatioDataDescr(type="int32")})
        descr = descr.model_copy(update={"outputs": [labelled], "config": v.Config()})
        x = np.load(folder / "test_input.npy")
        expected = zoo.core_predict(descr, {"input": x})["output"]
        np.save(folder / "test_output.npy", expected.astype(np.int32))
        outputs = [labelled.model_copy(update={"test_tensor": zoo.file_descr(folder, "test_output.npy")})]
        descr = descr.model_copy(update={"outputs": outputs})
    rdf = folder / "bioimageio.yaml"
    save_bioimageio_yaml_only(descr, rdf)
    (folder / "rdf.yaml").unlink()
    return rdf, expected


def test_spec_stardist_postprocessing_op_matches_bioimageio_core(stardist_op_package):
    rdf, expected = stardist_op_package
    assert expected.max() > 3  # core found objects: the comparison means something
    model = dlmodel.load(rdf)
    report = model.test()
    assert report.ok, report.summary()
    assert model.instance_recipe == {"method": "labels", "output": "output", "fill_holes": False}
    assert model.makes_objects


def test_spec_stardist_postprocessing_op_gives_labels_from_predict(stardist_op_package):
    rdf, _ = stardist_op_package
    model = dlmodel.load(rdf)
    image = np.tile(dsb_image(1), (2, 2))[:400, :360]
    pred = model.predict(image, axes="yx", tile=160)
    labels = pred["output"]
    assert pred.axes["output"] == "yx" and labels.shape == image.shape and labels.dtype == np.int32
    whole = model.predict(image, axes="yx", tile=False)["output"]
    np.testing.assert_array_equal(labels, whole)
    np.testing.assert_array_equal(model.labels(pred), dlmodel.instances.relabel(labels))


def test_without_the_stardist_package_the_step_is_one_line(tmp_path):
    code = (
        "import sys; sys.modules['stardist'] = None\n"
        "import numpy as np, dlmodel\n"
        f"m = dlmodel.load({str(STARDIST_ZIP)!r}, trust=True)\n"
        "pred = m.predict(np.random.default_rng(0).random((128, 128), np.float32), axes='yx')\n"
        "try:\n"
        "    m.labels(pred)\n"
        "except dlmodel.DLModelError as e:\n"
        "    print('ERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERROR StarDist's non-maximum suppression needs the 'stardist' package" in out.stdout, out.stderr[-2000:]
    assert "pip install 'dlmodel[stardist]'" in out.stdout


def test_dlmodel_predict_writes_stardist_objects_without_being_asked(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", dsb_image(0))
    out = tmp_path / "out"
    res = subprocess.run([str(ROOT / ".venv/bin/dlmodel"), "predict", str(STARDIST_ZIP), str(images), "-o", str(out),
                          "--trust"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    labels = tifffile.imread(out / "a_labels.tif")
    raw = tifffile.imread(out / "a_output.tif")
    assert labels.shape == raw.shape[:2] and labels.max() > 0
    res = subprocess.run([str(ROOT / ".venv/bin/dlmodel"), "predict", str(STARDIST_ZIP), str(images), "-o",
                          str(tmp_path / "raw"), "--trust", "--no-labels"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and not (tmp_path / "raw" / "a_labels.tif").exists()


def test_a_named_3d_ray_set_is_looked_up_never_evaluated():
    from dlmodel.families import stardist

    recipe = {"prob_threshold": 0.5, "nms_threshold": 0.3, "rays": {"name": "__import__('os').system('true') or Rays_GoldenSpiral",
                                                                   "kwargs": {"n": 8}}}
    with pytest.raises(dlmodel.SpecError, match="is not one of StarDist's own"):
        stardist.labels(np.zeros((8, 8, 8, 9), np.float32), "zyxc", recipe)
