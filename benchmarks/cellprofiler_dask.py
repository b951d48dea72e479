"""`dlmodel cellprofiler` on the ExampleSBS plate (plate_screen.cppipe, RunDLModel's default model):
one plain `cellprofiler` process against the same pipeline in slices on a LocalCluster of 2
workers, side by side in one run; the model loads per worker; and what one slice costs besides
its image sets (CellProfiler's start-up, the pipeline and model load), from two plain runs of 1
and of K image sets, hence the slice size that keeps that overhead under 5 %.

    .venv/bin/python benchmarks/cellprofiler_dask.py              # the 96 wells (~6 min on 2 cores)
    .venv/bin/python benchmarks/cellprofiler_dask.py --smoke      # 2 wells: a check that it runs
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SBS = ROOT.parent / "shared" / "data" / "ExampleSBSImages"
PIPELINE = ROOT / "example_pipelines" / "plate_screen.cppipe"
CELLPROFILER = Path(sys.executable).parent / "cellprofiler"
READERS = ["--enable-readers", "imageio_reader", "imageio_reader_v3"]


def plain(images: Path, out: Path, first: int = 0, last: int = 0) -> float:
    """Wall time of one plain headless CellProfiler run (of image sets first..last when given)."""
    cmd = [str(CELLPROFILER), "-c", "-r", "-p", str(PIPELINE), "--plugins-directory", str(ROOT / "plugins"),
           "-i", str(images), "-o", str(out), *READERS]
    if first:
        cmd += ["-f", str(first), "-l", str(last)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"cellprofiler failed (exit {res.returncode}): {res.stderr[-3000:]}")
    return time.perf_counter() - t0


def on_dask(images: Path, out: Path, workers: int, per_task: int) -> float:
    cmd = [sys.executable, "-m", "dlmodel.cli", "cellprofiler", str(PIPELINE), "-i", str(images), "-o", str(out),
           "--plugins-directory", str(ROOT / "plugins"), *READERS, "--workers", str(workers), "--per-task", str(per_task)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"dlmodel cellprofiler failed (exit {res.returncode}): {res.stderr[-3000:]}")
    return time.perf_counter() - t0


def loads_per_worker(out: Path) -> dict:
    """Model loads counted in each slice's CellProfiler log, by the Dask worker that ran it."""
    loads = collections.Counter()
    for info in (out / "slices").glob("slice_*/.dlmodel-slice.json"):
        pid = json.loads(info.read_text())["pid"]
        log = out / "logs" / f"{info.parent.name}.log"
        loads[pid] += log.read_text(errors="replace").count("dlmodel: loaded model")
    return dict(loads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2 wells: seconds, not a measurement")
    args = ap.parse_args()
    if not CELLPROFILER.exists():
        raise SystemExit(f"no {CELLPROFILER}: this benchmark runs CellProfiler 5 (.venv)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = SBS
        if args.smoke:  # a folder of links to two wells
            images = tmp / "images"
            images.mkdir()
            for p in SBS.glob("Channel*-0[12]-A-0[12].tif"):
                (images / p.name).symlink_to(p)
            (images / "1049_Metadata.csv").symlink_to(SBS / "1049_Metadata.csv")
            print("smoke: 2 wells: a check that it runs, not a measurement")
        n = len(list(images.glob("Channel2-*.tif")))
        k = 2 if args.smoke else 8  # the longer of the two plain runs that give the per-slice overhead
        per_task = 1 if args.smoke else 12  # 8 slices of 12 wells: 4 per worker
        t_one = plain(images, tmp / "one")
        t_dask = on_dask(images, tmp / "dask", 2, per_task)
        t_1 = plain(images, tmp / "f1", 1, 1)
        t_k = plain(images, tmp / "fk", 1, k)
        loads = loads_per_worker(tmp / "dask")
    per_set = (t_k - t_1) / (k - 1)
    overhead = t_1 - per_set
    print(f"plate_screen.cppipe over {n} wells of ExampleSBS, 2 CPU cores (wall time, start-up included):")
    print(f"  one cellprofiler process          {t_one:7.1f} s")
    print(f"  dlmodel cellprofiler, 2 workers   {t_dask:7.1f} s  ({t_one / t_dask:.2f}x one process; "
          f"{-(-n // per_task)} slices of {per_task})")
    print(f"  per slice: overhead {overhead:.1f} s (CellProfiler start-up, pipeline and model load), "
          f"{per_set:.2f} s per image set (from plain runs of 1 and {k} image sets)")
    if per_set > 0 and overhead > 0:
        size = int(overhead * 19 / per_set) + 1  # overhead / (overhead + size * per_set) < 5 %
        print(f"  overhead under 5 % from {size} image sets per slice "
              f"(at {per_task}: {100 * overhead / (overhead + per_task * per_set):.0f} %)")
    print(f"  model loads per slice: 1 (one CellProfiler per slice); per worker: {sorted(loads.values()) or 'n/a'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
