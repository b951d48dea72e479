"""Choose the thresholds of a trained StarUNet on the held-out *training* images, then package it
with `dlmodel.package` (ONNX + TorchScript) into models/nuclei_stardist_torch (issue 28).

    python scripts/train_nuclei_stardist.py --out build/stage1 --minutes 7.5              # on a GPU
    python scripts/train_nuclei_stardist.py --init build/stage1 --lr 1e-4 --minutes 4.5 --out build/nuclei_stardist
    .venv/bin/python scripts/package_nuclei_stardist.py --trained build/nuclei_stardist

The probability and overlap thresholds are chosen as StarDist's ``optimize_thresholds`` chooses them:
the pair with the best F1 at IoU 0.5 on images the network did not train on; here the 46 training
images that train_nuclei_stardist.py held out (training.json lists them). dsb2018_nuclei_val is
never read here: benchmarks/accuracy.py measures the package on it afterwards.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from star_unet import StarUNet  # noqa: E402
from train_nuclei_stardist import TRAIN, normalise  # noqa: E402

PROB = [round(p, 2) for p in np.arange(0.15, 0.80, 0.05)]
NMS = [0.3, 0.4, 0.5]
MULTIPLE = 16  # grid 2 * 2**depth 3


def predict(net: StarUNet, img: np.ndarray) -> np.ndarray:
    """(1 + n_rays, y, x) for one image, reflect-padded to the size the network takes."""
    x = normalise(img)
    h, w = x.shape
    ph, pw = (-h) % MULTIPLE, (-w) % MULTIPLE
    x = np.pad(x, ((0, ph), (0, pw)), mode="reflect")
    with torch.inference_mode():
        y = net(torch.from_numpy(x)[None, None]).numpy()[0]
    g = 1 if net.full_resolution else net.grid
    return y[:, : -(-h // g), : -(-w // g)]


def choose_thresholds(net: StarUNet, names, log=print):
    import tifffile

    from dlmodel.instances import from_recipe, pooled_f1

    outputs, truths = [], []
    for name in names:
        img = tifffile.imread(TRAIN / "images" / name)
        outputs.append(predict(net, img.mean(axis=-1) if img.ndim == 3 else img))
        truths.append(tifffile.imread(TRAIN / "labels" / name))
    table = []
    for nms in NMS:
        for prob in PROB:
            recipe = {"method": "stardist", "prob_threshold": prob, "nms_threshold": nms, "n_rays": net.n_rays,
                      "grid": [net.grid, net.grid]}
            # on a grid, an odd side gives one more row or column of labels than the image has
            f1, tp, fp, fn = pooled_f1((from_recipe(o, "cyx", recipe)[: t.shape[0], : t.shape[1]], t)
                                       for o, t in zip(outputs, truths))
            table.append({"prob": prob, "nms": nms, "f1": round(f1, 4), "tp": tp, "fp": fp, "fn": fn})
            log(f"prob {prob:.2f} nms {nms:.1f}: F1 {f1:.4f} (TP {tp}, FP {fp}, FN {fn})")
    return max(table, key=lambda r: r["f1"]), table


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trained", type=Path, default=ROOT / "build" / "nuclei_stardist")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "nuclei_stardist_torch")
    args = ap.parse_args()
    import tifffile

    import dlmodel.packaging

    torch.set_num_threads(2)
    training = json.loads((args.trained / "training.json").read_text())
    net = StarUNet(n_rays=training["n_rays"], grid=training["grid"])
    net.load_state_dict(torch.load(args.trained / "weights_state.pt", map_location="cpu", weights_only=True))
    net.eval()
    net.full_resolution = False  # as shipped: outputs on StarDist's grid
    t = time.perf_counter()
    best, table = choose_thresholds(net, training["holdout_images"])
    (args.trained / "thresholds.json").write_text(json.dumps({"best": best, "table": table}, indent=1))
    print(f"chosen on {len(training['holdout_images'])} held-out training images in {time.perf_counter() - t:.0f} s: {best}")

    stages = "\n".join(
        f"  {i}. {st['steps']} steps from learning rate {st['lr']:g} in {st['seconds']:.0f} s on one {st['device']} "
        f"(torch {st['torch']}, bf16 autocast: {st['bf16_autocast']}){' from the weights of stage ' + str(i - 1) if i > 1 else ''}"
        for i, st in enumerate(training.get("stages", []) + [training], start=1))
    recipe = {"method": "stardist", "prob_threshold": best["prob"], "nms_threshold": best["nms"],
              "n_rays": net.n_rays, "grid": [net.grid, net.grid]}
    sample = tifffile.imread(TRAIN / "images" / training["holdout_images"][0])
    doc = f"""# RunDLModel StarDist-style nuclei model (PyTorch)

StarDist's 2D network and recipe for the Data Science Bowl 2018 nuclei, trained in PyTorch and
shipped as ONNX and TorchScript, so it runs with the engines every dlmodel install has (no
TensorFlow). Per pixel it predicts the probability that a nucleus is centred there and the distance
to that nucleus's boundary along {net.n_rays} rays; StarDist's own non-maximum suppression (the
`stardist` package, which needs no TensorFlow) keeps the best star-convex polygon of each nucleus.

- Network: `scripts/star_unet.py` (StarDist 2D: 2 convolutions, pooling by grid {net.grid}, a U-Net of
  3 levels from 32 channels, 128 features, sigmoid probability + {net.n_rays} distances), 2.0 M
  parameters. Trained on outputs upsampled to every pixel; shipped on the grid, each cell read at the
  input pixel StarDist puts it on.
- Training data: {len(training['train_images'])} images of `dsb2018_nuclei_train` (Data Science Bowl 2018
  stage 1, community-fixed labels, CC0); {len(training['holdout_images'])} more training images held out
  to choose the thresholds. Validation data (`dsb2018_nuclei_val`) was not used for training or for
  choosing anything.
- Training: `scripts/train_nuclei_stardist.py` (seed {training['seed']}; batches of {training['batch']} random
  {training['crop']}x{training['crop']} crops with flips, 90-degree rotations and intensity jitter; binary
  cross-entropy + 0.2 x probability-weighted distance error; Adam with a cosine decay per stage):
{stages}
- Thresholds: probability {best['prob']}, overlap {best['nms']} (best F1 at IoU 0.5 on the held-out
  training images, {best['f1']:.3f}; `scripts/package_nuclei_stardist.py`).
- Input: one channel, any size (min 80, step 16), normalised per image to its 1st and 99.8th
  percentiles. Output: probability + {net.n_rays} ray distances (in input pixels) on a grid of every
  {net.grid}nd pixel, as StarDist predicts (its non-maximum suppression takes the grid).
- Accuracy: see `docs/accuracy.md` in the RunDLModel project.
"""
    rdf = dlmodel.packaging.package(
        net, sample, args.out, overwrite=True,
        name="RunDLModel StarDist-style nuclei",
        description="StarDist 2D nuclei model trained in PyTorch on DSB 2018: ONNX and TorchScript, no TensorFlow.",
        authors=[{"name": "RunDLModel developers"}],
        license="MIT",
        cite=[{"text": "Schmidt, Weigert, Broaddus, Myers. Cell Detection with Star-convex Polygons. MICCAI 2018.",
               "doi": "10.1007/978-3-030-00934-2_30"},
              {"text": "Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
                       "Nature Methods 16, 1247-1253 (2019).", "doi": "10.1038/s41592-019-0612-7"}],
        tags=["nuclei", "fluorescence", "stardist", "instance-segmentation", "dsb2018", "2d"],
        formats=("onnx", "torchscript"),
        preprocessing=[{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}},
                       {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
        output_channel_names=["probability"] + [f"ray{k:02d}" for k in range(net.n_rays)],
        size=(80, MULTIPLE), halo=16, output_scale=net.grid, instances=recipe, documentation=doc,
    )
    print(f"wrote {rdf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
