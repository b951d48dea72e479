"""The nuclei model shipped in models/nuclei_default: it passes its own test and reaches the
F1 floor on the DSB 2018 validation images (measured: 0.803, pooled, IoU 0.5)."""
import subprocess
import sys

import numpy as np
import tifffile

import dlmodel
from conftest import DSB_VAL, ROOT
from dlmodel.instances import f1_at_iou

MODEL = ROOT / "models" / "nuclei_default"


def test_shipped_default_model_is_small_and_passes_its_test():
    size = sum(p.stat().st_size for p in MODEL.iterdir())
    assert size <= 10 * 2**20
    model = dlmodel.load(MODEL)
    assert {"onnx", "torchscript"} <= set(model.spec.weights)
    for fmt in model.spec.weights:
        assert model.test(fmt).ok, model.test(fmt).summary()
    assert model.instance_recipe["method"] == "seeded_watershed"


def test_default_model_f1_on_validation_images():
    model = dlmodel.load(MODEL)
    tp = fp = fn = 0
    for p in sorted((DSB_VAL / "images").glob("*.tif")):
        labels = model.labels(model.predict(tifffile.imread(p)))
        t, f, n = f1_at_iou(labels, tifffile.imread(DSB_VAL / "labels" / p.name))
        tp, fp, fn = tp + t, fp + f, fn + n
    f1 = 2 * tp / (2 * tp + fp + fn)
    print(f"default model F1@0.5 = {f1:.3f}")
    assert f1 >= 0.78


def test_predict_labels_cli(tmp_path):
    img = sorted((DSB_VAL / "images").glob("*.tif"))[0]
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "predict", MODEL, img, "-o", tmp_path, "--labels"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    labels = tifffile.imread(tmp_path / f"{img.stem}_labels.tif")
    assert labels.shape == tifffile.imread(img).shape and labels.max() > 5 and labels.dtype == np.int32
    assert tifffile.imread(tmp_path / f"{img.stem}_prediction.tif").shape == (3,) + labels.shape
