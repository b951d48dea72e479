"""GPU speed, measured side by side in one run on a machine with a CUDA GPU. Not a test, never
run by CI (CI has no GPU); benchmarks/run.py is the CPU benchmark.

    PYTHONPATH=src python benchmarks/gpu.py [--sizes 2048 8192] [--repeat 3] [--json OUT.json]
    PYTHONPATH=src python benchmarks/gpu.py --smoke    # the default model at 128x128, once, on the CPU

Per model (TorchScript weights on ``cuda``) and uint16 image size:
  (a)      dlmodel as it comes (on a GPU: 4 tiles per pass): each pass is queued through
           pinned host buffers, and the next batch is prepared and the last one stored while
           the GPU computes;
  (a, b1)  the same with one tile per pass;
  (a sync) dlmodel with every pass awaited before the next tile is prepared (no overlap);
  (c)      the floor: bare TorchScript forward passes, as many and as large as (a)'s tiles, on
           an input already on the GPU, no copies, no processing;
  (c+copy) the bare passes with each tile copied to the GPU and its output back;
  (host)   dlmodel with the GPU pass replaced by ready outputs: the host's share of (a), and
           the time to allocate and first touch an array the size of the outputs.
It also checks that dlmodel's GPU output equals its CPU output (TF32 convolutions differ a little),
and prints a Markdown table for docs/performance.md.

``--smoke`` checks that the benchmark runs, on a machine without a GPU too: every case once with
the default model at 128x128 on the CPU (the "GPU" columns are then CPU numbers, and the GPU peak
is not measured).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "default": ROOT / "models" / "nuclei_default" / "bioimageio.yaml",
    "wide": ROOT / "out" / "benchmarks" / "wide_unet" / "bioimageio.yaml",  # built by benchmarks/run.py
}


def image(size: int) -> np.ndarray:
    # speed does not depend on content; a smooth random image keeps the statistics ordinary
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    small = ndi.gaussian_filter(rng.random((size // 8, size // 8)), 2)
    big = ndi.zoom(small, 8, order=1)[:size, :size]
    return (big / big.max() * 50000).astype(np.uint16)


def best(fn, repeat: int, device: str = "cuda") -> float:
    import torch

    # queued GPU work counts only once it is done; on the CPU every pass is done when it returns
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(name: str, size: int, repeat: int, profile: bool = False, device: str = "cuda") -> dict:
    import torch

    import dlmodel

    img = image(size)
    cuda = device.startswith("cuda")
    m = dlmodel.load(MODELS[name], engine="torchscript", device=device)
    pred = m.predict(img)  # warm-up: CUDA context, kernels, pinned-memory cache
    tile = [1, 1, pred.plan.tile_shape["y"], pred.plan.tile_shape["x"]]
    n = len(pred.plan.tiles)
    row = {"model": name, "size": size, "tiles": n, "tile": tile[2:],
           "device": torch.cuda.get_device_name(device) if cuda else "CPU (no GPU: --smoke)"}
    row["a"] = best(lambda: m.predict(img), repeat, device)
    m.predict(img, batch_size=1)
    row["a_b1"] = best(lambda: m.predict(img, batch_size=1), repeat, device)

    eng = m.engine
    queued = eng.submit
    eng.submit = lambda inputs: (lambda outs: (lambda: outs))(queued(inputs)())  # wait for every pass
    row["a_sync"] = best(lambda: m.predict(img), repeat, device)
    # the host's share: the same predict with the GPU pass replaced by ready outputs
    batch = [pred.plan.batch_size] + tile[1:]
    tile_out = eng.run([np.random.default_rng(1).normal(size=batch).astype(np.float32)])
    eng.submit = lambda inputs: (lambda: [o[:len(inputs[0])] for o in tile_out])
    row["host_only"] = best(lambda: m.predict(img), repeat, device)
    if profile:  # where the host's time goes, all in this thread
        import cProfile
        import pstats

        cls = eng.__class__
        eng.__class__ = type("Synchronous", (cls,), {"asynchronous": False})
        prof = cProfile.Profile()
        prof.runcall(m.predict, img)
        eng.__class__ = cls
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    eng.submit = queued
    out_elems = sum(v.size for v in pred.values())
    t0 = time.perf_counter()
    np.zeros(out_elems, np.float32)[:] = 1
    row["out_alloc"] = time.perf_counter() - t0

    net = eng.module
    x_host = torch.from_numpy(np.random.default_rng(1).normal(size=tile).astype(np.float32))
    x_dev = x_host.to(device)

    def bare() -> None:
        with torch.inference_mode():
            for _ in range(n):
                net(x_dev)

    def bare_copies() -> None:
        with torch.inference_mode():
            for _ in range(n):
                net(x_host.to(device)).cpu()

    bare()
    row["c"] = best(bare, repeat, device)
    row["c_copy"] = best(bare_copies, repeat, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        m.predict(img)
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if size <= 2048:  # same numbers as on CPU?
        cpu = dlmodel.load(MODELS[name], engine="torchscript", device="cpu").predict(img)
        row["max_abs_diff_vs_cpu"] = max(float(np.abs(pred[k] - cpu[k]).max()) for k in cpu.keys())
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", action="store_true", help="profile the host's share at the largest size")
    ap.add_argument("--smoke", action="store_true", help="the default model at 128x128, once, on the CPU: seconds")
    args = ap.parse_args()
    import torch

    device = "cuda"
    if args.smoke:
        args.sizes, args.models, args.repeat, device = [128], ["default"], 1, "cpu"
        print("smoke: the default model at 128x128, every case once, on the CPU (GPU numbers need a GPU, "
              "without --smoke)")
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (--smoke runs on the CPU)")
    rows = []
    for name in args.models:
        if not MODELS[name].exists():
            why = ": benchmarks/run.py builds it" if name == "wide" else ""
            raise SystemExit(f"{MODELS[name]} is not there{why}")
        for size in args.sizes:
            r = measure(name, size, args.repeat, profile=args.profile and size == max(args.sizes), device=device)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{'GPU' if device == 'cuda' else 'device'}: {rows[0]['device']}, torch {torch.__version__}; "
          f"best of {args.repeat}, after a warm-up pass\n")
    print("| model | image | tiles | (a) dlmodel | (a) 1 tile per pass | (a sync) | (c) bare | (c+copy) | (a)/(c) | (a)/(c+copy) "
          "| (a sync)/(a) | (host) | output alloc | GPU peak | max abs diff vs CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        diff = f"{r['max_abs_diff_vs_cpu']:.1e}" if "max_abs_diff_vs_cpu" in r else "-"
        peak = f"{r['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in r else "-"
        print(f"| {r['model']} | {r['size']}² | {r['tiles']} of {r['tile'][0]}² | {r['a']:.3f} s | {r['a_b1']:.3f} s | "
              f"{r['a_sync']:.3f} s | {r['c']:.3f} s | {r['c_copy']:.3f} s | {r['a'] / r['c']:.2f} | "
              f"{r['a'] / r['c_copy']:.2f} | {r['a_sync'] / r['a']:.2f} | {r['host_only']:.3f} s | {r['out_alloc']:.3f} s | "
              f"{peak} | {diff} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
