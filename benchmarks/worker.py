"""The model in its own Python environment vs in-process, side by side in one run (issue 18).
Not a test, never run by CI.

    .venv/bin/python benchmarks/worker.py                       # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/worker.py --appose PATH         # also Appose, from a folder with `appose`
                                                                # (pip install --target PATH appose)
    .venv/bin/python benchmarks/worker.py --smoke               # 1 image set, 256x256: a check that it runs

1. Per image set on the 640x640 plate images (../shared/data/ExampleSBSImages, Channel2 = DNA),
   what RunDLModel's run() asks of the model: ``predict`` then ``labels`` (the default model, its
   own recipe): (a) in-process, (a') the same with onnxruntime's threads sleeping between runs
   instead of spin-waiting (DLMODEL_ORT_SPINNING=0, what the worker sets), (b) through our worker (dlmodel.client: framed JSON on pipes,
   arrays in shared memory), (c) through Appose 0.12 (its python_worker; the same model, loaded
   once; NDArrays in shared memory). Each case runs in its own process (one engine busy at a
   time: an idle engine's threads would spin-wait on the same 2 cores), the cases taking turns
   ``--rounds`` times over the same images; every image set's outputs and objects are compared
   with (a)'s. The overhead of (b) is measured twice: (b) - (a'), and (b)'s wall time minus the
   model's own time inside the worker (same call, so no drift between cases). Appose's worker
   gets DLMODEL_ORT_SPINNING=0 too, so (b) and (c) differ by their transport only.
2. Peak RSS at 2048x2048 (float32 in, 3 x float32 out, int32 labels: 16 + 48 + 16 MB), each case
   in its own process: in-process; the worker's client (CellProfiler's side) and the worker itself.
   No extra copy means: the client grows by the shared buffers only (input, outputs, labels), and
   the worker by the in-process peak plus the output buffers.

Writes the tables between the markers in docs/performance.md (section "Models in their own environment"),
except with ``--no-write`` or ``--smoke`` (every case once: 1 image set, 1 round, peak RSS at
256x256; prints the tables only).

The worker runs this very Python, which need not be approved (``dlmodel env add``) for a benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PLATE = ROOT.parent / "shared" / "data" / "ExampleSBSImages"
MODEL = ROOT / "models" / "nuclei_default"
DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- benchmarks/worker.py writes from here -->", "<!-- benchmarks/worker.py: to here -->"
RUNCELLPOSE_DOCKER_S = (45, 60)  # per image per module (CellProfiler issue #4808)

APPOSE_LOAD = """
import dlmodel
task.export(model=dlmodel.load(source))
"""
APPOSE_STEP = """
from appose import NDArray
pred = model.predict(image.ndarray(), axes="yx")
labels = model.labels(pred)
out = NDArray("float32", list(pred["prediction"].shape))
out.ndarray()[...] = pred["prediction"]
lab = NDArray("int32", list(labels.shape))
lab.ndarray()[...] = labels
task.outputs["prediction"] = out
task.outputs["labels"] = lab
"""


def plate_images(n: int):
    import tifffile

    paths = sorted(PLATE.glob("Channel2-*.tif"))[:n]
    return [tifffile.imread(p).astype(np.float32) for p in paths]  # CellProfiler hands float32


def step_in_process(model, image):
    """What RunDLModel's run() asks of the model (in-process, or through a worker)."""
    pred = model.predict(image, axes="yx")
    model.predict_seconds = getattr(model, "worker_seconds", 0.0)  # the worker's time for predict
    return pred["prediction"], model.labels(pred)


def child_timing(case: str, n_images: int, appose_path: str | None, reference: str | None) -> dict:
    """One case in this process: per-image wall times (and the worker's own model time)."""
    import dlmodel

    images = plate_images(n_images)
    service = model = None
    if case == "appose":
        sys.path.insert(0, appose_path)
        import appose

        env = appose.custom().wrap(Path(sys.executable).parents[1])  # the venv as it is (no uv, no download)
        service = env.python().env(PYTHONPATH=os.pathsep.join([appose_path, str(ROOT / "src")]),
                                   DLMODEL_ORT_SPINNING="0")
        service.task(APPOSE_LOAD, inputs={"source": str(MODEL)}).wait_for()
        step = lambda image: (None, _appose_step(service, image))  # noqa: E731
    else:
        if case == "in_process_nospin":
            os.environ["DLMODEL_ORT_SPINNING"] = "0"
        model = _load(case == "worker")
        step = lambda image: step_in_process(model, image)  # noqa: E731
    for image in images[:2]:  # warm-up: first passes allocate
        step(image)
    times, model_times, labels = [], [], []
    for image in images:
        t0 = time.perf_counter()
        out = step(image)
        times.append(time.perf_counter() - t0)
        if case == "worker":  # predict's and labels' own times in the worker
            model_times.append(model.worker_seconds + model.predict_seconds)
        labels.append(out[1].copy())
    if service:
        service.close()
    dlmodel.clear_cache()
    same = True
    if reference:
        ref = np.load(reference)
        same = all(np.array_equal(ref[f"l{i}"], lab) for i, lab in enumerate(labels))
    else:
        np.savez(os.environ["DLMODEL_BENCH_LABELS"], **{f"l{i}": lab for i, lab in enumerate(labels)})
    return {"times": times, "model_times": model_times, "same": same}


def timing(n_images: int, rounds: int, appose_path: str | None):
    import tempfile

    cases = ["in_process", "in_process_nospin", "worker"] + (["appose"] if appose_path else [])
    out = {c: [] for c in cases + ["worker_model"]}
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        reference = os.path.join(tmp, "labels.npz")
        for r in range(rounds):
            for case in cases:
                cmd = [sys.executable, __file__, "--child-timing", case, "--images", str(n_images)]
                if appose_path:
                    cmd += ["--appose", appose_path]
                if r or case != "in_process":
                    cmd += ["--reference", reference]
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                                     env={**os.environ, "DLMODEL_BENCH_LABELS": reference})
                if res.returncode:
                    raise SystemExit(res.stderr[-3000:])
                got = json.loads(res.stdout.strip().splitlines()[-1])
                out[case] += got["times"]
                out["worker_model"] += got["model_times"]
                same &= got["same"]
    return out, same


def _appose_step(service, image):
    from appose import NDArray

    arr = NDArray("float32", list(image.shape))
    arr.ndarray()[...] = image
    task = service.task(APPOSE_STEP, inputs={"image": arr}).wait_for()
    labels = task.outputs["labels"].ndarray()
    arr.shm.dispose()
    return labels


def child_memory(mode: str, size: int) -> dict:
    """One measurement in this (fresh) process: peak RSS of the step, and of the worker."""
    import dlmodel

    tile = plate_images(1)[0]
    image = np.tile(tile, (size // tile.shape[0] + 1, size // tile.shape[1] + 1))[:size, :size].copy()
    model = _load(mode == "worker")
    step_in_process(model, image[:256, :256])  # warm-up on a small image: engine allocations
    base = _rss_now()
    pred = model.predict(image, axes="yx")
    labels = model.labels(pred)
    # read every output and label, as CellProfiler's later modules do (mapped pages count once read)
    float(pred["prediction"].sum()), int(labels.max())
    result = {"base_mb": base, "peak_mb": _status_mb("VmHWM"),
              "buffers_mb": (image.nbytes + pred["prediction"].nbytes + labels.nbytes) / 2**20}
    if mode == "worker":
        status = Path(f"/proc/{model.worker.pid}/status").read_text()
        result["worker_peak_mb"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) / 1024
    return result


def _load(in_worker: bool):
    """The default model in this process, or in a worker running this Python (approved or not:
    it is the benchmark's own)."""
    import dlmodel

    if not in_worker:
        return dlmodel.load(MODEL)
    return dlmodel.load(MODEL, python=sys.executable, allow_unapproved_python=True)


def _rss_now() -> float:
    return _status_mb("VmRSS")


def _status_mb(key: str) -> float:
    """VmRSS or VmHWM (peak) of this process since its exec; getrusage's ru_maxrss would count
    the parent's pages at fork."""
    status = Path("/proc/self/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith(key)).split()[1]) / 1024


def memory(size: int) -> dict:
    out = {}
    for mode in ("in_process", "worker"):
        res = subprocess.run([sys.executable, __file__, "--child", mode, "--size", str(size)], capture_output=True,
                             text=True, timeout=900, cwd=ROOT)
        if res.returncode:
            raise SystemExit(res.stderr[-3000:])
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def report(cases, same, mem, size) -> str:
    med = {k: statistics.median(v) * 1000 for k, v in cases.items()}
    lo = {k: min(v) * 1000 for k, v in cases.items()}
    overhead = med["worker"] - med["in_process_nospin"]
    direct = statistics.median([w - m for w, m in zip(cases["worker"], cases["worker_model"])]) * 1000
    n = len(cases["in_process"])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores, Python {sys.version.split()[0]}, the default "
        f"nuclei model (onnx, CPU), {n} image sets (640x640 plate images, Channel2, in turns); outputs and objects "
        f"{'identical' if same else 'NOT identical'} in every case.",
        "",
        "| per image set (predict + labels) | median ms | fastest ms | vs in-process |",
        "| --- | --- | --- | --- |",
        f"| (a) in-process | {med['in_process']:.1f} | {lo['in_process']:.1f} | 1.00 |",
        f"| (a') in-process, engine threads sleep between runs | {med['in_process_nospin']:.1f} | "
        f"{lo['in_process_nospin']:.1f} | {med['in_process_nospin'] / med['in_process']:.3f} |",
        f"| (b) our worker (shared memory, pipes) | {med['worker']:.1f} | {lo['worker']:.1f} | "
        f"{med['worker'] / med['in_process']:.3f} |",
    ]
    if "appose" in med:
        lines.append(f"| (c) Appose 0.12 python_worker (shared memory) | {med['appose']:.1f} | {lo['appose']:.1f} | "
                     f"{med['appose'] / med['in_process']:.3f} |")
    lines.append(f"| RunCellpose's Docker mode, for scale | {RUNCELLPOSE_DOCKER_S[0] * 1000}-{RUNCELLPOSE_DOCKER_S[1] * 1000} | | "
                 f"{RUNCELLPOSE_DOCKER_S[0] * 1000 / med['in_process']:.0f}-{RUNCELLPOSE_DOCKER_S[1] * 1000 / med['in_process']:.0f} |")
    lines += [
        "",
        f"Overhead of (b): {overhead:.1f} ms ({overhead / med['in_process_nospin'] * 100:.1f} % of the model step) as "
        f"(b) - (a'), {med['worker'] - med['in_process']:.1f} ms as (b) - (a); "
        f"{direct:.2f} ms ({direct / med['in_process'] * 100:.2f} %) as (b)'s wall time minus the model's own time "
        f"in the worker (the transport alone: two requests, buffers lent from the pool, copies in and out). "
        f"Targets: <= 10 % and <= 20 ms.",
    ]
    if "appose" in med:
        lines.append(f"Appose: {med['appose'] - med['in_process_nospin']:.1f} ms over (a'), "
                     f"{med['appose'] - med['worker']:.1f} ms over (b).")
    w, h = mem["worker"], mem["in_process"]
    lines += [
        "",
        f"Peak RSS at {size}x{size} (each case in its own process; shared buffers: input, 3-channel output and "
        f"labels = {w['buffers_mb']:.0f} MB):",
        "",
        "| process | before the step MB | peak MB | growth MB |",
        "| --- | --- | --- | --- |",
        f"| in-process model | {h['base_mb']:.0f} | {h['peak_mb']:.0f} | {h['peak_mb'] - h['base_mb']:.0f} |",
        f"| worker's client (CellProfiler's side) | {w['base_mb']:.0f} | {w['peak_mb']:.0f} | {w['peak_mb'] - w['base_mb']:.0f} |",
        f"| the worker | | {w['worker_peak_mb']:.0f} | |",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--appose", default=None, help="a folder holding the appose package (pip install --target)")
    p.add_argument("--child", choices=("in_process", "worker"))
    p.add_argument("--child-timing", choices=("in_process", "in_process_nospin", "worker", "appose"))
    p.add_argument("--reference", default=None)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--smoke", action="store_true", help="1 image set, 1 round, 256x256, no Appose, writes no docs")
    args = p.parse_args()
    if args.smoke:
        args.images, args.rounds, args.size, args.appose, args.no_write = 1, 1, 256, None, True
        print("smoke: 1 image set, 1 round, peak RSS at 256x256, no Appose; docs/performance.md left as it is")
    if args.child:
        print(json.dumps(child_memory(args.child, args.size)))
        return 0
    if args.child_timing:
        print(json.dumps(child_timing(args.child_timing, args.images, args.appose, args.reference)))
        return 0
    cases, same = timing(args.images, args.rounds, args.appose)
    text = report(cases, same, memory(args.size), args.size)
    print(text)
    if not args.no_write:
        doc = DOC.read_text()
        if START not in doc:
            doc += f"\n## Models in their own environment (benchmarks/worker.py)\n\n{START}\n{END}\n"
        a, b = doc.index(START) + len(START), doc.index(END)
        DOC.write_text(doc[:a] + "\n" + text + "\n" + doc[b:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
