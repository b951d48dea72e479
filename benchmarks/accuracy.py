"""F1 at IoU 0.5 (pooled) on ../shared/data/dsb2018_nuclei_val for: the default nuclei model
(dlmodel.DEFAULT_MODEL) and the earlier default with their own recipes (and their time per image,
side by side), the StarDist nuclei model (when models/stardist_nuclei is there), the shared zoo U-Net with our watershed step (and with threshold +
connected components), and CellProfiler's IdentifyPrimaryObjects with default settings.

    .venv/bin/python benchmarks/accuracy.py [--skip-cellprofiler]
    .venv/bin/python benchmarks/accuracy.py --smoke     # 2 images, CellProfiler on them too: a check that it runs
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile

import dlmodel
from dlmodel.instances import InstanceOptions, pooled_f1, to_labels

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_val"
ZOO = ROOT.parent / "shared" / "models" / "unet2d_nuclei_broad"


pooled = pooled_f1  # F1 at IoU 0.5, pooled over images: (f1, tp, fp, fn)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-cellprofiler", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="the first 2 images only: seconds, the F1s mean nothing")
    args = ap.parse_args()
    images = sorted((VAL / "images").glob("*.tif"))
    if args.smoke:
        images = images[:2]
        print(f"smoke: the first {len(images)} images of {VAL.name}: a check that it runs, not a measurement")
    truths = [tifffile.imread(VAL / "labels" / p.name) for p in images]
    rows = []

    # the default and the earlier default, image by image in turn so both see the same machine
    models = {"default": dlmodel.load(ROOT / dlmodel.DEFAULT_MODEL), "earlier": dlmodel.load(ROOT / "models" / "nuclei_default")}
    preds = {k: [] for k in models}
    seconds = {k: 0.0 for k in models}
    for m in models.values():  # warm-up: sessions, threads, first allocations
        m.labels(m.predict(tifffile.imread(images[0])))
    for p in images:
        img = tifffile.imread(p)
        for k, m in models.items():
            t = time.perf_counter()
            preds[k].append(m.labels(m.predict(img)))
            seconds[k] += time.perf_counter() - t
    rows.append((f"default nuclei model (`{dlmodel.DEFAULT_MODEL}`), StarDist's NMS with its thresholds",
                 pooled(zip(preds["default"], truths))))
    rows.append(("earlier default (`models/nuclei_default`), its recipe (seeded watershed)",
                 pooled(zip(preds["earlier"], truths))))
    per = {k: v / len(images) for k, v in seconds.items()}
    timing = (f"time per image, model + objects, side by side on this machine: default {per['default']:.3f} s, "
              f"earlier default {per['earlier']:.3f} s: {per['default'] / per['earlier']:.2f}x")

    stardist = ROOT / "models" / "stardist_nuclei"
    if stardist.exists():  # trained by scripts/train_stardist_model.py
        sd = dlmodel.load(stardist)
        preds = [sd.labels(sd.predict(tifffile.imread(p))) for p in images]
        rows.append(("StarDist nuclei model (`models/stardist_nuclei`), StarDist's NMS with its thresholds",
                     pooled(zip(preds, truths))))

    zoo = dlmodel.load(ZOO)
    zoo_preds = [zoo.predict(tifffile.imread(p)) for p in images]
    # the package has no recipe: dlmodel's default (instances.DEFAULT_RECIPE), as everywhere
    rows.append(("zoo U-Net + the default instance step (watershed, diameter 20, min size 30)",
                 pooled((zoo.labels(p), t) for p, t in zip(zoo_preds, truths))))
    probs = [p["probability"] for p in zoo_preds]
    for label, opts in [("zoo U-Net + watershed, diameter estimated, min size 15", InstanceOptions("watershed", diameter=None, min_size=15)),
                        ("zoo U-Net + threshold 0.5 + connected components", InstanceOptions("threshold", fill_holes=False))]:
        rows.append((label, pooled((to_labels(p, opts), t) for p, t in zip(probs, truths))))

    if not args.skip_cellprofiler:
        with tempfile.TemporaryDirectory() as out:
            inputs = Path(out) / "images"  # links to exactly the images measured
            inputs.mkdir()
            for p in images:
                (inputs / p.name).symlink_to(p)
            cp = Path(sys.executable).parent / "cellprofiler"
            pipeline = ROOT / "benchmarks" / "identify_primary_baseline.cppipe"
            res = subprocess.run([str(cp), "-c", "-r", "-p", str(pipeline), "-i", str(inputs), "-o", out,
                                  "--enable-readers", "imageio_reader", "imageio_reader_v3"], capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(f"CellProfiler failed (exit {res.returncode}): {res.stderr[-3000:]}")
            preds = [tifffile.imread(Path(out) / f"{p.stem}_nuclei.tiff") for p in images]
            rows.append(("CellProfiler IdentifyPrimaryObjects, default settings", pooled(zip(preds, truths))))

    print(f"F1 at IoU 0.5, pooled over {len(images)} images of {VAL.name} ({sum(int(t.max() > 0) and len(set(t.ravel())) - 1 for t in truths)} nuclei)")
    print("| method | F1 | TP | FP | FN |\n| --- | --- | --- | --- | --- |")
    for label, (f1, tp, fp, fn) in rows:
        print(f"| {label} | {f1:.3f} | {tp} | {fp} | {fn} |")
    print(timing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
