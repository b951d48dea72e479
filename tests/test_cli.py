"""The dlmodel command, run as users run it (a subprocess)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import zoo
from conftest import ROOT


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dlmodel.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_info_text_and_json(nuclei_model):
    res = run("info", nuclei_model)
    assert res.returncode == 0
    assert "UNet 2D Nuclei Broad" in res.stdout and "halo" in res.stdout and "zero_mean_unit_variance" in res.stdout
    data = json.loads(run("info", nuclei_model, "--json").stdout)
    assert data["outputs"][0]["id"] == "probability"


def test_test_exits_1_on_a_mismatch(torch2d, tmp_path):
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    good = run("test", pkg)
    assert good.returncode == 0 and "passed" in good.stdout
    # a package whose test output does not match its weights (rdf updated with the new hash)
    out = np.load(pkg / "test_prob.npy")
    np.save(pkg / "test_prob.npy", out + 0.1)
    rdf = pkg / "bioimageio.yaml"
    rdf.write_text(rdf.read_text().replace(zoo.sha256(torch2d.parent / "test_prob.npy"), zoo.sha256(pkg / "test_prob.npy")))
    bad = run("test", pkg, "--engine", "onnx")
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "max abs error 0.1" in bad.stdout


def test_test_leaves_out_a_format_that_needs_trust_unless_asked_for():
    """Cellpose's own export (a zip): TorchScript is tested; its state dict would run the package's
    architecture file, so without --trust it is named, not run and not a failure; asked for
    with --engine, it is refused."""
    pytest.importorskip("cellpose")
    cellpose = ROOT / "tests" / "fixtures" / "cellpose_tiny" / "cellpose_tiny.zip"
    res = run("test", cellpose)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "skip pytorch_state_dict:" in res.stdout and "--trust" in res.stdout
    assert res.stdout.splitlines()[-1].endswith("passed (torchscript); not tested without --trust: pytorch_state_dict")
    remote = run("test", cellpose, "--python", sys.executable)  # the same, from a worker process
    assert remote.returncode == 0 and remote.stdout.splitlines()[-1] == res.stdout.splitlines()[-1]
    asked = run("test", cellpose, "--engine", "pytorch")
    assert asked.returncode != 0 and "resnet_torch.py" in asked.stderr and "--trust" in asked.stderr
    trusted = run("test", cellpose, "--trust")
    assert trusted.returncode == 0 and "passed (torchscript, pytorch_state_dict)" in trusted.stdout


def test_predict_skips_bad_files_and_keeps_the_rest(torch2d, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(images / "a.tif", rng.integers(0, 4000, (40, 30), dtype=np.uint16))
    np.save(images / "b.npy", rng.normal(size=(33, 50)).astype(np.float32))
    (images / "broken.tif").write_bytes(b"this is not a tiff")
    tifffile.imwrite(images / "rgb.tif", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), photometric="rgb")
    out = tmp_path / "out"
    res = run("predict", torch2d, images, "-o", out, "--tile", "24", "--format", "tif")
    assert res.returncode == 1
    assert "broken.tif" in res.stderr and "not a readable image" in res.stderr
    assert "rgb.tif" in res.stderr and "channel" in res.stderr
    assert "predicted 2 of 4 images" in res.stdout and "2 failed" in res.stdout
    assert tifffile.imread(out / "a_prob.tif").shape == (40, 30)
    assert tifffile.imread(out / "b_prob.tif").shape == (33, 50)
    assert sorted(p.name for p in out.iterdir()) == ["a_prob.tif", "b_prob.tif"]


def test_predict_npy_output_and_bad_options(torch2d, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((20, 20), np.float32))
    res = run("predict", torch2d, tmp_path / "x.npy", "-o", tmp_path / "o", "--format", "npy", "--tile", "none")
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "o" / "x_prob.npy").shape == (20, 20)
    bad = run("predict", torch2d, tmp_path / "x.npy", "-o", tmp_path / "o", "--engine", "caffe")
    assert bad.returncode == 2 and bad.stderr.startswith("dlmodel: error: unknown engine")
    none = run("predict", torch2d, str(tmp_path / "nothing*.tif"), "-o", tmp_path / "o")
    assert none.returncode == 2 and "no files match" in none.stderr


# --- objects: the flags reach the same core choices as Model.labels and RunDLModel's settings ---

def test_predict_object_flags_give_what_model_labels_gives(tmp_path, nuclei_model):
    import dlmodel
    from conftest import DSB_VAL

    img = sorted((DSB_VAL / "images").glob("*.tif"))[0]
    res = run("predict", nuclei_model, img, "-o", tmp_path, "--labels", "--method", "threshold", "--threshold", "0.7",
              "--min-size", "0", "--no-fill-holes", "--discard-border")
    assert res.returncode == 0, res.stderr
    model = dlmodel.load(nuclei_model)
    expected = model.labels(model.predict(tifffile.imread(img)), method="threshold", threshold=0.7, min_size=0,
                            fill_holes=False, discard_border=True)
    assert np.array_equal(tifffile.imread(tmp_path / f"{img.stem}_labels.tif"), expected) and expected.max() > 5
    default = model.labels(model.predict(tifffile.imread(img)))
    assert not np.array_equal(default, expected)  # the flags changed something


def test_object_flags_are_checked_before_any_image_runs(tmp_path, nuclei_model):
    from conftest import DSB_VAL

    img = sorted((DSB_VAL / "images").glob("*.tif"))[0]
    default = ROOT / "models" / "nuclei_stardist_torch"
    # the default model's recipe uses its own output and thresholds: flags it would ignore are refused
    res = run("predict", default, img, "-o", tmp_path / "a", "--objects-output", "probability")
    assert res.returncode == 2 and "\n" not in res.stderr.strip() and "'prediction', not 'probability'" in res.stderr, res.stderr
    res = run("predict", default, img, "-o", tmp_path / "a", "--threshold", "0.7")
    assert res.returncode == 2 and "--threshold is not used by the package's own recipe (stardist)" in res.stderr, res.stderr
    assert not (tmp_path / "a").exists()
    res = run("predict", nuclei_model, img, "-o", tmp_path / "b", "--method", "blobs", "--labels")
    assert res.returncode == 2 and "blobs" in res.stderr and not (tmp_path / "b").exists(), res.stderr
    res = run("predict", nuclei_model, img, "-o", tmp_path / "c", "--min-size", "5")  # a probability model: no labels
    assert res.returncode == 2 and "add --labels" in res.stderr, res.stderr


def test_plate_object_flags(tmp_path):
    import csv
    import shutil

    from conftest import SHARED

    subset = tmp_path / "plate"
    subset.mkdir()
    for p in sorted((SHARED / "data" / "ExampleSBSImages").glob("Channel[12]-0[1-2]-A-0[1-2].tif")):
        shutil.copy(p, subset / p.name)
    counts = {}
    for name, flags in (("default", ()), ("large", ("--min-size", "120"))):
        res = run("plate", ROOT / "models" / "nuclei_stardist_torch", subset, "-o", tmp_path / name, "--threads", "1", *flags,
                  timeout=600)
        assert res.returncode == 0, res.stderr
        with open(tmp_path / name / "objects.csv") as f:
            rows = list(csv.DictReader(f))
        counts[name] = len(rows)
        if name == "large":
            assert rows and min(float(r["area"]) for r in rows) >= 120
    assert 0 < counts["large"] < counts["default"]
