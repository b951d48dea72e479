"""`dlmodel predict` on Dask: a real scheduler and workers on 127.0.0.1, started by the test."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import DSB_VAL, ROOT, dask_cluster

MODEL = ROOT / "models" / "nuclei_default"


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
    with dask_cluster(tmp_path) as found:
        yield found


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


# --- plates ----------------------------------------------------------------------------------

SBS = ROOT.parent / "shared" / "data" / "ExampleSBSImages"


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_plate_command_on_the_example_plate(tmp_path):
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "plate", str(MODEL), str(SBS), "-o", str(tmp_path),
                          "--metadata", str(SBS / "1049_Metadata.csv")], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    wells = read_csv(tmp_path / "wells.csv")
    objects = read_csv(tmp_path / "objects.csv")
    assert len(wells) == 96 and {w["row"] + w["column"] for w in wells} == {f"{r}{c}" for r in "ABCDEFGH" for c in range(1, 13)}
    per_well = {}
    for o in objects:
        per_well[(o["row"], o["column"])] = per_well.get((o["row"], o["column"]), 0) + 1
    for w in wells:
        assert int(w["count"]) == per_well.get((w["row"], w["column"]), 0)
        assert "meta_SBS_Doses" in w and float(w["mean_intensity_1"]) > 0
    assert (tmp_path / "plate_count.png").stat().st_size > 1000


def test_plate_resumes_and_runs_on_dask_like_predict(tmp_path):
    """`dlmodel plate` runs on the same batch engine: --resume redoes only the missing sites and
    --workers gives the same tables (issue 17)."""
    import shutil

    subset = tmp_path / "plate"
    subset.mkdir()
    for p in sorted(SBS.glob("Channel[12]-0[1-4]-A-0[1-4].tif")):
        shutil.copy(p, subset / p.name)
    cmd = [sys.executable, "-m", "dlmodel.cli", "plate", str(MODEL), str(subset), "--threads", "1"]
    first = subprocess.run(cmd + ["-o", str(tmp_path / "a")], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "segmented 4 of 4 sites" in first.stdout
    wells = (tmp_path / "a" / "wells.csv").read_text()
    (tmp_path / "a" / "sites" / "plate_A02_s1.csv").unlink()
    again = subprocess.run(cmd + ["-o", str(tmp_path / "a"), "--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "segmented 1 of 4 sites" in again.stdout and "(3 already done)" in again.stdout
    assert (tmp_path / "a" / "wells.csv").read_text() == wells
    dask = subprocess.run(cmd + ["-o", str(tmp_path / "b"), "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert dask.returncode == 0 and "on 2 workers" in dask.stdout, dask.stderr
    assert (tmp_path / "b" / "wells.csv").read_text() == wells
    assert (tmp_path / "b" / "objects.csv").read_text() == (tmp_path / "a" / "objects.csv").read_text()


def test_layouts():
    from dlmodel.platerun import parse_layout

    sites = parse_layout([Path("Channel2-01-A-01.tif"), Path("Channel1-01-A-01.tif"), Path("notes.txt")], "examplesbs")
    assert sites == {("plate", "A", 1, 1): {"2": Path("Channel2-01-A-01.tif"), "1": Path("Channel1-01-A-01.tif")}}
    sites = parse_layout([Path("P1_B03_s2_w1.tif"), Path("P1_B03_s2_w2_thumb.tif")], "imagexpress")
    assert list(sites) == [("P1", "B", 3, 2)] and set(sites[("P1", "B", 3, 2)]) == {"1", "2"}


# --- CellProfiler batches (-f/-l), as cluster job arrays run them ----------------------------

def test_plate_pipeline_in_four_batches_equals_one_run(tmp_path):
    import shutil

    from test_cellprofiler import CELLPROFILER, run_cellprofiler

    if not CELLPROFILER.exists():
        pytest.skip("cellprofiler is not installed")
    folder = tmp_path / "plate"
    folder.mkdir()
    wells = ["A-01", "A-02", "B-05", "C-07", "D-07", "E-12", "G-03", "H-12"]
    for p in SBS.glob("Channel*.tif"):
        if p.stem.split("-", 2)[2] in wells:
            shutil.copy(p, folder)
    shutil.copy(SBS / "1049_Metadata.csv", folder)
    whole = run_cellprofiler("plate_screen.cppipe", folder, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    counts = {}
    for k, (first, last) in enumerate([(1, 2), (3, 4), (5, 6), (7, 8)]):
        res = run_cellprofiler("plate_screen.cppipe", folder, tmp_path / f"batch{k}", "-f", str(first), "-l", str(last))
        assert res.returncode == 0, res.stderr[-2000:]
        for r in read_csv(tmp_path / f"batch{k}" / "Image.csv"):
            counts[(r["Metadata_Row"], r["Metadata_Column"])] = (r["Count_Nuclei"], r["Mean_Cytoplasm_Intensity_MeanIntensity_GFP"])
    expected = {(r["Metadata_Row"], r["Metadata_Column"]): (r["Count_Nuclei"], r["Mean_Cytoplasm_Intensity_MeanIntensity_GFP"])
                for r in read_csv(tmp_path / "whole" / "Image.csv")}
    assert counts == expected and len(expected) == 8
