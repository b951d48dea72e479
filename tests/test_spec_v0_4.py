"""Format 0.4 rdfs that bioimageio.spec cannot convert to 0.5 are read as 0.4 (issue 16.1)."""
from __future__ import annotations

import numpy as np
import pytest

import dlmodel
import zoo
from conftest import _torch_module

FIXED = [1, 1, 64, 64]


@pytest.fixture(scope="module")
def fixed_with_halo(tmp_path_factory):
    """Like the spec's own unet2d_fixed_shape example: fixed input, fixed output with a halo."""
    folder = tmp_path_factory.mktemp("fixed04")
    _, net = _torch_module(folder, "TinyConv")
    x = np.random.default_rng(3).normal(10, 3, FIXED).astype(np.float32)
    rdf = zoo.build_v0_4(
        folder, "Fixed04", net,
        inputs=[dict(name="input", axes="bcyx", shape=FIXED, preprocessing=[
            {"name": "zero_mean_unit_variance", "kwargs": {"mode": "per_sample", "axes": "cyx"}}])],
        outputs=[dict(name="output", axes="bcyx", shape=FIXED, halo=[0, 0, 2, 2])],
        test_inputs={"input": x})
    return rdf, net


def test_bioimageio_spec_cannot_convert_it(fixed_with_halo):
    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr

    rdf, _ = fixed_with_halo
    assert isinstance(load_description(rdf, perform_io_checks=False, format_version="latest"), InvalidDescr)


def test_an_unconvertible_0_4_rdf_is_read_as_0_4_and_passes_its_test(fixed_with_halo):
    rdf, _ = fixed_with_halo
    model = dlmodel.load(rdf)
    assert model.spec.format_version.startswith("0.4")
    assert "read as format 0.4" in model.spec.format_note and "halo and fixed size" in model.spec.format_note
    pre = model.spec.inputs[0].preprocessing[0]
    assert pre.id == "zero_mean_unit_variance" and [str(a) for a in pre.kwargs.axes] == ["channel", "y", "x"]
    report = model.test()
    assert report.ok, report.summary()
    assert report.checks[0].max_abs_error < 1e-5


def test_a_fixed_output_with_a_halo_follows_its_input_and_tiles_any_image(fixed_with_halo):
    """Fixed size 64 + halo 2 means "output pixel = input pixel": a 150x130 image is tiled in
    64-pixel tiles with 2 pixels of context, and equals the network run on the whole image
    (away from the border, where padding differs)."""
    import torch

    rdf, net = fixed_with_halo
    model = dlmodel.load(rdf)
    image = np.random.default_rng(4).normal(10, 3, (150, 130)).astype(np.float32)
    pred = model.predict(image, axes="yx")
    out = pred["output"]
    assert out.shape == (150, 130) and len(pred.plan.tiles) > 4
    norm = (image - image.mean()) / (image.std() + 1e-6)
    with torch.no_grad():
        whole = net(torch.from_numpy(norm[None, None])).numpy()[0, 0]
    np.testing.assert_allclose(out[2:-2, 2:-2], whole[2:-2, 2:-2], atol=1e-4)


def test_the_architecture_file_of_a_0_4_rdf_is_checked_against_its_sha256(fixed_with_halo, tmp_path):
    rdf, _ = fixed_with_halo
    pkg = zoo.copy_package(rdf.parent, tmp_path / "pkg")
    with open(pkg / "tiny_arch.py", "a") as f:
        f.write("\n# changed\n")
    with pytest.raises(dlmodel.DLModelError, match="sha256 mismatch for .*tiny_arch.py"):
        dlmodel.load(pkg / "rdf.yaml")


def test_a_missing_test_tensor_of_a_0_4_rdf_is_named(fixed_with_halo, tmp_path):
    rdf, _ = fixed_with_halo
    pkg = zoo.copy_package(rdf.parent, tmp_path / "pkg")
    (pkg / "test_output.npy").unlink()
    with pytest.raises(dlmodel.DLModelError, match="'test_output.npy' named in the rdf is missing"):
        dlmodel.load(pkg / "rdf.yaml")


SPEC_EXAMPLES = zoo.Path(__file__).parent / "fixtures" / "spec_examples"


@pytest.mark.parametrize("rdf", ["unet2d_fixed_shape/v0_4.bioimageio.yaml", "upsample_test_model/v0_4.bioimageio.yaml"])
def test_the_spec_examples_reproduce_their_test_tensors(rdf):
    model = dlmodel.load(SPEC_EXAMPLES / rdf)
    report = model.test()
    assert report.ok, report.summary()


def test_the_spec_fixed_shape_example_predicts_an_image_larger_than_its_input():
    model = dlmodel.load(SPEC_EXAMPLES / "unet2d_fixed_shape/v0_4.bioimageio.yaml")
    image = np.load(SPEC_EXAMPLES / "unet2d_fixed_shape/test_input.npy")[0, 0]
    big = np.tile(image, (2, 2))[:400, :300]  # 400x300 from the 256x256 test input
    out = model.predict(big, axes="yx")["output"]
    assert out.shape == (400, 300) and np.isfinite(out).all()
    # the first tile sees the test input's top-left corner with the same context: same values there
    expected = np.load(SPEC_EXAMPLES / "unet2d_fixed_shape/test_output.npy")[0, 0]
    assert np.corrcoef(out[20:200, 20:200].ravel(), expected[20:200, 20:200].ravel())[0, 1] > 0.99
