"""Choose the default model's instance recipe on training images (never on the validation set).

Grid over seed threshold, foreground threshold, minimum object and seed size; scored by pooled
F1 at IoU 0.5 on every 11th of the first 440 training images (40 images). Prints the best
recipes; the first goes into scripts/package_default_model.py.

    .venv/bin/python scripts/tune_default_recipe.py
"""
import glob
import itertools
import sys
from pathlib import Path

import tifffile

import dlmodel
from dlmodel.instances import f1_at_iou, from_recipe

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_train"


def main() -> int:
    model = dlmodel.load(ROOT / "models" / "nuclei_default")
    paths = sorted(glob.glob(str(TRAIN / "images" / "*.tif")))[::11][:40]
    preds = [model.predict(tifffile.imread(p)) for p in paths]
    truths = [tifffile.imread(p.replace("/images/", "/labels/")) for p in paths]
    base = model.instance_recipe
    results = []
    for st, th, ms, mss in itertools.product([0.5, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7], [15, 30], [4, 10]):
        recipe = {**base, "seed_threshold": st, "threshold": th, "min_size": ms, "min_seed_size": mss}
        tp = fp = fn = 0
        for p, t in zip(preds, truths):
            oid = recipe["output"]
            a, b, c = f1_at_iou(from_recipe(p[oid], p.axes[oid], recipe), t)
            tp, fp, fn = tp + a, fp + b, fn + c
        results.append((2 * tp / (2 * tp + fp + fn), st, th, ms, mss))
    results.sort(reverse=True)
    print("F1(train subset)  seed_threshold  threshold  min_size  min_seed_size")
    for row in results[:5]:
        print("  %.4f           %.1f            %.1f        %d        %d" % row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
