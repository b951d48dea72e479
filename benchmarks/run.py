"""Speed and memory, measured side by side in one run (each measurement in its own process, so
peak RSS is that measurement's alone). Not a test: it prints ratios and writes
docs/performance.md.

    .venv/bin/python benchmarks/run.py [--sizes 512 2048 4096 8192] [--repeat 2]

Per image size, with the shared nuclei model (fixed 512x512 input, halo 32), on a uint16 image:
  (a) dlmodel, auto engine;
  (b) bioimageio.core, its default weight choice and the same engine as (a), 512x512 blocks;
  (c) the floor: the bare onnxruntime session running forward passes only, as many as (a) used.
"""
import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"
IMAGE = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_val" / "images"


def image(size: int) -> np.ndarray:
    import tifffile

    base = tifffile.imread(sorted(IMAGE.glob("*.tif"))[-1]).astype(np.uint16) * 200
    return np.ascontiguousarray(np.tile(base, (size // base.shape[0] + 1, size // base.shape[1] + 1))[:size, :size])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(case: str, size: int, repeat: int, tiles: int) -> dict:
    """Runs in a child process: one case, best of ``repeat``."""
    img = image(size)
    base_rss = peak_rss_mb()
    times, extra = [], {}
    if case == "dlmodel":
        import dlmodel

        model = dlmodel.load(MODEL)
        for _ in range(repeat):
            t0 = time.perf_counter()
            pred = model.predict(img)
            times.append(time.perf_counter() - t0)
        extra = {"engine": model.weights_format, "tiles": len(pred.plan.tiles)}
    elif case.startswith("core"):
        from bioimageio.core import Sample, Tensor, create_prediction_pipeline, predict
        from bioimageio.core.axis import AxisId
        from bioimageio.spec import load_model_description

        descr = load_model_description(MODEL, perform_io_checks=False)
        pp = create_prediction_pipeline(descr, weight_format=None if case == "core_default" else "onnx")
        block = {"raw": {AxisId("batch"): 1, AxisId("channel"): 1, AxisId("y"): 512, AxisId("x"): 512}}
        x = img.astype(np.float32)[None, None]  # core takes float32 samples
        for _ in range(repeat):
            sample = Sample(members={"raw": Tensor.from_numpy(x, dims=("batch", "channel", "y", "x"))}, stat={}, id="s")
            t0 = time.perf_counter()
            predict(model=pp, inputs=sample, input_block_shape=block)
            times.append(time.perf_counter() - t0)
        extra = {"engine": type(pp._adapter).__name__.replace("ModelAdapter", "").lower()}
    elif case == "bare":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(MODEL.parent / "weights.onnx"), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        x = np.random.default_rng(0).normal(size=(1, 1, 512, 512)).astype(np.float32)
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(tiles):
                sess.run(None, {name: x})
            times.append(time.perf_counter() - t0)
        extra = {"engine": "onnxruntime", "tiles": tiles}
    return {"case": case, "size": size, "seconds": min(times), "peak_rss_mb": peak_rss_mb(),
            "baseline_rss_mb": base_rss, **extra}


def child(case: str, size: int, repeat: int, tiles: int = 0) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", case, str(size), str(repeat), str(tiles)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", nargs=4)
    args = ap.parse_args()
    if args.child:
        case, size, repeat, tiles = args.child
        print(json.dumps(measure(case, int(size), int(repeat), int(tiles))))
        return 0
    rows = []
    for size in args.sizes:
        a = child("dlmodel", size, args.repeat)
        c = child("bare", size, args.repeat, a["tiles"])
        b_def = child("core_default", size, args.repeat)
        b_same = child("core_onnx", size, args.repeat)
        inner = 512 - 2 * 32
        geometric = size * size / (inner * inner)
        rows.append((size, a, b_def, b_same, c, geometric))
        print(f"{size}x{size}: dlmodel {a['seconds']:.2f} s ({a['engine']}, {a['tiles']} tiles, {a['peak_rss_mb']:.0f} MB) | "
              f"core default {b_def['seconds']:.2f} s ({b_def['engine']}, {b_def['peak_rss_mb']:.0f} MB) | "
              f"core onnx {b_same['seconds']:.2f} s ({b_same['peak_rss_mb']:.0f} MB) | bare {c['seconds']:.2f} s", flush=True)
    lines = [
        "# Performance",
        "",
        f"Measured by `benchmarks/run.py` on {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
        f"Python {platform.python_version()}; best of {args.repeat}; each measurement in its own process. Shared nuclei model "
        "(fixed 512x512 input, halo 32), uint16 image.",
        "",
        "| image | (a) dlmodel auto | (b) core default | (b) core, same engine | (c) bare engine | (a)/(c) | (b default)/(a) | (b same)/(a) | tiles / geometric min | peak RSS (a) / (b same) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size, a, bd, bs, c, geo in rows:
        lines.append(
            f"| {size}x{size} | {a['seconds']:.2f} s ({a['engine']}) | {bd['seconds']:.2f} s ({bd['engine']}) | {bs['seconds']:.2f} s | "
            f"{c['seconds']:.2f} s | {a['seconds'] / c['seconds']:.2f} | {bd['seconds'] / a['seconds']:.2f} | {bs['seconds'] / a['seconds']:.2f} | "
            f"{a['tiles']} / {geo:.1f} = {a['tiles'] / geo:.2f} | {a['peak_rss_mb']:.0f} / {bs['peak_rss_mb']:.0f} MB |"
        )
    lines += ["", "Targets (issue 6) are not all met yet; see the issue's closing notes.", ""]
    (ROOT / "docs" / "performance.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
