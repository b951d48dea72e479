"""Train StarUNet (scripts/star_unet.py) on dsb2018_nuclei_train: the default nuclei model's network
(issue 28). Needs only torch and numpy, so it runs on a bare GPU machine.

Recipe (StarDist's own DSB 2018 recipe, in PyTorch): 32 rays, grid 2, images normalised to their 1st
and 99.8th percentiles (the rdf's scale_range), random 256x256 crops with flips, 90-degree rotations
and intensity jitter (x * U(0.6, 2) + U(-0.2, 0.2)), loss = binary cross-entropy of the probability +
0.2 * the distances' absolute error weighted by the probability target, Adam from 3e-4 with a cosine
decay over the time budget, bf16 autocast on a GPU. Targets are computed from the augmented labels on
the device (star_unet.star_distances). 10 % of the training images (by seed) are held out for choosing
the thresholds later (scripts/package_nuclei_stardist.py); dsb2018_nuclei_val is never read.

Resumable: a checkpoint is written to --out every --every seconds and at the end; --resume continues
from it (same recipe, the remaining time). The recipe, steps and seconds go to OUT/training.json.

    python scripts/train_nuclei_stardist.py --pack build/dsb_train.npz          # once, from ../shared
    python scripts/train_nuclei_stardist.py --data build/dsb_train.npz --out build/nuclei_stardist --minutes 7
"""
import argparse
import json
import math
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from star_unet import StarUNet, object_probability, star_distances  # noqa: E402

TRAIN = HERE.parents[1] / "shared" / "data" / "dsb2018_nuclei_train"
SEED = 2018
HOLDOUT = 0.1


def pack(out: Path, folder: Path = TRAIN) -> None:
    """The training images and labels in one .npz (raw dtypes), to carry to a machine without ../shared."""
    import tifffile

    arrays = {}
    for i, p in enumerate(sorted((folder / "images").glob("*.tif"))):
        img = tifffile.imread(p)
        arrays[f"img_{i:04d}"] = img.mean(axis=-1).astype(img.dtype) if img.ndim == 3 else img
        arrays[f"lab_{i:04d}"] = tifffile.imread(folder / "labels" / p.name)
        arrays[f"name_{i:04d}"] = np.array(p.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    # an .npz that np.load reads, LZMA-compressed (a third smaller than savez_compressed: it travels)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_LZMA) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def normalise(img: np.ndarray) -> np.ndarray:
    """scale_range(min_percentile=1, max_percentile=99.8, eps=1e-6), as the rdf says."""
    img = img.astype(np.float32)
    lo, hi = np.quantile(img, [0.01, 0.998])
    return (img - lo) / (hi - lo + 1e-6)


def split(names, seed: int = SEED):
    """Indices for training and the held-out training images (never dsb2018_nuclei_val)."""
    order = np.random.default_rng(seed).permutation(len(names))
    n_hold = int(round(HOLDOUT * len(names)))
    return sorted(order[n_hold:].tolist()), sorted(order[:n_hold].tolist())


def load(path: Path):
    data = np.load(path)
    n = len([k for k in data.files if k.startswith("img_")])
    names = [str(data[f"name_{i:04d}"]) for i in range(n)]
    images = [normalise(data[f"img_{i:04d}"]) for i in range(n)]
    labels = [data[f"lab_{i:04d}"].astype(np.int32) for i in range(n)]
    return names, images, labels


def sample(images, labels, idx, batch: int, crop: int, rng: np.random.Generator, dev):
    xs, ys = [], []
    for i in rng.choice(idx, size=batch):
        img, lab = images[i], labels[i]
        h, w = img.shape
        if h < crop or w < crop:  # reflect-pad what is smaller than a crop (labels: background)
            ph, pw = max(0, crop - h), max(0, crop - w)
            img = np.pad(img, ((0, ph), (0, pw)), mode="reflect")
            lab = np.pad(lab, ((0, ph), (0, pw)))
            h, w = img.shape
        y0, x0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        x, y = img[y0:y0 + crop, x0:x0 + crop], lab[y0:y0 + crop, x0:x0 + crop]
        k = int(rng.integers(4))
        x, y = np.rot90(x, k), np.rot90(y, k)
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        x = x * rng.uniform(0.6, 2.0) + rng.uniform(-0.2, 0.2)
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y))
    return (torch.from_numpy(np.stack(xs))[:, None].to(dev, non_blocking=True),
            torch.from_numpy(np.stack(ys)).to(dev, non_blocking=True))


def loss_fn(net: StarUNet, x: torch.Tensor, lab: torch.Tensor, amp: bool):
    dist_t = star_distances(lab, net.n_rays)
    prob_t = object_probability(lab, dist_t)[:, None]
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        logit, dist = net.raw(x)
    logit, dist = logit.float(), dist.float()
    bce = F.binary_cross_entropy_with_logits(logit, prob_t)
    # StarDist: the distances' error weighted by the probability target, a little towards 0 elsewhere
    err = (dist - dist_t).abs().mean(dim=1, keepdim=True)
    mae = (err * prob_t).sum() / prob_t.sum().clamp_min(1) + 1e-4 * (dist.abs() * (prob_t == 0)).mean()
    return bce + 0.2 * mae, bce.item(), mae.item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pack", type=Path, help="write the training data to this .npz and stop")
    ap.add_argument("--data", type=Path, default=HERE.parent / "build" / "dsb_train.npz")
    ap.add_argument("--out", type=Path, default=HERE.parent / "build" / "nuclei_stardist")
    ap.add_argument("--minutes", type=float, default=7.0, help="training time budget (the cosine decay spans it)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--every", type=float, default=60.0, help="seconds between checkpoints")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", type=Path, help="a training folder to continue from (its weights, a fresh optimiser and "
                                              "schedule); its training.json is kept as an earlier stage")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke runs)")
    args = ap.parse_args()
    if args.pack:
        pack(args.pack)
        print(f"wrote {args.pack}")
        return 0

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = dev.type == "cuda"
    torch.manual_seed(SEED)
    torch.backends.cudnn.benchmark = True
    t_load = time.perf_counter()
    names, images, labels = load(args.data)
    train_idx, holdout_idx = split(names)
    print(f"{len(train_idx)} training images, {len(holdout_idx)} held out; loaded in {time.perf_counter() - t_load:.1f} s "
          f"on {dev} ({torch.cuda.get_device_name() if amp else 'cpu'})", flush=True)

    net = StarUNet().to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = args.out / "checkpoint.pt"
    step, spent = 0, 0.0
    earlier = []
    if args.init:
        net.load_state_dict(torch.load(args.init / "weights_state.pt", map_location=dev, weights_only=True))
        before = json.loads((args.init / "training.json").read_text())
        earlier = before.pop("stages", []) + [{k: v for k, v in before.items() if not k.endswith("_images")}]
        print(f"initialised from {args.init} ({sum(e['steps'] for e in earlier)} earlier steps)", flush=True)
    rng = np.random.default_rng(SEED + len(earlier))
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=dev, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step, spent = state["step"], state["seconds"]
        rng.bit_generator.state = state["rng"]
        print(f"resumed at step {step} after {spent:.0f} s", flush=True)
    budget = args.minutes * 60

    def save():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": spent,
                    "rng": rng.bit_generator.state}, tmp)
        tmp.replace(ckpt)
        torch.save(net.state_dict(), args.out / "weights_state.pt")
        (args.out / "training.json").write_text(json.dumps({
            "seed": SEED, "steps": step, "seconds": round(spent, 1), "batch": args.batch, "crop": args.crop,
            "lr": args.lr, "budget_minutes": args.minutes, "device": torch.cuda.get_device_name() if amp else "cpu",
            "torch": torch.__version__, "bf16_autocast": amp, "n_rays": net.n_rays, "grid": net.grid,
            "stages": earlier, "train_images": [names[i] for i in train_idx], "holdout_images": [names[i] for i in holdout_idx],
        }, indent=1))

    net.train()
    start, last_save, last_print = time.perf_counter() - spent, time.perf_counter(), time.perf_counter()
    while spent < budget and not (args.max_steps and step >= args.max_steps):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, spent / budget)))
        for group in opt.param_groups:
            group["lr"] = lr
        x, lab = sample(images, labels, train_idx, args.batch, args.crop, rng, dev)
        loss, bce, mae = loss_fn(net, x, lab, amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        spent = time.perf_counter() - start
        if time.perf_counter() - last_print > 15 or step == 1:
            print(f"step {step} {spent:.0f}s lr {lr:.2e} bce {bce:.4f} mae {mae:.3f}", flush=True)
            last_print = time.perf_counter()
        if time.perf_counter() - last_save > args.every:
            save()
            last_save = time.perf_counter()
    save()
    print(f"done: {step} steps in {spent:.0f} s; wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
