"""engine="fastest" against engine="auto"'s fixed order, measured side by side in one run.

    PYTHONPATH=src python benchmarks/fastest_engine.py [--device cpu|cuda] [--repeat 3] [--json OUT.json]
    PYTHONPATH=src python benchmarks/fastest_engine.py --smoke   # small images, the shared and 3D models, once

Per model (the shared zoo U-Net, the default StarDist model, the TensorFlow StarDist model, the
3D demo model) and one uint16 image:
  choosing   the first prediction with engine="fastest" and no remembered choice, less the first
             prediction of a second model that reads the remembered choice: what measuring costs, once;
  auto       steady prediction time with the fixed order (engine="auto");
  fastest    steady prediction time with the engine "fastest" chose;
  auto/fastest  their ratio (the two alternate, best of --repeat each);
  per tile   the engines' times on the tile, as "fastest" measured them, and the margin
             (the runner-up's time over the winner's).
Each run uses a fresh, temporary dlmodel cache, so every choice is measured here, and onnxruntime
without spin-waiting threads (DLMODEL_ORT_SPINNING=0), since two models alternate in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# (name, rdf, image shape, smoke image shape)
MODELS = [
    ("shared zoo U-Net", SHARED / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml", (2048, 2048), (256, 256)),
    ("default (StarDist, torch)", ROOT / "models" / "nuclei_stardist_torch" / "bioimageio.yaml", (2048, 2048), None),
    ("earlier default U-Net", ROOT / "models" / "nuclei_default" / "bioimageio.yaml", (2048, 2048), None),
    ("StarDist (TensorFlow)", ROOT / "models" / "stardist_nuclei" / "rdf.yaml", (1024, 1024), None),
    ("3D demo", ROOT / "models" / "nuclei3d_demo" / "bioimageio.yaml", (32, 256, 256), (16, 64, 64)),
]


def image(shape) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random(shape) * 3000 + 200).astype(np.uint16)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(name: str, rdf: Path, shape, device: str, repeat: int) -> dict:
    import dlmodel
    from dlmodel import fastest

    x = image(shape)
    axes = "zyx" if len(shape) == 3 else "yx"
    fastest.clear_cache()
    chooser = dlmodel.load(rdf, engine="fastest", device=device)
    first_measured = timed(lambda: chooser.predict(x, axes=axes))
    choice = chooser.engine_choice
    chooser.unload()
    reader = dlmodel.load(rdf, engine="fastest", device=device)
    first_cached = timed(lambda: reader.predict(x, axes=axes))
    assert reader.engine_choice.cached
    t_auto, t_fast = [], []
    try:
        auto = dlmodel.load(rdf, engine="auto", device=device)
        auto.predict(x, axes=axes)  # warm-up
    except dlmodel.DLModelError as e:  # the fixed order's pick cannot run here; "fastest" skipped it
        auto, t_auto = None, [float("nan")]
        print(f"{name}: engine='auto' fails: {e}", file=sys.stderr)
    for _ in range(repeat):  # alternated, so both see the same machine
        if auto is not None:
            t_auto.append(timed(lambda: auto.predict(x, axes=axes)))
        t_fast.append(timed(lambda: reader.predict(x, axes=axes)))
    ranked = sorted(choice.seconds.values())
    return {
        "model": name, "device": device, "image": "x".join(map(str, shape)),
        "auto_engine": auto.weights_format if auto is not None else "fails", "fastest_engine": reader.weights_format,
        "auto_s": min(t_auto), "fastest_s": min(t_fast), "ratio": min(t_auto) / min(t_fast),
        "per_tile": choice.seconds, "tile": "x".join(map(str, choice.tile)),
        "margin": ranked[1] / ranked[0] if len(ranked) > 1 else None, "refused": choice.refused,
        "choosing_s": first_measured - first_cached, "first_measured_s": first_measured, "first_cached_s": first_cached,
        "reason": choice.reason,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", nargs="*", help="names (substrings) of the models to run; default all found")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--smoke", action="store_true", help="small images, the shared and 3D models, once: a check that it runs")
    args = ap.parse_args(argv)
    os.environ["DLMODEL_CACHE"] = tempfile.mkdtemp(prefix="dlmodel-fastest-")  # every choice measured here
    # onnxruntime's threads of one model would spin-wait through the other's pass (both are loaded,
    # alternating): without spinning each pass has the cores to itself, as in one-model use
    os.environ.setdefault("DLMODEL_ORT_SPINNING", "0")
    rows = []
    for name, rdf, shape, smoke_shape in MODELS:
        if args.smoke and smoke_shape is None:
            continue
        if args.models and not any(m.lower() in name.lower() for m in args.models):
            continue
        if not rdf.exists():
            print(f"{name}: {rdf} is not there; left out", file=sys.stderr)
            continue
        try:
            rows.append(measure(name, rdf, smoke_shape if args.smoke else shape, args.device, 1 if args.smoke else args.repeat))
        except Exception as e:  # one model's failure (an engine not installed here) must not hide the others
            print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
    if args.smoke:
        print("smoke: small images, once: a check that it runs, not a measurement")
    print("| model | device | image | auto: engine, s | fastest: engine, s | auto/fastest | per tile (tile) | margin | "
          "choosing, first prediction |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        per_tile = ", ".join(f"{f} {s:.3f} s" for f, s in sorted(r["per_tile"].items(), key=lambda kv: kv[1]))
        refused = "".join(f"; {f} refused" for f in r["refused"])
        margin = f"{r['margin']:.2f}x" if r["margin"] else "-"
        print(f"| {r['model']} | {r['device']} | {r['image']} | {r['auto_engine']}, {r['auto_s']:.3f} | "
              f"{r['fastest_engine']}, {r['fastest_s']:.3f} | {r['ratio']:.2f} | {per_tile} ({r['tile']}){refused} | "
              f"{margin} | {r['choosing_s']:.2f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
