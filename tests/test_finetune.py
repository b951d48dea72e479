"""dlmodel finetune: tiny real networks (the default model's U-Net at a quarter of its width)
trained a few epochs on synthetic nuclei; the packages they write are checked by
bioimageio.spec, `dlmodel test` and bioimageio.core's test_model."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import dlmodel
import dlmodel.packaging as packaging
from dlmodel.errors import DLModelError

ROOT = Path(__file__).resolve().parents[1]
ARCH = ROOT / "models" / "nuclei_default" / "nuclei_unet.py"
PRE = [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}},
       {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
META = dict(name="tiny nuclei", description="a tiny U-Net", authors=["A. Tester"], license="MIT",
            cite=[{"text": "dlmodel tests", "doi": "10.5281/zenodo.0000000"}], tags=["test"])
FAST = dict(epochs=2, crop=48, batch_size=2, learning_rate=3e-3, progress=False)
LEARN = {**FAST, "epochs": 60, "patience": 60, "learning_rate": 1e-2}  # enough for held-out F1 to rise from 0


def nuclei(seed: int, shape=(80, 96)):
    """Bright disks (some touching) on a noisy background, and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for n in range(1, 9):
        cy, cx, r = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8), rng.integers(5, 9)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)] = n
    image = (30 + 120 * (labels > 0) + rng.normal(0, 12, shape)).clip(0, 255).astype(np.uint8)
    return image, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("annotated")
    for sub in ("images", "labels"):
        (folder / sub).mkdir()
    for i in range(5):
        image, labels = nuclei(i)
        tifffile.imwrite(folder / "images" / f"site{i}.tif", image)
        tifffile.imwrite(folder / "labels" / f"site{i}.tif", labels)
    return folder


def tiny(folder: Path, classes: int, formats, seed: int = 0) -> Path:
    import torch

    sys.path.insert(0, str(ARCH.parent))
    from nuclei_unet import NucleiUNet

    torch.manual_seed(seed)
    net = NucleiUNet(base=4, classes=classes)
    sample = nuclei(99)[0]
    if classes == 1:
        extra = dict(postprocessing=[{"id": "sigmoid"}], output_channel_names=["foreground"])
    else:
        extra = dict(postprocessing=[{"id": "softmax", "kwargs": {"axis": "channel"}}],
                     output_channel_names=["background", "interior", "boundary"],
                     instances={"method": "seeded_watershed", "foreground": [1, 2], "seeds": 1, "min_size": 10})
    return packaging.package(net, sample, folder, architecture=packaging.Architecture(ARCH, "NucleiUNet", {"base": 4, "classes": classes}),
                             formats=formats, preprocessing=PRE, size=(32, 8), halo=8, **extra, **META)


@pytest.fixture(scope="module")
def sigmoid_pkg(tmp_path_factory) -> Path:
    return tiny(tmp_path_factory.mktemp("sig") / "pkg", 1, ("pytorch_state_dict", "torchscript", "onnx"))


@pytest.fixture(scope="module")
def finetuned(sigmoid_pkg, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "new"
    return dlmodel.finetune(sigmoid_pkg, data / "images", data / "labels", out, seed=7, **FAST)


def test_the_new_package_validates_reproduces_and_records_its_training(finetuned, sigmoid_pkg, data):
    from bioimageio.core import test_model
    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr

    rdf = finetuned.rdf
    descr = load_description(rdf, perform_io_checks=True)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format()
    model = dlmodel.load(rdf)
    assert set(model.spec.weights) == {"pytorch_state_dict", "torchscript", "onnx"}  # the parent's formats
    for fmt in model.spec.weights:
        assert model.test(fmt).ok, fmt
    assert test_model(rdf).status == "passed"
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "test", str(rdf)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "passed" in res.stdout, res.stdout + res.stderr
    # parent, images with their sha256, the training facts
    facts = model.spec.config["dlmodel"]["finetune"]
    parent = dlmodel.load(sigmoid_pkg)
    assert facts["parent"]["rdf_sha256"] == parent.spec.rdf_sha256 and facts["parent"]["weights"] == "pytorch_state_dict"
    import hashlib

    names = {i["image"]: i for i in facts["images"]}
    assert sorted(names) == [f"site{i}.tif" for i in range(5)]
    assert names["site0.tif"]["image_sha256"] == hashlib.sha256((data / "images" / "site0.tif").read_bytes()).hexdigest()
    assert sum(i["use"] == "held-out" for i in facts["images"]) == 1
    assert facts["seed"] == 7 and facts["epochs"] == 2 and len(facts["history"]) == 2 and "cross-entropy" in facts["loss"]
    assert facts == {k: v for k, v in finetuned.facts.items() if k != "seconds_total"}
    assert 0 <= facts["held_out_f1_before"] <= facts["held_out_f1_best_epoch"] <= facts["held_out_f1_after"] <= 1
    # the re-tuned recipe is the package's step for objects, and it makes objects
    recipe = model.instance_recipe
    assert recipe["output"] == "prediction" and recipe["method"] in ("threshold", "watershed")
    objects = model.labels(model.predict(nuclei(42)[0]))
    assert objects.dtype == np.int32 and objects.shape == (80, 96)
    readme = (rdf.parent / "README.md").read_text()
    assert "tiny nuclei" in readme and "held out" in readme and str(facts["held_out_f1_after"])[:4] in readme


def test_training_learns_the_annotations(sigmoid_pkg, data, tmp_path):
    """Enough epochs on five images take a random network to objects on the held-out image."""
    result = dlmodel.finetune(sigmoid_pkg, data / "images", data / "labels", tmp_path / "long", seed=1,
                              **{**FAST, "epochs": 100, "patience": 100, "learning_rate": 1e-2})
    f = result.facts
    assert f["held_out_f1_before"] < 0.2 and f["held_out_f1_after"] > 0.8, f["history"]


def test_same_seed_same_weights(sigmoid_pkg, data, tmp_path):
    import torch

    runs = [dlmodel.finetune(sigmoid_pkg, data / "images", data / "labels", tmp_path / name, seed=seed, **LEARN)
            for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    assert all(r.facts["best_epoch"] > 0 for r in runs)  # trained weights, not the parent's, are compared

    def weights(rdf):
        return torch.load(rdf.parent / "weights_state.pt", weights_only=True)

    a, b, c = (weights(r.rdf) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert [{**h, "seconds": 0} for h in runs[0].facts["history"]] == [{**h, "seconds": 0} for h in runs[1].facts["history"]]


def test_softmax_classes_from_the_cli_and_torchscript_only(data, tmp_path):
    """Three softmax classes (background / interior / boundary) keep a seeded watershed recipe;
    a TorchScript-only package trains its scripted module and stays TorchScript (+ ONNX: none)."""
    softmax = tiny(tmp_path / "softmax", 3, ("pytorch_state_dict", "onnx"))
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "finetune", str(softmax), str(data / "images"),
                          str(data / "labels"), "-o", str(tmp_path / "new3"), "--epochs", "1", "--crop", "40",
                          "--seed", "3", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "held-out F1" in res.stdout and "validates" in res.stdout
    model = dlmodel.load(tmp_path / "new3")
    assert set(model.spec.weights) == {"pytorch_state_dict", "onnx"}
    facts = model.spec.config["dlmodel"]["finetune"]
    assert facts["crop"] == 40 and facts["seed"] == 3 and "interior" in facts["targets"]
    assert model.instance_recipe["method"] == "seeded_watershed" and model.instance_recipe["seeds"] == 1

    import torch

    scripted = tiny(tmp_path / "ts", 1, ("torchscript",))
    result = dlmodel.finetune(scripted, data / "images", data / "labels", tmp_path / "new_ts", seed=1, **LEARN)
    new = dlmodel.load(result.rdf)
    assert set(new.spec.weights) == {"torchscript"} and new.test().ok
    assert result.facts["parent"]["weights"] == "torchscript" and result.facts["best_epoch"] > 0
    before, after = (torch.jit.load(str(p / "weights.torchscript.pt")).state_dict()
                     for p in (scripted.parent, result.rdf.parent))
    assert not all(torch.equal(before[k], after[k]) for k in before)  # the scripted module itself trained


def test_minutes_bounds_training(sigmoid_pkg, data, tmp_path):
    t0 = time.monotonic()
    result = dlmodel.finetune(sigmoid_pkg, data / "images", data / "labels", tmp_path / "timed", seed=0, minutes=0.01,
                              **{**FAST, "epochs": 1000, "patience": 1000})
    f = result.facts
    assert f["stopped"].startswith("time limit") and f["epochs"] < 1000
    assert 0.6 <= f["history"][-1]["seconds"] < 10 and time.monotonic() - t0 < 120


def test_ctrl_c_keeps_the_best_epoch_and_writes_a_valid_package(sigmoid_pkg, data, tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "dlmodel.cli", "finetune", str(sigmoid_pkg), str(data / "images"),
                             str(data / "labels"), "-o", str(out), "--epochs", "1000", "--patience", "1000",
                             "--crop", "48", "--learning-rate", "0.003"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 300
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < deadline:  # the bar reports epochs as they end: wait for two
        seen += proc.stderr.read() or b""
        if re.search(rb"\b([2-9]|\d\d+)/1000\b", seen):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("no epoch reported: " + seen.decode(errors="replace")[-500:])
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, seen.decode(errors="replace")[-1000:]
    model = dlmodel.load(out)
    assert model.test().ok
    facts = model.spec.config["dlmodel"]["finetune"]
    assert facts["stopped"].startswith("interrupted") and 1 <= facts["epochs"] < 1000
    best = max(h["held_out_f1"] for h in facts["history"])
    assert facts["held_out_f1_best_epoch"] == round(max(best, facts["held_out_f1_before"]), 4)


def _error(fn) -> str:
    with pytest.raises(DLModelError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(sigmoid_pkg, data, tmp_path):
    def folder(name, pairs):
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        for stem, image, labels, label_name in pairs:
            tifffile.imwrite(root / "images" / f"{stem}.tif", image)
            if labels is not None:
                tifffile.imwrite(root / "labels" / (label_name or f"{stem}.tif"), labels)
        return root

    a, b = nuclei(1), nuclei(2)
    out = tmp_path / "out"

    def run(root, model=sigmoid_pkg):
        return _error(lambda: dlmodel.finetune(model, root / "images", root / "labels", out, **FAST))

    msg = run(folder("unpaired", [("a", a[0], None, None), ("b", *b, None)]))
    assert "a.tif" in msg and "no label image" in msg
    extra = folder("extra", [("a", *a, None), ("b", *b, None)])
    tifffile.imwrite(extra / "labels" / "c.tif", b[1])
    msg = run(extra)
    assert "c.tif" in msg and "no image" in msg
    msg = run(folder("empty", [("a", *a, None), ("b", b[0], np.zeros_like(b[1]), None)]))
    assert "b.tif" in msg and "no objects" in msg
    msg = run(folder("size", [("a", *a, None), ("b", b[0], b[1][:40], None)]))
    assert "b.tif" in msg and "40x96" in msg
    msg = run(folder("one", [("a", *a, None)]))
    assert "at least 2" in msg
    # label files named with a suffix pair up
    suffixed = folder("suffixed", [("a", a[0], a[1], "a_labels.tif"), ("b", b[0], b[1], "b_labels.tif")])
    onnx_only = tiny(tmp_path / "onnx", 1, ("onnx",))
    msg = run(suffixed, onnx_only)
    assert "no trainable weights" in msg and "onnx" in msg
    out.mkdir()
    msg = _error(lambda: dlmodel.finetune(sigmoid_pkg, suffixed / "images", suffixed / "labels", out, **FAST))
    assert "exists" in msg
    out.rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "extra", "one", "onnx", "size", "suffixed", "unpaired"]


def test_outputs_that_labels_cannot_teach_are_refused(tmp_path, data):
    import torch

    sys.path.insert(0, str(ARCH.parent))
    from nuclei_unet import NucleiUNet

    rdf = packaging.package(NucleiUNet(base=4, classes=2), nuclei(0)[0], tmp_path / "two",
                            architecture=packaging.Architecture(ARCH, "NucleiUNet", {"base": 4, "classes": 2}),
                            formats=("pytorch_state_dict",), preprocessing=PRE, size=(32, 8), **META)
    msg = _error(lambda: dlmodel.finetune(rdf, data / "images", data / "labels", tmp_path / "x", **FAST))
    assert "2 channel(s)" in msg and "supported" in msg
    assert torch is not None
