"""deepImageJ-era packages end to end (issue 16.5): macros listed in config.deepimagej run as
their numpy equivalents where the rdf's ops do not already do the same, instance macros make the
package's objects, and an unrecognised macro is named by info, test and RunDLModel and warned
about once by predict. (The macros' numbers against ImageJ: tests/test_deepimagej.py.)"""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import dlmodel
import zoo
from conftest import ROOT, _torch_module

MACROS = Path(__file__).parent / "fixtures" / "deepimagej_macros"


def _package(folder: Path, net_name: str, x: np.ndarray, channels_in, channels_out, pre, post, reference):
    import bioimageio.spec.model.v0_5 as v

    _, net = _torch_module(folder, net_name)
    for name in pre + post:
        src = MACROS / name if (MACROS / name).exists() else None
        if src is not None:
            shutil.copy(src, folder / name)
    weights = zoo.torch_weights(folder, net, [x], ["pytorch_state_dict", "torchscript"], {"callable": net_name})

    def inputs(test_file):
        return [v.InputTensorDescr(id="input", test_tensor=test_file("input"), axes=[
            v.BatchAxis(), v.ChannelAxis(channel_names=channels_in),
            v.SpaceInputAxis(id="y", size=v.ParameterizedSize(min=16, step=8)),
            v.SpaceInputAxis(id="x", size=v.ParameterizedSize(min=16, step=8))])]

    def outputs(test_file):
        return [v.OutputTensorDescr(id="output", test_tensor=test_file("output"), axes=[
            v.BatchAxis(), v.ChannelAxis(channel_names=channels_out),
            v.SpaceOutputAxis(id="y", size=v.SizeReference(tensor_id="input", axis_id="y")),
            v.SpaceOutputAxis(id="x", size=v.SizeReference(tensor_id="input", axis_id="x"))])]

    config = {"deepimagej": {"prediction": {
        "preprocess": [{"spec": "ij.IJ::runMacroFile", "kwargs": m} for m in pre] or [{"spec": None}],
        "postprocess": [{"spec": "ij.IJ::runMacroFile", "kwargs": m} for m in post] or [{"spec": None}]}}}
    return zoo.build(folder, "deepImageJ-era", inputs, outputs, weights, {"input": x}, reference=reference,
                     config=config, attachments=pre + post)


@pytest.fixture(scope="module")
def normalising_package(tmp_path_factory):
    """No rdf pre-processing: deepImageJ's per_sample_scale_range.ijm is the only normalisation,
    so dlmodel must run it; plus a macro dlmodel does not know."""
    from dlmodel.families.deepimagej import step_from_text

    folder = tmp_path_factory.mktemp("dij_norm")
    (folder / "my_filter.ijm").write_text('run("Gaussian Blur...", "sigma=2 stack");\n')
    x = np.random.default_rng(5).gamma(2.0, 40.0, (1, 1, 48, 40)).astype(np.float32)
    macro = step_from_text("per_sample_scale_range.ijm", "preprocess", (MACROS / "per_sample_scale_range.ijm").read_text())

    def reference(inputs):
        import torch

        mod, net = _torch_module(folder, "TinyConv")
        normalised = macro.apply(inputs["input"], "bcyx")
        with torch.no_grad():
            return {"output": net(torch.from_numpy(normalised)).numpy()}

    return _package(folder, "TinyConv", x, ["grey"], ["out"], ["per_sample_scale_range.ijm", "my_filter.ijm"], [],
                    reference), x


def test_a_macro_the_rdf_does_not_do_runs_and_the_package_passes_its_test(normalising_package):
    rdf, _ = normalising_package
    model = dlmodel.load(rdf)
    assert [m.kind for m in model.spec.macros] == ["per_sample_scale_range"]
    report = model.test()
    assert report.ok, report.summary()
    assert report.checks[0].max_abs_error < 1e-5


def test_without_the_macro_the_outputs_would_differ(normalising_package):
    """The test above can fail: the network on the raw image gives other numbers."""
    import dataclasses

    rdf, x = normalising_package
    model = dlmodel.load(rdf)
    model.spec = dataclasses.replace(model.spec, macros=())
    assert not model.test().ok


def test_an_unrecognised_macro_is_named_by_info_and_test_and_warned_once(normalising_package, caplog):
    rdf, x = normalising_package
    info = dlmodel.api.describe(dlmodel.package.open_spec(rdf)[0])
    assert any("my_filter.ijm: not recognised" in n and "used without it" in n for n in info["notes"])
    res = subprocess.run([str(ROOT / ".venv/bin/dlmodel"), "test", str(rdf)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "note: not run by dlmodel (not recognised): my_filter.ijm" in res.stdout
    model = dlmodel.load(rdf)
    with caplog.at_level(logging.WARNING, logger="dlmodel"):
        model.predict(x[0, 0], axes="yx")
        model.predict(x[0, 0], axes="yx")
    warned = [r for r in caplog.records if "my_filter.ijm" in r.getMessage()]
    assert len(warned) == 1


@pytest.fixture(scope="module")
def contours_package(tmp_path_factory):
    """Background / foreground / contour probabilities (made from known nuclei; the network
    passes them through) and deepImageJ's Contours2InstanceSegmentation.ijm as the package's
    own step for objects (as in the spec's unet2d_keras_tf2 example)."""
    from skimage.segmentation import find_boundaries

    truth = np.zeros((64, 72), np.int32)
    yy, xx = np.mgrid[:64, :72]
    for k, (cy, cx, r) in enumerate([(16, 16, 8), (18, 40, 9), (44, 22, 10), (46, 54, 9), (30, 60, 6)], 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    contour = find_boundaries(truth, mode="inner").astype(np.float32)
    fg = ((truth > 0) & (contour == 0)).astype(np.float32)
    x = np.stack([1 - fg - contour, fg, contour])[None].astype(np.float32)
    folder = tmp_path_factory.mktemp("dij_contours")
    rdf = _package(folder, "Passthrough", x, ["background", "foreground", "contour"], ["background", "foreground",
                   "contour"], [], ["Contours2InstanceSegmentation.ijm"], lambda inputs: {"output": inputs["input"]})
    return rdf, x, truth


def test_an_instance_macro_makes_the_packages_objects(contours_package):
    from dlmodel.instances import f1_at_iou

    rdf, x, truth = contours_package
    model = dlmodel.load(rdf)
    recipe = model.instance_recipe
    assert recipe["method"] == "deepimagej" and recipe["kind"] == "contours_to_instances"
    assert model.makes_objects and model.spec.macros == ()  # not an output step: the objects' step
    assert "Contours2InstanceSegmentation.ijm" in dlmodel.api.describe(model.spec)["objects"]
    pred = model.predict(x[0], axes="cyx")
    labels = model.labels(pred)
    assert labels.shape == truth.shape
    tp, fp, fn = f1_at_iou(labels, truth)
    assert tp == 5 and fp == 0 and fn == 0
