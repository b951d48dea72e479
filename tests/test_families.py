"""Model families end to end (issue 16): StarDist packages made by StarDist's own exporter, the
spec 0.5 label-making ops, and how they reach `dlmodel predict` and RunDLModel."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

import dlmodel
import zoo
from conftest import DSB_VAL, ROOT, _torch_module

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
    thresholds = stardist_model.spec.config["stardist"]["thresholds"]  # what StarDist's optimize_thresholds chose
    assert recipe["prob_threshold"] == thresholds["prob"] and recipe["nms_threshold"] == thresholds["nms"]
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
    thresholds = stardist_model.spec.config["stardist"]["thresholds"]
    points, prob, dist = non_maximum_suppression(out[..., 1:], out[..., 0], grid=(1, 1), prob_thresh=thresholds["prob"],
                                                 nms_thresh=thresholds["nms"])
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
        with contextlib.chdir(folder):  # bioimageio.core unpacks TF weights into the working folder
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
    assert expected.max() >= 2  # core found objects (in the 128x128 test input): the comparison means something
    model = dlmodel.load(rdf)
    report = model.test()
    assert report.ok, report.summary()
    assert model.instance_recipe == {"method": "labels", "output": "output", "min_size": 0, "fill_holes": False}
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


# ----------------------------------------------------------------------------- Cellpose
CELLPOSE_ZIP = FIXTURES / "cellpose_tiny" / "cellpose_tiny.zip"


@pytest.fixture(scope="module")
def cellpose_model():
    return dlmodel.load(CELLPOSE_ZIP, trust=True)


def normalised(image: np.ndarray) -> np.ndarray:
    """Cellpose's own normalize99 (what its exports expect and do not write into the rdf)."""
    lo, hi = np.percentile(image, [1, 99])
    return ((image - lo) / (hi - lo)).astype(np.float32)


def test_cellpose_export_passes_its_own_test_with_both_weights(cellpose_model):
    """Cellpose 3.1's exporter: format 0.5.3, a state dict whose architecture's load_state_dict
    takes no strict argument (bioimageio.core 0.11 fails there), and traced TorchScript."""
    for fmt in ("pytorch_state_dict", "torchscript"):
        report = cellpose_model.test(fmt)
        assert report.ok, report.summary()


def test_cellpose_export_makes_objects_by_cellpose_flow_dynamics(cellpose_model):
    assert cellpose_model.instance_recipe == {"method": "cellpose", "output": "flow", "cellprob_threshold": 0.0,
                                              "flow_threshold": 0.4, "min_size": 15, "from": "Cellpose's defaults"}
    assert cellpose_model.makes_objects
    assert any("normalize99" in n for n in cellpose_model.spec.notes)


def test_cellpose_objects_are_cellposes_own(cellpose_model):
    """Cellpose's flow dynamics on the whole output. (A Cellpose network adds a style vector
    pooled over its whole input to every pixel, so, as in Cellpose's own tiling, tiles differ
    a little from a whole-image pass; the export declares no halo. Automatic tiling runs images
    up to about 1 Mpx in one pass.)"""
    pytest.importorskip("cellpose")  # an extra: .venv-np2 (numpy 2) has none (cellpose 3 needs numpy < 2.1)
    from cellpose.dynamics import compute_masks
    from cellpose.utils import fill_holes_and_remove_small_masks

    image = normalised(np.tile(dsb_image(2), (2, 2))[:400, :352])
    x = np.stack([image, np.zeros_like(image)])
    whole = cellpose_model.predict(x, axes="cyx")
    assert len(whole.plan.tiles) == 1 and whole.axes["flow"] == "cyx"
    ours = cellpose_model.labels(whole)
    flow = whole["flow"]
    theirs = fill_holes_and_remove_small_masks(compute_masks(flow[:2], flow[2], cellprob_threshold=0.0,
                                                             flow_threshold=0.4), min_size=15)
    assert ours.shape == image.shape and ours.max() == len(np.unique(theirs)) - 1
    np.testing.assert_array_equal(ours > 0, theirs > 0)


@pytest.fixture(scope="module")
def cellpose_op_package(tmp_path_factory):
    """A format 0.5 package with the spec's cellpose_flow_dynamics op; its network passes its
    input through, and the input is flows + cell probability made by Cellpose from known
    labels, so the op must find those cells again. Test outputs from bioimageio.core's op."""
    import bioimageio.spec.model.v0_5 as v
    pytest.importorskip("cellpose")
    from cellpose.dynamics import masks_to_flows

    truth = np.zeros((96, 80), np.int32)
    yy, xx = np.mgrid[:96, :80]
    for k, (cy, cx, r) in enumerate([(20, 20, 9), (25, 55, 11), (60, 30, 12), (70, 62, 8)], 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    flows = 5 * masks_to_flows(truth)  # Cellpose's networks are trained on 5x its unit flows
    cellprob = np.where(truth > 0, 5.0, -5.0)
    x = np.concatenate([flows, cellprob[None]]).astype(np.float32)[None]  # (1, 3, y, x)

    folder = tmp_path_factory.mktemp("cellpose_op")
    _, net = _torch_module(folder, "Passthrough")
    weights = zoo.torch_weights(folder, net, [x], ["pytorch_state_dict", "torchscript"], {"callable": "Passthrough"})
    op = v.CellposeFlowDynamicsDescr(id="cellpose_flow_dynamics", kwargs=v.CellposeFlowDynamicsKwargs(
        cellprob_threshold=0.0, flow_threshold=0.4, do_3D=False, min_size=15))

    def inputs(test_file):
        return [v.InputTensorDescr(id="flows", test_tensor=test_file("flows"), axes=[
            v.BatchAxis(), v.ChannelAxis(channel_names=["flow_y", "flow_x", "cellprob"]),
            v.SpaceInputAxis(id="y", size=v.ParameterizedSize(min=16, step=8)),
            v.SpaceInputAxis(id="x", size=v.ParameterizedSize(min=16, step=8))])]

    def outputs(test_file):
        return [v.OutputTensorDescr(id="masks", test_tensor=test_file("masks"), postprocessing=[op],
                                    data=v.IntervalOrRatioDataDescr(type="uint16"), axes=[
            v.BatchAxis(), v.ChannelAxis(channel_names=["masks"]),
            v.SpaceOutputAxis(id="y", size=v.SizeReference(tensor_id="flows", axis_id="y")),
            v.SpaceOutputAxis(id="x", size=v.SizeReference(tensor_id="flows", axis_id="x"))])]

    rdf = zoo.build(folder, "CellposeOp", inputs, outputs, weights, {"flows": x}, reference_format="torchscript")
    return rdf, truth


def test_spec_cellpose_flow_dynamics_op_matches_bioimageio_core_and_finds_the_cells(cellpose_op_package):
    from dlmodel.instances import f1_at_iou

    rdf, truth = cellpose_op_package
    expected = np.load(rdf.parent / "test_masks.npy")
    assert f1_at_iou(expected[0, 0], truth) == (4, 0, 0)  # core's op found the four cells
    model = dlmodel.load(rdf)
    report = model.test()
    assert report.ok, report.summary()
    flows = np.load(rdf.parent / "test_flows.npy")[0]
    pred = model.predict(flows, axes="cyx")
    assert pred.axes["masks"] == "cyx"  # the input was given with channels: the output keeps its one channel
    masks = pred.channel("masks")
    assert masks.shape == truth.shape and f1_at_iou(masks, truth) == (4, 0, 0)
    assert model.instance_recipe["method"] == "labels" and model.makes_objects


@pytest.mark.parametrize("family, package, image, axes, message", [
    ("stardist", STARDIST_ZIP, (128, 128), "yx", "StarDist's non-maximum suppression needs the 'stardist' package"),
    ("cellpose", CELLPOSE_ZIP, (2, 64, 64), "cyx", "Cellpose's flow dynamics needs the 'cellpose' package"),
])
def test_without_the_family_package_the_step_is_one_line(family, package, image, axes, message):
    code = (
        f"import sys; sys.modules[{family!r}] = None\n"
        "import numpy as np, dlmodel\n"
        f"m = dlmodel.load({str(package)!r}, trust=True)\n"
        f"pred = m.predict(np.random.default_rng(0).random({image!r}, np.float32), axes={axes!r})\n"
        "try:\n"
        "    m.labels(pred)\n"
        "except dlmodel.DLModelError as e:\n"
        "    print('ERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert f"ERROR {message}" in out.stdout, out.stderr[-2000:]
    assert f"pip install 'dlmodel[{family}]'" in out.stdout


# ----------------------------------------------------------------------------- legacy Keras
LEGACY = FIXTURES / "legacy_keras"


@pytest.mark.parametrize("name", ["unet_upsampling", "unet_conv2dtranspose"])
def test_a_tf_keras_2_h5_loads_and_reproduces_tf_2_15(name):
    """.h5 files written by a real tf.keras 2.15 (tests/fixtures/make/make_legacy_keras.py). Keras 3
    reads the UpSampling2D U-Net; it refuses the Conv2DTranspose one ("Unrecognized keyword
    arguments passed to Conv2DTranspose: {'groups': 1}"), which loads through tf_keras."""
    from dlmodel.engines import KerasHdf5Engine

    engine = KerasHdf5Engine(None, path=LEGACY / f"{name}.h5")
    out = engine.run([np.load(LEGACY / f"{name}.input.npy")])[0]
    expected = np.load(LEGACY / f"{name}.output.npy")
    np.testing.assert_allclose(out, expected, atol=1e-5)
    loader = type(engine.model).__module__.split(".")[0]
    assert loader == ("keras" if name == "unet_upsampling" else "tf_keras")


def test_a_tf_keras_2_h5_without_tf_keras_is_one_line_naming_it():
    code = (
        "import sys; sys.modules['tf_keras'] = None\n"
        "import dlmodel\n"
        "from dlmodel.engines import KerasHdf5Engine\n"
        "try:\n"
        f"    KerasHdf5Engine(None, path={str(LEGACY / 'unet_conv2dtranspose.h5')!r})\n"
        "except dlmodel.DLModelError as e:\n"
        "    print('ERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ERROR"))
    assert "cannot read unet_conv2dtranspose.h5, written by tf.keras 2.x" in line and "pip install --no-deps 'tf_keras" in line
    assert "groups" in line


def test_a_legacy_keras_h5_packaged_and_tested(tmp_path):
    """`dlmodel package` on the tf.keras 2.15 .h5, then `dlmodel test` on the package."""
    sample = np.load(LEGACY / "unet_conv2dtranspose.input.npy")[0, ..., 0]
    np.save(tmp_path / "sample.npy", sample)
    dlmodel_cli = str(ROOT / ".venv/bin/dlmodel")
    res = subprocess.run([dlmodel_cli, "package", str(LEGACY / "unet_conv2dtranspose.h5"), "--sample", str(tmp_path / "sample.npy"),
                          "-o", str(tmp_path / "pkg"), "--name", "legacy U-Net", "--description", "tf.keras 2.15 U-Net",
                          "--author", "dlmodel tests", "--size", "16,16"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([dlmodel_cli, "test", str(tmp_path / "pkg")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "passed (keras_hdf5" in res.stdout, res.stdout + res.stderr[-2000:]


# ----------------------------------------------------------------------------- CARE / Noise2Void
def test_n2v_export_with_float64_inputs_is_read_and_reproduces_its_test():
    """n2v 0.3.3's export_TF declares float64 inputs, which format 0.4.10 refuses; dlmodel reads
    them as float32 (the engine gives the SavedModel its float64) and says so."""
    model = dlmodel.load(FIXTURES / "n2v_tiny" / "n2v_tiny.bioimage.io.zip", trust=True)
    assert "float64" in model.spec.format_note
    report = model.test()
    assert report.ok, report.summary()
    image = dsb_image(0).astype(np.float32)  # 256x256 through a fixed 64x64 network: tiled
    pred = model.predict(image, axes="yx")
    assert pred["output0"].shape == image.shape and len(pred.plan.tiles) > 1
    assert 1 < float(pred["output0"].mean()) < float(image.max())  # the image's intensity scale (its scale_linear), not 0-1


def test_careamics_export_names_what_to_install_without_careamics():
    """CAREamics 0.3.5's export_to_bmz names its network as the library class
    careamics.models.unet.UNet; careamics cannot live beside this stack (it pins torch 2.11)."""
    import importlib.util

    if importlib.util.find_spec("careamics") is not None:
        pytest.skip("careamics is installed here")
    with pytest.raises(dlmodel.EngineError, match=r"careamics\.models\.unet\.UNet .* pip install 'careamics==0\.3\.5' \(as "
                                                  r"the package's environment file pins it\)"):
        dlmodel.load(FIXTURES / "careamics_n2v_tiny" / "careamics_n2v_tiny.zip", trust=True)


def test_careamics_export_runs_where_careamics_is_installed():
    """Run locally with DLMODEL_CAREAMICS_PYTHON=/path/to/env/bin/python (an environment with
    careamics 0.3.5: tests/fixtures/make/make_careamics.py says how to make it)."""
    import os

    python = os.environ.get("DLMODEL_CAREAMICS_PYTHON")
    if not python:
        pytest.skip("set DLMODEL_CAREAMICS_PYTHON to an environment with careamics")
    package = FIXTURES / "careamics_n2v_tiny" / "careamics_n2v_tiny.zip"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # in that environment, and from this one through a worker in that environment
    for cmd in ([python, "-m", "dlmodel.cli", "test", str(package), "--trust"],
                [sys.executable, "-m", "dlmodel.cli", "test", str(package), "--trust", "--python", python]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        assert res.returncode == 0 and "passed (pytorch_state_dict)" in res.stdout, res.stdout + res.stderr[-2000:]


def test_stardist_3d_exporter_package_makes_polyhedra_by_stardist():
    """StarDist3D's own export: 32 rays on a golden spiral (config.stardist.config.rays_json),
    NMS of polyhedra on the whole volume, as StarDist's own functions give them."""
    from stardist import Rays_GoldenSpiral, non_maximum_suppression_3d, polyhedron_to_label

    model = dlmodel.load(FIXTURES / "stardist3d_tiny" / "stardist3d_tiny.zip", trust=True)
    report = model.test()
    assert report.ok, report.summary()
    recipe = model.instance_recipe
    assert recipe["method"] == "stardist" and recipe["n_rays"] == 32 and recipe["grid"] == [1, 1, 1]
    assert recipe["rays"] == {"name": "Rays_GoldenSpiral", "kwargs": {"anisotropy": None, "n": 32}}
    volume = tifffile.imread(ROOT.parent / "shared" / "data" / "nuclei3d_synthetic" / "img3d.tif")
    pred = model.predict(volume, axes="zyx")
    out = pred["output"]
    assert pred.axes["output"] == "zyxc" and out.shape == volume.shape + (33,)
    # a threshold the tiny network's probabilities reach, so that there are objects to compare
    threshold = float(np.quantile(out[..., 0], 0.995))
    ours = dlmodel.instances.from_recipe(out, "zyxc", {**recipe, "prob_threshold": threshold})
    rays = Rays_GoldenSpiral(32)
    dist = np.maximum(1e-3, out[..., 1:])  # as StarDist's own predict clamps them
    points, prob, dist = non_maximum_suppression_3d(dist, out[..., 0], rays, grid=(1, 1, 1), b=2,
                                                    prob_thresh=threshold, nms_thresh=recipe["nms_threshold"])
    theirs = polyhedron_to_label(dist, points, rays=rays, prob=prob, shape=volume.shape, verbose=False)
    assert ours.shape == volume.shape and ours.max() == len(np.unique(theirs)) - 1 > 0
    np.testing.assert_array_equal(ours > 0, theirs > 0)


def test_the_family_registry_is_every_module_of_the_package():
    """A family is one module of dlmodel.families: the registry finds it, and its methods and label
    ops reach instances, processing and api through it (an op that makes labels always runs on the
    whole output: no object is cut at a tile seam)."""
    import pkgutil
    import types

    from dlmodel import families, processing

    names = {m.name for m in pkgutil.iter_modules(families.__path__) if not m.name.startswith("_")}
    assert set(families.registry()) == names == {"stardist", "cellpose", "deepimagej"}
    for module in families.registry().values():
        assert isinstance(module.METHODS, tuple) and isinstance(module.LABEL_OPS, tuple)
        for op in module.LABEL_OPS:
            assert processing.needs_statistics(types.SimpleNamespace(id=op)), op
    assert families.methods()["stardist"] is families.registry()["stardist"]
    assert set(families.label_ops()) == {"stardist_postprocessing", "cellpose_flow_dynamics"}
    assert list(families.registry())[-1] == "deepimagej"  # exporters' own configs before macros
