"""From outputs to objects, and feeding CellProfiler-style image lists to model inputs."""
import numpy as np
import pytest
from scipy import ndimage as ndi

import dlmodel
from dlmodel.axes import assign_images
from dlmodel.instances import InstanceOptions, centers, f1_at_iou, to_labels


def _disk(shape, center, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= r**2


def test_watershed_splits_two_touching_nuclei_that_thresholding_merges():
    prob = np.zeros((60, 80), np.float32)
    prob[_disk(prob.shape, (30, 28), 10) | _disk(prob.shape, (30, 46), 10)] = 0.9
    assert to_labels(prob, InstanceOptions("threshold")).max() == 1
    split = to_labels(prob, InstanceOptions("watershed", diameter=20))
    assert split.max() == 2
    assert abs((split == 1).sum() - (split == 2).sum()) < 40


def test_min_size_fill_holes_and_border():
    prob = np.zeros((50, 50), np.float32)
    prob[_disk(prob.shape, (25, 25), 8)] = 1
    prob[25, 25] = 0  # a hole
    prob[1:3, 1:3] = 1  # a speck at the border
    labels = to_labels(prob, InstanceOptions("threshold", min_size=10, fill_holes=True))
    assert labels.max() == 1 and labels[25, 25] == 1
    assert to_labels(prob, InstanceOptions("threshold", fill_holes=False))[25, 25] == 0
    prob[40:50, 40:50] = 1  # touches the border
    kept = to_labels(prob, InstanceOptions("threshold", min_size=10, discard_border=True))
    assert kept.max() == 1 and kept[45, 45] == 0


def _fill_holes_one_by_one(labels):
    """The obvious, slow reference: each enclosed background region, with its ring of neighbours."""
    from scipy import ndimage as ndi

    out = labels.copy()
    holes, n = ndi.label(ndi.binary_fill_holes(labels > 0) & (labels == 0))
    for i in range(1, n + 1):
        region = holes == i
        around = labels[ndi.binary_dilation(region) & ~region]
        if (around == around[0]).all():
            out[region] = around[0]
    return out


@pytest.mark.parametrize("shape", [(40, 60), (12, 30, 30)])
def test_fill_holes_fills_only_holes_enclosed_by_one_object(shape):
    from scipy import ndimage as ndi

    from dlmodel.instances import fill_holes

    rng = np.random.default_rng(len(shape))
    labels, n = ndi.label(ndi.gaussian_filter(rng.random(shape), 1.3) > 0.5)
    labels[rng.random(shape) < 0.05] = 0  # holes inside objects and on their edges
    ring = np.zeros((9, 9), np.int32)
    ring[1:8, 1:8], ring[4, 4], ring[1:8, 1:4] = 1, 0, 2  # a hole between two objects stays
    plane = (shape[0] // 2,) if len(shape) == 3 else ()
    labels[plane + (slice(20, 29), slice(20, 29))] = ring + n * (ring > 0)
    filled = fill_holes(labels)
    assert np.array_equal(filled, _fill_holes_one_by_one(labels))
    assert (filled != labels).sum() > 10 and filled[plane + (24, 24)] == 0


def test_label_outputs_are_renumbered():
    labels = np.zeros((10, 10), np.int32)
    labels[1:3, 1:3], labels[5:8, 5:8] = 7, 42
    out = to_labels(labels, InstanceOptions("labels", min_size=0, fill_holes=False))
    assert sorted(np.unique(out)) == [0, 1, 2]


def test_to_labels_defaults_are_the_default_recipe():
    """One default step: ``to_labels(x)``, ``from_recipe`` with the resolved default recipe (what
    Model.labels, `predict --labels`, `plate` and RunDLModel run) and InstanceOptions agree."""
    from dlmodel.instances import DEFAULT_RECIPE, from_recipe, resolve_recipe

    rng = np.random.default_rng(0)
    prob = ndi.gaussian_filter(rng.random((96, 96)), 3)
    prob = (prob - prob.min()) / np.ptp(prob)
    assert {k: getattr(InstanceOptions(), k) for k in DEFAULT_RECIPE} == DEFAULT_RECIPE
    np.testing.assert_array_equal(to_labels(prob), from_recipe(prob, "yx", resolve_recipe(None)))
    assert to_labels(prob).max() > 1


def test_inputs_are_never_changed():
    """scikit-image's rule: to_labels and Prediction.channel hand back new arrays (issue 17)."""
    labels = np.zeros((10, 10), np.int64)
    labels[1:3, 1:3], labels[5:8, 5:8], labels[0, 9] = 7, 42, -3
    before = labels.copy()
    to_labels(labels, InstanceOptions("labels", fill_holes=False))
    np.testing.assert_array_equal(labels, before)
    from dlmodel.api import Prediction

    pred = Prediction({"p": np.ones((4, 4), np.float32)}, {"p": "yx"}, None)
    pred.channel("p")[:] = 5
    assert (pred["p"] == 1).all()


def test_3d_objects_and_centers():
    vol = np.zeros((20, 30, 30), np.float32)
    vol[5:11, 5:12, 5:12] = 1
    vol[12:18, 15:25, 15:25] = 1
    labels = to_labels(vol, InstanceOptions("watershed", min_size=5))
    assert labels.max() == 2
    c = centers(labels)
    assert c.shape == (2, 3)
    np.testing.assert_allclose(sorted(c[:, 0]), [7.5, 14.5])


def test_f1_counts():
    truth = np.zeros((20, 20), int)
    truth[2:8, 2:8], truth[10:16, 10:16] = 1, 2
    pred = np.zeros_like(truth)
    pred[2:8, 2:8] = 5  # exact
    pred[10:12, 10:12] = 3  # IoU 4/36: no match
    pred[17:19, 0:3] = 9  # false positive
    assert f1_at_iou(pred, truth) == (1, 2, 1)
    assert f1_at_iou(np.zeros_like(truth), truth) == (0, 0, 2)


def test_unknown_method():
    with pytest.raises(dlmodel.InputError, match="unknown object method"):
        to_labels(np.zeros((3, 3)), InstanceOptions("magic"))


# --- assign_images: what CellProfiler hands over, onto the model's inputs ---------------------

def test_grey_images_become_channels_and_colour_images_fit_directly(allops):
    model = dlmodel.load(allops)
    a, b = np.ones((40, 32)), np.zeros((40, 32))
    arrays, axes = assign_images(model.spec.inputs, [(a, "yx"), (b, "yx"), (a, "yx"), (b, "yx")], ["A", "B", "C", "D"])
    assert axes == {"x1": "cyx", "x2": "yx", "x3": "yx"} and arrays["x1"].shape == (2, 40, 32)
    rgb = np.zeros((40, 32, 2))
    arrays, axes = assign_images(model.spec.inputs, [(rgb, "yxc"), (a, "yx"), (b, "yx")], ["RGB", "C", "D"])
    assert axes["x1"] == "yxc"
    out = model.predict(arrays, axes=axes)
    assert out["y3"].shape == (3, 40, 32)


@pytest.mark.parametrize(
    "images, message",
    [
        ([(np.ones((8, 8)), "yx")], r"wants 2 channel\(s\): give 2 grey images"),
        ([(np.ones((8, 8, 3)), "yxc"), (np.ones((8, 8)), "yx"), (np.ones((8, 8)), "yx")], "has 3 channels; model input 'x1' wants 2"),
        ([(np.ones((8, 8)), "yx"), (np.ones((9, 8)), "yx"), (np.ones((8, 8)), "yx"), (np.ones((8, 8)), "yx")], "differ in size"),
        ([(np.ones((8, 8)), "yx")] * 5, "too many"),
    ],
)
def test_images_that_do_not_fit_the_inputs(allops, images, message):
    spec = dlmodel.load(allops).spec
    with pytest.raises(dlmodel.InputError, match=message):
        assign_images(spec.inputs, images, [f"img{i}" for i in range(len(images))])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.uint64])
def test_relabel_matches_skimage(dtype):
    from skimage.segmentation import relabel_sequential

    labels = np.random.default_rng(0).choice([0, 3, 7, 8, 50, 51, 200], size=(40, 30)).astype(dtype)
    if dtype == np.int64:
        labels[0, 0] = 2**40  # sparse and huge: a lookup table would not fit
    labels[5, :3] = 9  # a small object
    out = dlmodel.instances.relabel(labels)
    assert out.dtype == np.int32 and out.max() == len(np.unique(labels)) - 1
    np.testing.assert_array_equal(out, relabel_sequential(labels.astype(np.int64))[0])
    # objects under min_size become background in the same pass (here 9, and the single 2**40 pixel)
    values, counts = np.unique(labels, return_counts=True)
    small = values[(values > 0) & (counts < 60)]
    assert 9 in small
    expected = relabel_sequential(np.where(np.isin(labels, small), 0, labels).astype(np.int64))[0]
    np.testing.assert_array_equal(dlmodel.instances.relabel(labels, 60), expected)


def test_relabel_negative_numbers_become_background():
    # (a negative number sends relabel down its np.unique path, small or huge label numbers alike)
    np.testing.assert_array_equal(dlmodel.instances.relabel(np.array([[-3, 0, 5, 5]])), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(dlmodel.instances.relabel(np.array([[-3, 0, 2**40, 9]]), 1), [[0, 0, 2, 1]])


def test_one_answer_to_which_objects():
    """resolve_recipe: the package's recipe under auto (finishing choices on top), the default
    step otherwise; an output or channel the recipe would ignore is refused (issue 17)."""
    from dlmodel.instances import DEFAULT_RECIPE, resolve_recipe

    assert resolve_recipe(None) == DEFAULT_RECIPE
    assert resolve_recipe(None, "threshold", output="p", channel=1, threshold=0.7) == {
        **DEFAULT_RECIPE, "method": "threshold", "threshold": 0.7, "output": "p", "channel": 1}
    recipe = {"output": "prediction", "method": "seeded_watershed", "foreground": [1, 2], "seeds": 1, "min_size": 15}
    got = resolve_recipe(recipe, output="prediction", channel=0, threshold=0.9, min_size=40, discard_border=True)
    assert got == {**recipe, "min_size": 40, "discard_border": True}  # the recipe's threshold stays
    with pytest.raises(dlmodel.InputError, match="recipe makes objects from output 'prediction', not 'other'") as err:
        resolve_recipe(recipe, output="other")
    assert err.value.choice == "output"  # adapters point at their own setting for it
    with pytest.raises(dlmodel.InputError, match="from channel 1, not 3") as err:
        resolve_recipe({"output": "p", "method": "threshold"}, output="p", channel=2)
    assert err.value.choice == "channel"
    with pytest.raises(dlmodel.InputError, match="unknown object method"):
        resolve_recipe(None, "magic")
