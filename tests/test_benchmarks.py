"""Every benchmark script runs: ``python benchmarks/X.py --smoke`` (tiny sizes, CPU, seconds),
as a real subprocess, must exit 0 and print its table or ratios. An import or interface break in
a benchmark fails here instead of rotting until someone measures. The timings decide nothing.

Each script runs from a temporary working directory (a path relative to the repository would
break) and must leave docs/ and the repository's output folders as they were. The runs start
together, two at a time, so the file takes about as long as its longest runs."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CELLPROFILER = Path(sys.executable).parent / "cellprofiler"
HAS_DATA = (SHARED / "data" / "dsb2018_nuclei_val").exists()

# what each smoke run must print (a regex over its stdout): its table header and a row of numbers
EXPECT = {
    "accuracy.py": r"\| method \| F1 \| TP \| FP \| FN \|\n\| --- .*\n\| [^|]+ \| \d\.\d{3} \| \d+ \|",
    "cellprofiler_dask.py": r"one cellprofiler process +[\d.]+ s\n +dlmodel cellprofiler, 2 workers +[\d.]+ s +\([\d.]+x one "
                            r"process(.*\n)+ +per slice: overhead -?[\d.]+ s",
    "confidence.py": r"\| measure \| value \|",
    "core_2048.py": r"dlmodel, auto engine .* ratio to dlmodel +1\.00\n"
                    r".*bioimageio\.core, default choice .* ratio to dlmodel +\d+\.\d\d",
    "deepimagej_macros_check.py": r"(?m)^per_sample_scale_range\.ijm +uint8 2D .*\n(.*\n)*.*binarize\.ijm ",
    "examplesbs_swap.py": r"\| nuclei per well: median \(range\) \| \d+ \(\d+-\d+\) \| \d+ \(\d+-\d+\) \|",
    "fastest_engine.py": r"\| model \| device \| image \| auto: engine, s \|.*\n\| --- .*\n(.*\n)*"
                         r"\| 3D demo \| cpu \| 16x64x64 \| \w+, [\d.]+ \| \w+, [\d.]+ \| [\d.]+ \|",
    "finetune.py": r"\| instance step \| before: F1 \(TP/FP/FN\) \| after: F1 \(TP/FP/FN\) \| change \|\n.*\n"
                   r"\| default watershed step \| \d\.\d{3}",
    "gpu.py": r"\| model \| image \| tiles \| \(a\) dlmodel .*\n.*\n\| default \| \d+² \| \d+ of \d+² \| [\d.]+ s",
    "run.py": r"wide 256x256: dlmodel [\d.]+ s .*\| bare [\d.]+ s .*alternated.*\n"
              r"memory wide 256x256 .*: peak \d+ MB = process with the model \d+ \+ input \d+ \+ output \d+ .*\n"
              r"memory 3d 64x64x16 .*: peak \d+ MB .*\n"
              r"plate pipeline, 2 image sets: RunDLModel [\d.]+ s(.*\n)+\[(met|NOT MET)\] wide 256x256: \(a\)/\(c\)"
              r"(.*\n)+\[(met|NOT MET)\] wide 256x256: peak RSS \d+ MB <= 650 MB",
    "throughput.py": r"one process +[\d.]+ s +[\d.]+ images/s(.*\n)+ +Dask, 2 workers +[\d.]+ s",
    "worker.py": r"\| \(b\) our worker \(shared memory, pipes\) \| [\d.]+ \|",
}
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
# headless CellProfiler runs in these: the ExampleSBS screen, run.py's plate pipeline, accuracy.py's
# IdentifyPrimaryObjects baseline (tens of seconds between them)
NEEDS_CELLPROFILER = {"examplesbs_swap.py", "run.py", "accuracy.py", "cellprofiler_dask.py"}
SLOWEST = ("examplesbs_swap.py", "run.py")  # started first, so that the short ones fill the other core
# where the benchmarks write when they measure (run.py and worker.py: docs/performance.md,
# out/benchmarks; examplesbs_swap.py: docs/screen.md's table, out/examplesbs; finetune.py:
# build/finetuned_zoo_unet): none of it may change in a smoke run
GUARDED = [ROOT / "docs" / "performance.md", ROOT / "docs" / "screen.md", ROOT / "out" / "benchmarks",
           ROOT / "out" / "examplesbs", ROOT / "build" / "finetuned_zoo_unet"]


def _snapshot() -> dict:
    files = {}
    for top in GUARDED:
        for p in [top] if top.is_file() else top.rglob("*") if top.exists() else ():
            if p.is_file() and "__pycache__" not in p.parts:
                small = p.suffix in (".md", ".yaml")
                files[p] = hashlib.sha256(p.read_bytes()).hexdigest() if small else p.stat().st_mtime_ns
    return files


def _runs_here(script: str) -> bool:
    return HAS_DATA and (script not in NEEDS_CELLPROFILER or CELLPROFILER.exists())


def _params():
    for name in SCRIPTS:
        skip = pytest.mark.skipif(HAS_DATA and not _runs_here(name), reason="runs headless CellProfiler "
                                  "(cellprofiler-nightly), which is not installed")
        yield pytest.param(name, marks=[skip], id=name[:-3])


def _smoke(script: str, folder: Path) -> subprocess.CompletedProcess:
    """``python benchmarks/SCRIPT --smoke`` from ``folder``, its temporary files in there too."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(folder)}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The smoke runs of the scripts this session selected, started at once, two at a time (a
    CI machine's two cores; most of a run is single-threaded start-up), the longest first; and
    the guarded files as they were before."""
    chosen = {item.callspec.params["script"] for item in request.session.items
              if getattr(item, "originalname", None) == "test_smoke" and hasattr(item, "callspec")}
    chosen = sorted((s for s in chosen if s in EXPECT and _runs_here(s)), key=lambda s: (s not in SLOWEST, s))
    before = _snapshot()
    pool = ThreadPoolExecutor(max_workers=2)
    runs = {s: pool.submit(_smoke, s, tmp_path_factory.mktemp(s[:-3])) for s in chosen}
    yield runs, before
    pool.shutdown(cancel_futures=True)


@pytest.mark.skipif(not HAS_DATA, reason="../shared data is not there")
@pytest.mark.parametrize("script", _params())
def test_smoke(script, smoke_runs):
    assert script in EXPECT, f"benchmarks/{script} is new: give it a --smoke mode and say here what it prints"
    # a script that never parses its arguments would run in full and pass: it must know the flag
    assert '"--smoke"' in (ROOT / "benchmarks" / script).read_text(), f"benchmarks/{script} has no --smoke option"
    runs, before = smoke_runs
    res = runs[script].result()
    out = res.stdout
    assert res.returncode == 0, f"exit {res.returncode}\n{out[-3000:]}\n{res.stderr[-5000:]}"
    assert re.search(EXPECT[script], out), f"benchmarks/{script} --smoke printed no table:\n{out[-5000:]}"
    assert "Traceback" not in res.stderr, res.stderr[-5000:]
    # each guarded path is one script's own output (see GUARDED)
    changed = sorted(str(p.relative_to(ROOT)) for p, v in _snapshot().items() if before.get(p) != v)
    assert not changed, f"a smoke run wrote into the repository: {changed}"
