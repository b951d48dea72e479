"""Train the default nuclei model on ../shared/data/dsb2018_nuclei_train (CPU, seeded).

Targets: three classes per pixel — background, nucleus interior, nucleus boundary (the inner
boundary of each labelled nucleus, so touching nuclei are separated by boundary pixels).
Inputs are normalised as the package will say: percentiles 1 and 99.8 of each image -> 0 and 1.

    .venv/bin/python scripts/train_default_model.py --out build/default_model [--iterations N]

Writes the state dict, the architecture file and a training log to --out; package it with
scripts/package_default_model.py.
"""
import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from dlmodel.training import Targets

HERE = Path(__file__).resolve().parent
# the architecture is the one the default model ships (one copy of it in the repository)
ARCH = HERE.parent / "models" / "nuclei_default"
sys.path.insert(0, str(ARCH))
from nuclei_unet import NucleiUNet  # noqa: E402

TRAIN = HERE.parents[1] / "shared" / "data" / "dsb2018_nuclei_train"


def normalise(img: np.ndarray) -> np.ndarray:
    """scale_range(min_percentile=1, max_percentile=99.8, eps=1e-6), as the rdf will say."""
    img = img.astype(np.float32)
    lo, hi = np.quantile(img, [0.01, 0.998])
    return (img - lo) / (hi - lo + 1e-6)


# background 0, interior 1, inner boundary 2: the targets `dlmodel finetune` makes for such a model
targets = Targets("classes", (0, 1, 2)).make


def load(folder: Path):
    data = []
    for p in sorted((folder / "images").glob("*.tif")):
        img = tifffile.imread(p)
        if img.ndim == 3:
            img = img.mean(axis=-1)
        lab = tifffile.imread(folder / "labels" / p.name)
        data.append((normalise(img), targets(lab)))
    return data


def batches(data, size: int, crop: int, rng: np.random.Generator):
    while True:
        xs, ys = [], []
        for _ in range(size):
            img, tgt = data[rng.integers(len(data))]
            h, w = img.shape
            if h < crop or w < crop:
                img = np.pad(img, ((0, max(0, crop - h)), (0, max(0, crop - w))), mode="reflect")
                tgt = np.pad(tgt, ((0, max(0, crop - h)), (0, max(0, crop - w))), mode="constant")
                h, w = img.shape
            y0, x0 = rng.integers(h - crop + 1), rng.integers(w - crop + 1)
            x, y = img[y0:y0 + crop, x0:x0 + crop], tgt[y0:y0 + crop, x0:x0 + crop]
            k = rng.integers(4)
            x, y = np.rot90(x, k), np.rot90(y, k)
            if rng.random() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)  # intensity jitter
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        yield torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("build/default_model"))
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--seed", type=int, default=2018)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    t0 = time.time()
    data = load(TRAIN)
    print(f"loaded {len(data)} training images in {time.time() - t0:.0f} s", flush=True)
    net = NucleiUNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.iterations, pct_start=0.1)
    weights = torch.tensor([1.0, 1.0, 3.0])  # boundaries are rare and decide the splits
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    log = []
    net.train()
    t0 = time.time()
    for it, (x, y) in zip(range(1, args.iterations + 1), batches(data, args.batch, args.crop, rng)):
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        sched.step()
        if it % 100 == 0 or it == args.iterations:
            log.append({"iteration": it, "loss": round(float(loss), 4), "seconds": round(time.time() - t0, 1)})
            print(json.dumps(log[-1]), flush=True)
    net.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), args.out / "weights_state.pt")
    shutil.copy(ARCH / "nuclei_unet.py", args.out / "nuclei_unet.py")
    (args.out / "training.json").write_text(json.dumps({
        "iterations": args.iterations, "batch": args.batch, "crop": args.crop, "seed": args.seed,
        "threads": args.threads, "train_images": len(data), "seconds": round(time.time() - t0, 1),
        "torch": torch.__version__, "log": log,
    }, indent=1))
    print(f"trained in {time.time() - t0:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
