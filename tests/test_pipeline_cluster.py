"""`dlmodel cellprofiler`: a CellProfiler pipeline over a plate in slices, on a real Dask cluster
on 127.0.0.1, run by real headless CellProfiler (5, and 4.2.8 with the engine environment),
merged and scored; compared with one plain `cellprofiler` run of the same images.

Kept small for CI: 8 wells of the ExampleSBS plate (both kinds of control, five doses) as
symlinks; the whole plate is benchmarks/cellprofiler_dask.py's."""
import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, dask_cluster

SBS = SHARED / "data" / "ExampleSBSImages"
CELLPROFILER = Path(sys.executable).parent / "cellprofiler"
CP4 = ROOT / ".venv-cp4" / "bin" / "cellprofiler"
PIPELINE = ROOT / "example_pipelines" / "plate_screen.cppipe"
# E-02 negative controls; A-12, B-12, E-01 positive; A-06, E-06 samples (doses 0, 5, 10)
WELLS = ["A-01", "A-02", "A-06", "A-12", "B-12", "E-01", "E-02", "E-06"]
READERS = ["--enable-readers", "imageio_reader", "imageio_reader_v3"]
# what differs between any two CellProfiler runs of the same image set
TIMES = ("ExecutionTime_", "DLModel_InferenceSeconds_")

pytestmark = pytest.mark.skipif(not CELLPROFILER.exists() or not SBS.is_dir(),
                                reason="needs CellProfiler (cellprofiler-nightly) and ../shared/data/ExampleSBSImages")


def plate_of(folder, wells):
    folder.mkdir(parents=True)
    for p in SBS.glob("Channel*.tif"):
        if p.stem.split("-", 2)[2] in wells:
            (folder / p.name).symlink_to(p)
    (folder / "1049_Metadata.csv").symlink_to(SBS / "1049_Metadata.csv")
    return folder


def dlmodel_cp(images, out, *extra, pipeline=PIPELINE, popen=False, env=None, readers=True):
    cmd = [sys.executable, "-m", "dlmodel.cli", "cellprofiler", str(pipeline), "-i", str(images), "-o", str(out),
           "--plugins-directory", str(ROOT / "plugins"), "--threads", "1", *(READERS if readers else []), *extra]
    env = {**os.environ, "DLMODEL_THREADS": "1", **(env or {})}
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def table(path):
    """(header, rows as lists in file order, line end) with the run-time columns blanked."""
    raw = Path(path).read_bytes()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    blank = [i for i, k in enumerate(rows[0]) if k.startswith(TIMES)]
    for r in rows[1:]:
        for i in blank:
            r[i] = ""
    return rows[0], rows[1:], b"\r\n" in raw[:100000]


def same_tables(a_dir, b_dir, names):
    for name in names:
        ha, ra, ea = table(a_dir / name)
        hb, rb, eb = table(b_dir / name)
        assert ha == hb and ea == eb, name
        assert len(ra) == len(rb) and ra == rb, (name, next(((i, x, y) for i, (x, y) in enumerate(zip(ra, rb)) if x != y), None))


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    return plate_of(tmp_path_factory.mktemp("plate") / "images", WELLS)


@pytest.fixture(scope="module")
def reference(plate, tmp_path_factory):
    """One plain headless CellProfiler run of the whole pipeline (CalculateStatistics included)."""
    out = tmp_path_factory.mktemp("one_process")
    cmd = [str(CELLPROFILER), "-c", "-r", "-p", str(PIPELINE), "--plugins-directory", str(ROOT / "plugins"),
           "-i", str(plate), "-o", str(out), *READERS]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "DLMODEL_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def cluster_run(plate, tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster")
    res = dlmodel_cp(plate, out, "--workers", "2", "--per-task", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_merged_tables_equal_a_one_process_run(reference, cluster_run):
    """4 slices on 2 Dask workers: Image.csv and every object table are the one-process run's,
    row for row and column for column (as text, in its order, with its line ends), but for the
    run-time columns; every image set once."""
    out, res = cluster_run
    assert "ran 4 of 4 slices (8 image sets) on 2 workers" in res.stdout, res.stdout
    names = sorted(p.name for p in reference.glob("*.csv") if p.name != "Experiment.csv")
    assert names == ["Cells.csv", "Cytoplasm.csv", "Image.csv", "Nuclei.csv"]
    same_tables(reference, out, names)
    _, rows, _ = table(out / "Image.csv")
    assert [r[0] for r in rows] != [] and len(rows) == len(WELLS)
    assert sorted(p.name for p in (out / "slices").iterdir()) == [f"slice_{a:06d}-{a + 1:06d}" for a in (1, 3, 5, 7)]


def _cp_statistics(experiment):
    from test_screen import _cp_statistics as parse

    return parse(experiment)


def test_merged_statistics_equal_calculatestatistics(reference, cluster_run):
    """Z', one-tailed Z' (negative controls below) and V of the merged plate are CalculateStatistics'
    of the one-process run to 1e-6; its stand-in values are NaN with a reason here."""
    out, _ = cluster_run
    with open(reference / "Experiment.csv", newline="") as f:
        cp = _cp_statistics(dict(csv.reader(f)))
    with open(out / "screen.csv", newline="") as f:
        ours = {r["readout"]: r for r in csv.DictReader(f)}
    sentinels = {"Zfactor": -2999999.0, "Vfactor": -5999999.0}
    compared = 0
    for feature, theirs in cp.items():
        if feature not in ours:  # CellProfiler also scores its bookkeeping (image sizes, groups, times)
            assert feature.endswith("Number_Object_Number") or feature.startswith(
                ("Group_", "Height_", "Width_", "Scaling_", "Series_", "Metadata_", "DLModel_InferenceSeconds_")), feature
            continue
        for stat, col in (("Zfactor", "z_factor"), ("Vfactor", "v_factor")):
            mine = float(ours[feature][col])
            if theirs[stat] == sentinels[stat]:
                assert math.isnan(mine) and ours[feature][f"{col}_note"], (feature, stat)
            else:
                assert mine == pytest.approx(theirs[stat], rel=1e-6, abs=1e-12), (feature, stat)
                compared += 1
    assert compared > 250  # 153 features scored by both, Z' and V where CellProfiler gives a number


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two single-threaded workers (no nanny: killing one kills the worker itself)."""
    with dask_cluster(tmp_path, nanny=False, cwd=ROOT) as found:
        yield found


def _cellprofilers_writing_to(folder):
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(folder).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_worker_killed_mid_slice_is_rerun(reference, cluster, tmp_path, plate):
    """A Dask worker killed while its CellProfiler runs a slice: its CellProfiler dies with it,
    the slice runs again on the other worker, and the merged tables hold every image set once."""
    address, procs = cluster
    out = tmp_path / "out"
    run = dlmodel_cp(plate, out, "--scheduler", address, "--per-task", "4", popen=True)
    deadline, part = time.time() + 300, None
    while time.time() < deadline and part is None:
        part = next(iter(sorted((out / "slices").glob(".slice_*.part"))), None) if (out / "slices").is_dir() else None
        time.sleep(0.1)
    assert part is not None, run.communicate(timeout=60)
    time.sleep(4)  # CellProfiler is well into the slice
    pid = int(part.name.split("-")[-1].split(".")[0])
    assert pid in [p.pid for p in procs[1:]]
    os.kill(pid, signal.SIGKILL)
    next(p for p in procs if p.pid == pid).wait(timeout=30)  # reaped, as its nanny or shell would
    time.sleep(1)
    assert _cellprofilers_writing_to(part) == []  # died with its worker
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-3000:]
    assert "ran 2 of 2 slices (8 image sets)" in stdout, stdout
    same_tables(reference, out, ["Image.csv", "Nuclei.csv", "Cells.csv", "Cytoplasm.csv"])
    assert not list((out / "slices").glob(".slice_*.part"))  # the killed slice's part folder is gone


def test_resume_runs_only_the_missing_slices(reference, tmp_path, plate):
    """A run killed after its first slice: --resume runs the second only, the first untouched."""
    out = tmp_path / "out"
    run = dlmodel_cp(plate, out, "--per-task", "4", popen=True)
    first = out / "slices" / "slice_000001-000004"
    deadline = time.time() + 300
    while time.time() < deadline and not first.exists():
        time.sleep(0.1)
    assert first.exists(), run.communicate(timeout=60)
    time.sleep(2)
    os.killpg(run.pid, signal.SIGKILL)  # the runner and its CellProfiler, as a lost job would go
    run.wait(timeout=60)
    assert not (out / "slices" / "slice_000005-000008").exists() and not (out / "Image.csv").exists()
    inode = first.stat().st_ino
    res = dlmodel_cp(plate, out, "--per-task", "4", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ran 1 of 2 slices (8 image sets) here (1 already done)" in res.stdout, res.stdout
    assert first.stat().st_ino == inode and len(list((out / "logs").glob("*.log"))) == 2
    same_tables(reference, out, ["Image.csv", "Nuclei.csv", "Cells.csv", "Cytoplasm.csv"])


def read_pipeline_text(text, tmp):
    from dlmodel.pipelines import read_pipeline

    path = tmp / "p.cppipe"
    path.write_text(text)
    return read_pipeline(path)


def _edited(tmp_path, drop=(), replace=()):
    """plate_screen.cppipe without the modules named in ``drop``, with (old, new) text replaced."""
    text = PIPELINE.read_text()
    for old, new in replace:
        assert old in text
        text = text.replace(old, new)
    header, modules = read_pipeline_text(text, tmp_path)
    kept = [m.text for m in modules if m.name not in drop]
    path = tmp_path / "edited.cppipe"
    path.write_text(header.replace(f"ModuleCount:{len(modules)}", f"ModuleCount:{len(kept)}") + "\n\n" + "\n\n".join(kept) + "\n")
    return path


@pytest.mark.parametrize("case", ["no_export", "no_images", "absent_plugin", "writes_elsewhere", "unapproved_program"])
def test_bad_input_is_one_line_before_any_work(tmp_path, case):
    images = plate_of(tmp_path / "images", ["A-01"])
    extra, pipeline, readers = [], PIPELINE, True
    if case == "no_export":
        pipeline, want = _edited(tmp_path, drop=("ExportToSpreadsheet",)), "has no ExportToSpreadsheet module"
    elif case == "no_images":
        images = tmp_path / "other"  # images and the well CSV, but no file the pipeline's rules take
        images.mkdir()
        (images / "scan-A-01.tif").symlink_to(SBS / "Channel2-01-A-01.tif")
        (images / "1049_Metadata.csv").symlink_to(SBS / "1049_Metadata.csv")
        want = f"makes no image set from {images}"
    elif case == "absent_plugin":
        extra, want = ["--plugins-directory", str(tmp_path)], "needs the module RunDLModel, which is not in CellProfiler nor in the plugins folder"
    elif case == "writes_elsewhere":
        pipeline = _edited(tmp_path, replace=[("Output file location:Default Output Folder|",
                                               "Output file location:Elsewhere...|/tmp")])
        want = "ExportToSpreadsheet #10 writes to 'Elsewhere...|/tmp'"
    else:
        started = tmp_path / "started"
        program = tmp_path / "evil" / "bin" / "python"
        program.parent.mkdir(parents=True)
        program.write_text(f"#!/bin/sh\ntouch {started}\nexit 3\n")
        program.chmod(0o755)
        pipeline = _edited(tmp_path, replace=[("Python environment for the model:\n",
                                               f"Python environment for the model:{program}\n")])
        want = f"{program} is not approved on this machine"
    out = tmp_path / "out"
    res = dlmodel_cp(images, out, *extra, pipeline=pipeline, readers=readers)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and err[0].startswith("dlmodel: error:"), res.stderr[-2000:]
    assert want in err[0] and (str(pipeline) in err[0] or str(images) in err[0]), err[0]
    assert not (out / "slices").exists() and not (out / "logs").exists()
    if case == "unapproved_program":
        assert not (tmp_path / "started").exists()


def test_saved_images_go_where_the_pipeline_puts_them(tmp_path):
    """nuclei.cppipe's SaveImages (<image>_nuclei.tiff in the output folder), in 2 slices: the label
    images are in -o, as a plain run puts them, and not in the slices' folders."""
    from conftest import DSB_VAL

    images = tmp_path / "images"
    images.mkdir()
    files = sorted((DSB_VAL / "images").glob("*.tif"))[:2]
    for f in files:
        (images / f.name).symlink_to(f)
    out = tmp_path / "out"
    res = dlmodel_cp(images, out, "--per-task", "1", pipeline=ROOT / "example_pipelines" / "nuclei.cppipe")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*_nuclei.tiff")) == sorted(f"{f.stem}_nuclei.tiff" for f in files)
    assert not list((out / "slices").rglob("*.tiff"))
    with open(out / "Image.csv", newline="") as f:
        assert [r["ImageNumber"] for r in csv.DictReader(f)] == ["1", "2"]


def test_slices_by_count_and_by_metadata():
    """--per-task cuts CellProfiler's order into runs of N; --group-by gives each value its own
    slice, and refuses a grouping whose image sets are not consecutive (no -f/-l range holds them)."""
    from dlmodel.pipelines import ImageSet, PipelineError, slices

    sets = [ImageSet(i + 1, {"Metadata_Well": w, "Metadata_Site": s}) for i, (w, s) in
            enumerate([("A01", 1), ("A01", 2), ("A02", 1), ("A02", 2), ("A03", 1)])]
    assert [[s.number for s in part] for part in slices(sets, per_task=2)] == [[1, 2], [3, 4], [5]]
    assert [[s.number for s in part] for part in slices(sets, group_by=["Metadata_Well"])] == [[1, 2], [3, 4], [5]]
    with pytest.raises(PipelineError, match="Metadata_Site: the image sets of 1 are not consecutive"):
        slices(sets, group_by=["Metadata_Site"])
    with pytest.raises(PipelineError, match="--group-by Metadata_Plate: pipeline p.cppipe gives its image sets no such"):
        slices(sets, group_by=["Metadata_Plate"], pipeline="p.cppipe")


@pytest.mark.skipif(not CP4.exists(), reason="CellProfiler 4.2.8 is not installed (make cp4-setup)")
def test_cellprofiler_428_with_the_engine_environment(tmp_path, reference):
    """The same plate through CellProfiler 4.2.8 (no engine of its own): RunDLModel runs the model
    in .venv (the approved engine environment); 2 slices on a LocalCluster; the merged tables equal
    CellProfiler 5's one-process run as test_cellprofiler compares the two versions."""
    from test_cellprofiler import CP4_VS_CP5, RUN_COLUMNS, with_environment

    pipeline = tmp_path / "plate_screen_cp4.cppipe"
    text = (ROOT / "example_pipelines" / "cellprofiler4" / "plate_screen.cppipe").read_text()
    pipeline.write_text(with_environment(text, sys.executable))
    images = plate_of(tmp_path / "images", WELLS[:4])
    out = tmp_path / "out"
    res = dlmodel_cp(images, out, "--cellprofiler", str(CP4), "--per-task", "2", "--workers", "2",
                     pipeline=pipeline, readers=False, env={"PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ran 2 of 2 slices (4 image sets) on 2 workers" in res.stdout, res.stdout
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "CellProfiler 4.2.8" in logs or "4.2.8" in (out / "Experiment.csv").read_text()
    assert logs.count("dlmodel: started a worker in") == 2  # one engine-environment worker per slice
    from test_cellprofiler import _same_values

    for name in ("Image.csv", "Nuclei.csv"):
        with open(reference / name, newline="") as f:
            ref = list(csv.DictReader(f))
        with open(out / name, newline="") as f:
            got = list(csv.DictReader(f))
        ref = [r for r in ref if int(r["ImageNumber"]) <= 4]
        # + orientation: scikit-image 0.18 (4.2.8) gives +45 where 5.0 gives -45 for equal moments (test_cellprofiler)
        skip = RUN_COLUMNS + CP4_VS_CP5 + TIMES + ("AreaShape_Orientation",)
        common = sorted(k for k in set(ref[0]) & set(got[0]) if not k.startswith(skip) and not any(c in k for c in skip))
        assert "ImageNumber" in common and len(ref) == len(got)
        assert not _same_values(ref, got, common)
