"""Choose the default model's instance recipe on training images (never on the validation set).

Grid over seed threshold, foreground threshold, minimum object and seed size; scored by pooled
F1 at IoU 0.5 on every 11th of the first 440 training images (40 images). Prints the best
recipes; the first goes into scripts/package_default_model.py.

    .venv/bin/python scripts/tune_default_recipe.py
"""
import glob
import sys
from pathlib import Path

import tifffile

import dlmodel
from dlmodel.training import Targets, recipe_grid, score

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_train"


def main() -> int:
    model = dlmodel.load(ROOT / "models" / "nuclei_default")
    paths = sorted(glob.glob(str(TRAIN / "images" / "*.tif")))[::11][:40]
    base = model.instance_recipe
    preds = [model.predict(tifffile.imread(p))[base["output"]] for p in paths]  # cyx
    truths = [tifffile.imread(p.replace("/images/", "/labels/")) for p in paths]
    # the grid `dlmodel finetune` re-tunes a three-class model's recipe with (the first is the package's own)
    results = sorted(((score(preds, truths, r), r["seed_threshold"], r["threshold"], r["min_size"], r["min_seed_size"])
                      for r in recipe_grid(base, Targets("classes", (0, 1, 2)))[1:]), reverse=True)
    print("F1(train subset)  seed_threshold  threshold  min_size  min_seed_size")
    for row in results[:5]:
        print("  %.4f           %.1f            %.1f        %d        %d" % row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
