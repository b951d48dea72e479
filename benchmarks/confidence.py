"""Does dlmodel's per-image confidence track segmentation quality, and does it fall on images
unlike the model's training data? (issue 27; the table is in docs/confidence.md)

On ../shared/data/dsb2018_nuclei_val, for each model:

- the Spearman correlation between per-image confidence and per-image F1 at IoU 0.5 (goal >= 0.5);
- the 5 worst images by F1, and whether each is among the lowest-confidence ones (the lowest 10 %);
- shifted copies of every image (inverted contrast, strong blur, 2x and 0.5x zoom, Poisson noise):
  their confidence, the AUC of in-distribution vs shifted (1: every shifted copy scores below
  every original), and how many the plate QC's rule would flag ("model unsure": robust z
  against the originals below -3.5, with the scale floored at 0.05);
- the time per image with confidence off (predict + objects) and on.

    nice .venv/bin/python benchmarks/confidence.py [--models default stardist] [--augmentations 3]
    nice .venv/bin/python benchmarks/confidence.py --smoke      # 2 images, 1 copy: a check that it runs

Per-image results go to --json (default: none) so the table can be recomputed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import tifffile
from scipy import ndimage as ndi
from scipy import stats

import dlmodel
from dlmodel import confidence as conf
from dlmodel import qc

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_val"
MODELS = {"default": ROOT / "models" / "nuclei_default", "stardist": ROOT / "models" / "stardist_nuclei"}


def _zoom(image: np.ndarray, factor: float, order: int) -> np.ndarray:
    return ndi.zoom(image, factor, order=order)


def shifts(seed: int = 0) -> Dict[str, Callable[[np.ndarray, np.ndarray], tuple]]:
    """Each shift: (image, truth) -> (shifted image, its truth)."""
    rng = np.random.default_rng(seed)

    def poisson(im, t):
        # about 5 photons at the brightest pixel: shot noise of a very short exposure
        scaled = im.astype(np.float64) / max(1.0, float(im.max())) * 5.0
        return rng.poisson(scaled).astype(np.float32), t

    return {
        "inverted contrast": lambda im, t: (im.max() - im, t),
        "strong blur (sigma 4)": lambda im, t: (ndi.gaussian_filter(im.astype(np.float32), 4), t),
        "2x zoom": lambda im, t: (_zoom(im, 2, 1), _zoom(t, 2, 0)),
        "0.5x zoom": lambda im, t: (_zoom(im, 0.5, 1), _zoom(t, 0.5, 0)),
        "Poisson noise (5 photons)": poisson,
    }


def f1(labels: np.ndarray, truth: np.ndarray) -> float:
    return conf.object_f1(labels, truth)


def auc(inside: List[float], shifted: List[float]) -> float:
    """P(an original's confidence > a shifted copy's), ties counting half (Mann-Whitney U / n1 n2)."""
    u = stats.mannwhitneyu(inside, shifted, alternative="two-sided").statistic
    return float(u / (len(inside) * len(shifted)))


def flagged(inside: List[float], shifted: List[float], z: float = 3.5, floor: float = 0.05) -> int:
    """How many shifted copies the plate QC's rule flags against the originals (qc.unsure_z)."""
    return sum(1 for v in shifted if qc.unsure_z(v, inside, floor) < -z)


def grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image[..., 0]


def run_model(name: str, path: Path, images: List[Path], k: int, seed: int, shift_every: int) -> dict:
    """Per image: F1 against its labels (``labels/`` beside ``images/``) and the confidence, of
    the image and of its shifted copies; and the mean time per image with confidence off and on."""
    model = dlmodel.load(path)
    rows = []
    t_off = t_on = 0.0
    for n, p in enumerate(images):
        im = grey(tifffile.imread(p))
        truth = tifffile.imread(p.parent.parent / "labels" / p.name)
        t0 = time.perf_counter()
        plain = model.labels(model.predict(im))
        t_off += time.perf_counter() - t0
        t0 = time.perf_counter()
        c = model.confidence(im, augmentations=k, seed=seed, objects=True)
        t_on += time.perf_counter() - t0
        assert np.array_equal(plain, c.labels)  # the plain objects are the ones confidence made
        row = {"image": p.name, "f1": f1(c.labels, truth), **c.to_dict(), "shifted": {}}
        if shift_every and n % shift_every == 0:
            for s, fn in shifts(seed).items():
                sim, st = fn(im, truth)
                cs = model.confidence(sim, augmentations=k, seed=seed, objects=True)
                row["shifted"][s] = {"f1": f1(cs.labels, st), **cs.to_dict()}
        rows.append(row)
        print(f"  {name} {p.name}: F1 {row['f1']:.3f} confidence {row['confidence']:.3f}", file=sys.stderr)
    return {"model": name, "rows": rows, "seconds_off": t_off / len(images), "seconds_on": t_on / len(images)}


def summarise(result: dict, k: int) -> str:
    rows = result["rows"]
    cf = [r["confidence"] for r in rows]
    f1s = [r["f1"] for r in rows]
    lines = [f"### {result['model']} ({len(rows)} images, {k} augmentations)", ""]
    rho = stats.spearmanr(cf, f1s)[0] if len(rows) > 2 else float("nan")
    lines.append("| measure | value |\n| --- | --- |")
    lines.append(f"| Spearman rho, confidence vs per-image F1 | {rho:.3f} |")
    for c in conf.COMPONENTS:
        vals = [r[c] for r in rows]
        if len(rows) > 2 and all(v is not None for v in vals) and np.std(vals) > 0:
            sign = -1 if c not in ("consistency", "tta_f1") else 1
            lines.append(f"| Spearman rho, {'1 - ' if sign < 0 else ''}{c} vs F1 | {stats.spearmanr(np.multiply(sign, vals), f1s)[0]:.3f} |")
    lines.append(f"| mean F1 / mean confidence | {np.mean(f1s):.3f} / {np.mean(cf):.3f} |")
    lines.append(f"| seconds per image, confidence off (predict + objects) | {result['seconds_off']:.3f} |")
    lines.append(f"| seconds per image, confidence on | {result['seconds_on']:.3f} "
                 f"({result['seconds_on'] / max(result['seconds_off'], 1e-9):.1f}x) |")
    lines.append("")
    n_low = max(1, int(round(0.1 * len(rows))))
    lowest = set(np.argsort(cf, kind="stable")[:n_low].tolist())
    rank = {i: r + 1 for r, i in enumerate(np.argsort(cf, kind="stable").tolist())}
    lines.append(f"The 5 worst images by F1, and their confidence rank (1 = least confident; the lowest 10 % are ranks 1-{n_low}):\n")
    lines.append("| image | F1 | confidence | rank | among the lowest 10 %? |\n| --- | --- | --- | --- | --- |")
    for i in np.argsort(f1s, kind="stable")[:5]:
        r = rows[i]
        lines.append(f"| {r['image']} | {r['f1']:.3f} | {r['confidence']:.3f} | {rank[i]} | {'yes' if i in lowest else 'no'} |")
    shifted_names = list(rows[0]["shifted"]) if rows and rows[0]["shifted"] else []
    with_copies = [r for r in rows if r["shifted"]]
    if shifted_names:
        lines.append(f"\nShifted copies of {len(with_copies)} of the images (AUC and flags against all {len(rows)} originals):\n")
        lines.append("| copy | mean F1 | mean confidence | AUC original vs copy | flagged \"model unsure\" |")
        lines.append("| --- | --- | --- | --- | --- |")
        lines.append(f"| original | {np.mean(f1s):.3f} | {np.mean(cf):.3f} | | |")
        every = []
        for s in shifted_names:
            sc = [r["shifted"][s]["confidence"] for r in with_copies]
            every += sc
            sf = [r["shifted"][s]["f1"] for r in with_copies]
            lines.append(f"| {s} | {np.mean(sf):.3f} | {np.mean(sc):.3f} | {auc(cf, sc):.3f} | "
                         f"{flagged(cf, sc)} of {len(sc)} |")
        lines.append(f"| all shifts | | {np.mean(every):.3f} | {auc(cf, every):.3f} | {flagged(cf, every)} of {len(every)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["default", "stardist"], choices=sorted(MODELS))
    ap.add_argument("--augmentations", type=int, default=conf.DEFAULT_AUGMENTATIONS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    ap.add_argument("--data", type=Path, default=VAL, help="images/ and labels/ (default: dsb2018_nuclei_val)")
    ap.add_argument("--every", type=int, default=1, help="every Nth image only")
    ap.add_argument("--no-shifts", action="store_true")
    ap.add_argument("--shift-every", type=int, default=1, help="shifted copies of every Nth image only (time)")
    ap.add_argument("--json", type=Path, default=None, help="write the per-image results here")
    ap.add_argument("--smoke", action="store_true", help="2 images, 1 augmentation, the default model: seconds")
    args = ap.parse_args()
    images = sorted((args.data / "images").glob("*.tif"))[:: args.every]
    if args.smoke:
        images, args.augmentations, args.models = images[:2], 1, ["default"]
    elif args.limit:
        images = images[: args.limit]
    results = []
    for name in args.models:
        if not (MODELS[name] / ("rdf.yaml" if name == "stardist" else "bioimageio.yaml")).exists():
            print(f"skipped {name}: {MODELS[name]} is not there", file=sys.stderr)
            continue
        results.append(run_model(name, MODELS[name], images, args.augmentations, args.seed, 0 if args.no_shifts else args.shift_every))
        print(summarise(results[-1], args.augmentations) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
