"""`dlmodel predict` on Dask: a real scheduler and workers on 127.0.0.1, started by the test."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import DSB_VAL, ROOT

MODEL = ROOT / "models" / "nuclei_default"
BIN = Path(sys.executable).parent


def predict(out, *extra, timeout=600):
    cmd = [sys.executable, "-m", "dlmodel.cli", "predict", str(MODEL), str(DSB_VAL / "images"), "-o", str(out),
           "--labels", "--threads", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    res = predict(out)
    assert res.returncode == 0, res.stderr
    return out


def same_outputs(a, b):
    names = sorted(p.name for p in a.glob("*.tif"))
    assert names == sorted(p.name for p in b.glob("*.tif")) and len(names) == 64
    for n in names:
        assert np.array_equal(tifffile.imread(a / n), tifffile.imread(b / n)), n


def test_local_cluster_equals_single_process(reference, tmp_path):
    res = predict(tmp_path, "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "predicted 32 of 32 images" in res.stdout and "on 2 workers" in res.stdout
    same_outputs(reference, tmp_path)


@pytest.fixture
def cluster(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(sched_file), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    address = json.loads(sched_file.read_text())["address"]
    for _ in range(2):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                       "--no-dashboard", "--host", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    yield address, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def test_scheduler_run_survives_a_killed_worker(reference, cluster, tmp_path):
    address, procs = cluster
    cmd = [sys.executable, "-m", "dlmodel.cli", "predict", str(MODEL), str(DSB_VAL / "images"), "-o", str(tmp_path),
           "--labels", "--threads", "1", "--scheduler", address]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("*_labels.tif"))) < 4:
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)  # one worker dies mid-run
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    assert "predicted 32 of 32 images" in out
    same_outputs(reference, tmp_path)


def test_resume_predicts_only_what_is_missing(reference, tmp_path):
    for p in list(reference.glob("*.tif"))[:40]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    done = {p.name.rsplit("_", 1)[0] for p in reference.glob("*.tif")}
    complete = {s for s in done if (tmp_path / f"{s}_labels.tif").exists() and (tmp_path / f"{s}_prediction.tif").exists()}
    res = predict(tmp_path, "--workers", "2", "--resume")
    assert res.returncode == 0, res.stderr
    assert f"predicted {32 - len(complete)} of 32 images" in res.stdout and f"({len(complete)} already done)" in res.stdout
    same_outputs(reference, tmp_path)
