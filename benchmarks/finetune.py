"""Fine-tune the shared zoo U-Net on at most 50 images of dsb2018_nuclei_train and measure F1 at
IoU 0.5 (pooled) on dsb2018_nuclei_val before and after, with both instance steps: dlmodel's
default watershed step (instances.DEFAULT_RECIPE) and threshold 0.5 + connected components
(as benchmarks/accuracy.py), and the new package's own re-tuned recipe. The validation images
are only measured, never trained or tuned on.

    .venv/bin/python benchmarks/finetune.py [--images 50] [--minutes 12] [--out build/finetuned_zoo_unet]
    .venv/bin/python benchmarks/finetune.py --smoke     # a small random U-Net, 2 training images, 1 epoch

The training images are every 9th of the sorted training set (linked into a temporary folder,
not copied). Prints the numbers and the minutes the whole `dlmodel.finetune` call took.
``--smoke`` checks that it runs, in seconds: a random-weight U-Net of the zoo model's kind (one
sigmoid output; the default model's architecture at base width 4, built in a temporary folder:
the zoo model's fixed 512x512 crops take minutes on 2 cores) fine-tuned on 2 training images (one
held out) for 1 epoch on crops of 64, F1 on 2 validation images (the smallest of each set: the
largest take seconds just to match objects), everything written into a temporary folder.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import tifffile

import dlmodel
from dlmodel import finetune
from dlmodel.instances import InstanceOptions, pooled_f1, to_labels

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN = SHARED / "data" / "dsb2018_nuclei_train"
VAL = SHARED / "data" / "dsb2018_nuclei_val"
ZOO = SHARED / "models" / "unet2d_nuclei_broad"


def measure(source: Path, images, truths) -> dict:
    model = dlmodel.load(source)
    preds = [model.predict(tifffile.imread(p)) for p in images]
    oid = model.spec.outputs[0].id
    rows = {
        "default watershed step": pooled_f1((model.labels(p, method="watershed"), t) for p, t in zip(preds, truths)),
        "threshold 0.5 + connected components": pooled_f1(
            (to_labels(p[oid], InstanceOptions("threshold", min_size=0, fill_holes=False)), t) for p, t in zip(preds, truths)),
    }
    if model.instance_recipe:
        rows["the package's own recipe"] = pooled_f1((model.labels(p), t) for p, t in zip(preds, truths))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "finetuned_zoo_unet")
    ap.add_argument("--model", type=Path, default=ZOO, help="the package to fine-tune (default: the shared zoo U-Net)")
    ap.add_argument("--crop", type=int, default=None, help="side of the training crops (default: finetune's)")
    ap.add_argument("--smoke", action="store_true",
                    help="a small random U-Net, 2 images, 1 epoch, into a temporary folder: seconds")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            args.images, args.epochs, args.crop, args.out = 2, 1, 64, Path(tmp) / "finetuned"
            args.model = small_unet(Path(tmp) / "small_unet").parent
            print("smoke: a base-4 random-weight U-Net with one sigmoid output, 2 training images (1 held out), "
                  "1 epoch on crops of 64, 2 validation images: a check that it runs, not a measurement")
        return run(args)


def smallest(folder: Path, n: int) -> list:
    """The ``n`` smallest images in ``folder`` (by file size, name next): seconds to train, match
    and package."""
    return sorted(folder.glob("*.tif"), key=lambda p: (p.stat().st_size, p.name))[:n]


def small_unet(folder: Path) -> Path:
    """A random-weight U-Net with one sigmoid output, as the zoo model has: the default model's
    architecture (models/nuclei_default/nuclei_unet.py) at base width 4, packaged with its
    state dict and TorchScript; its rdf."""
    import torch

    from dlmodel import packaging

    arch = ROOT / "models" / "nuclei_default" / "nuclei_unet.py"
    sys.path.insert(0, str(arch.parent))
    from nuclei_unet import NucleiUNet

    torch.manual_seed(0)
    kwargs = {"base": 4, "classes": 1}
    sample = tifffile.imread(smallest(TRAIN / "images", 1)[0])
    return packaging.package(
        NucleiUNet(**kwargs).eval(), sample.astype("float32"), folder,
        architecture=packaging.Architecture(arch, "NucleiUNet", kwargs), formats=("pytorch_state_dict", "torchscript"),
        name="smoke U-Net", description="Random-weight U-Net for benchmarks/finetune.py --smoke only.",
        authors=[{"name": "RunDLModel developers"}], output_channel_names=["foreground"],
        preprocessing=[{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}],
        postprocessing=[{"id": "sigmoid"}], size=(32, 8), halo=8)


def run(args: argparse.Namespace) -> int:
    """Measure, fine-tune, measure again, print."""
    val_images = smallest(VAL / "images", 2) if args.smoke else sorted((VAL / "images").glob("*.tif"))
    truths = [tifffile.imread(VAL / "labels" / p.name) for p in val_images]
    before = measure(args.model, val_images, truths)
    if args.smoke:
        chosen = smallest(TRAIN / "images", args.images)
    else:
        chosen = sorted((TRAIN / "images").glob("*.tif"))[::9][: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("images", "labels"):
            (Path(tmp) / sub).mkdir()
            for p in chosen:
                (Path(tmp) / sub / p.name).symlink_to(TRAIN / sub / p.name)
        t0 = time.monotonic()
        result = finetune(args.model, Path(tmp) / "images", Path(tmp) / "labels", args.out, epochs=args.epochs,
                          minutes=args.minutes, learning_rate=args.learning_rate, seed=args.seed, crop=args.crop,
                          overwrite=True, progress=not args.smoke)
        minutes = (time.monotonic() - t0) / 60
    after = measure(result.rdf.parent, val_images, truths)
    f = result.facts
    print(f"fine-tuned {args.model.name} on {len(chosen)} images of {TRAIN.name} "
          f"({sum(i['use'] == 'training' for i in f['images'])} training, {sum(i['use'] == 'held-out' for i in f['images'])} held out) "
          f"in {minutes:.1f} min (training {f['seconds'] / 60:.1f} min, {f['epochs']} epochs, best {f['best_epoch']}, "
          f"stopped: {f['stopped']}) -> {result.rdf}")
    print(f"held-out F1: before {f['held_out_f1_before']:.3f}, best epoch {f['held_out_f1_best_epoch']:.3f}, "
          f"re-tuned recipe {f['held_out_f1_after']:.3f}")
    print(f"F1 at IoU 0.5 pooled over {len(val_images)} images of {VAL.name}")
    print("| instance step | before: F1 (TP/FP/FN) | after: F1 (TP/FP/FN) | change |\n| --- | --- | --- | --- |")
    for step in after:
        b = before.get(step)
        a = after[step]
        print(f"| {step} | {'%.3f (%d/%d/%d)' % b if b else '-'} | {'%.3f (%d/%d/%d)' % a} | "
              f"{'%+.3f' % (a[0] - b[0]) if b else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
