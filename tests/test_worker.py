"""Models in their own Python environment: a real worker process (``python -m dlmodel.worker``)
started by dlmodel.client, images and outputs through shared memory; faults (a killed worker, a
hung one, a wrong Python, an environment without the engine)."""
import os
import signal
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import DSB_VAL, ROOT, SHARED, make_environment

import dlmodel
from dlmodel import approvals, client
from dlmodel.errors import InputError, WorkerError

DEFAULT_MODEL = ROOT / "models" / "nuclei_default"
PLATE_DNA = sorted((SHARED / "data" / "ExampleSBSImages").glob("Channel2-*.tif"))
PYTHON = sys.executable  # the test's own environment serves as the model's environment


@pytest.fixture(autouse=True)
def _close_workers():
    yield
    client.clear_cache()


def _plate_image(i=0):
    return tifffile.imread(PLATE_DNA[i])


def test_a_model_in_its_own_environment_gives_what_it_gives_here():
    image = _plate_image()
    here = dlmodel.load(DEFAULT_MODEL)
    there = dlmodel.load(DEFAULT_MODEL, python=PYTHON)
    assert isinstance(there, client.RemoteModel) and there.worker.pid != os.getpid()
    assert (there.spec.name, there.weights_format, there.device) == (here.spec.name, here.weights_format, here.device)
    a, b = here.predict(image, axes="yx"), there.predict(image, axes="yx")
    assert a.axes == b.axes and set(a) == set(b)
    for k in a:
        assert b[k].dtype == a[k].dtype and np.array_equal(a[k], b[k])
        assert not b[k].flags.owndata  # a view on the shared buffer, not a copy
    assert np.array_equal(here.labels(a), there.labels(b))
    assert np.array_equal(here.labels(a, method="threshold", threshold=0.6), there.labels(b, method="threshold", threshold=0.6))
    assert np.array_equal(a.channel("prediction", 1), b.channel("prediction", 1))
    assert there.test().ok and "max abs error" in there.test().summary()
    assert there.info()["name"] == here.info()["name"]


# make test-numpy2 sets it to .venv's Python (numpy 1) for the tests it runs on numpy 2
OTHER_NUMPY = os.environ.get("DLMODEL_OTHER_NUMPY_PYTHON")


@pytest.mark.skipif(not OTHER_NUMPY, reason="set DLMODEL_OTHER_NUMPY_PYTHON to a Python whose numpy is of the "
                    "other major version (make test-numpy2 does)")
def test_a_worker_on_the_other_major_numpy_gives_the_same_outputs_and_objects():
    """CellProfiler 5 (numpy 1) with its models in a numpy-2 environment, or a numpy-2 client (a
    napari environment) with a numpy-1 one: arrays cross as bytes and a dtype string, never
    pickled, so the outputs are the same bits and the objects the same."""
    other = subprocess.run([OTHER_NUMPY, "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.strip()
    assert other.split(".")[0] != np.__version__.split(".")[0], (other, np.__version__)
    approvals.approve(OTHER_NUMPY, how="tests")
    image = _plate_image()
    here = dlmodel.load(DEFAULT_MODEL)
    there = dlmodel.load(DEFAULT_MODEL, python=OTHER_NUMPY)
    a, b = here.predict(image, axes="yx"), there.predict(image, axes="yx")
    assert a.axes == b.axes and set(a) == set(b)
    for k in a:
        assert b[k].dtype == a[k].dtype and np.array_equal(a[k], b[k])
    labels = here.labels(a)
    assert labels.max() > 0 and np.array_equal(labels, there.labels(b))


def test_several_inputs_and_outputs(two_io):
    rng = np.random.default_rng(3)
    inputs = {"a": rng.normal(size=(40, 32)).astype(np.float32), "b": rng.normal(size=(2, 40, 32)).astype(np.float32)}
    axes = {"a": "yx", "b": "cyx"}
    a = dlmodel.load(two_io, engine="onnx").predict(inputs, axes=axes)
    b = dlmodel.load(two_io, engine="onnx", python=PYTHON).predict(inputs, axes=axes)
    assert set(a) == set(b) == {"sum", "pair"} and a.axes == b.axes
    for k in a:
        assert np.array_equal(a[k], b[k])


def test_the_model_is_loaded_once_per_environment():
    m1 = client.load_cached(DEFAULT_MODEL, python=PYTHON)
    m2 = client.load_cached(DEFAULT_MODEL, python=PYTHON)
    assert m1 is m2
    m3 = client.load_cached(ROOT / "models" / "nuclei3d_demo", python=PYTHON)
    assert m3.worker is m1.worker  # one worker per environment, holding both models
    client.clear_cache()
    assert not m1.worker.alive  # the end of a run: the worker exits


def test_errors_from_the_worker_are_the_same_errors():
    there = dlmodel.load(DEFAULT_MODEL, python=PYTHON)
    bad = np.full((64, 64), np.nan, np.float32)
    with pytest.raises(InputError, match="A01.tif has 4096 NaN"):
        there.predict(bad, axes="yx", name="A01.tif")
    with pytest.raises(dlmodel.SourceError):
        dlmodel.load(ROOT / "no" / "such" / "model", python=PYTHON)
    assert there.predict(_plate_image()[:64, :64], axes="yx")  # the worker goes on


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/status").exists() and "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_killed_worker_fails_one_request_and_the_next_starts_a_fresh_one():
    model = dlmodel.load(DEFAULT_MODEL, python=PYTHON)
    first = model.predict(_plate_image(), axes="yx")["prediction"]
    pid = model.worker.pid
    # killed while working on the request: stopped first, so the kill lands mid-request every time
    os.kill(pid, signal.SIGSTOP)
    threading.Timer(0.5, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(WorkerError) as err:
        model.predict(_plate_image(), axes="yx")
    msg = str(err.value)
    assert PYTHON in msg and "'RunDLModel default nuclei'" in msg and "killed (signal 9)" in msg and "\n" not in msg
    again = model.predict(_plate_image(), axes="yx")["prediction"]  # a fresh worker, the model loaded again
    assert model.worker.pid != pid and np.array_equal(first, again)
    assert _gone(pid)
    # a worker that died between requests (idle) is started again without failing the next one
    pid = model.worker.pid
    os.kill(pid, signal.SIGKILL)
    model.worker.proc.wait(10)
    assert np.array_equal(model.predict(_plate_image(), axes="yx")["prediction"], first) and model.worker.pid != pid


def test_a_hung_worker_times_out_and_is_stopped(monkeypatch):
    model = dlmodel.load(DEFAULT_MODEL, python=PYTHON)
    pid = model.worker.pid
    monkeypatch.setenv(client.TIMEOUT_ENV, "2")
    os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
    t0 = time.perf_counter()
    with pytest.raises(WorkerError, match=r"did not answer in 2 s while running model 'RunDLModel default nuclei'"):
        model.predict(_plate_image(), axes="yx")
    assert time.perf_counter() - t0 < 15
    assert _gone(pid)
    assert model.predict(_plate_image()[:64, :64], axes="yx")["prediction"].shape == (3, 64, 64)


def test_a_wrong_python_is_one_line(tmp_path):
    with pytest.raises(WorkerError, match="no such Python"):
        dlmodel.load(DEFAULT_MODEL, python=tmp_path / "nope" / "bin" / "python")
    with pytest.raises(WorkerError, match="a folder with no bin/python"):
        dlmodel.load(DEFAULT_MODEL, python=tmp_path)
    not_python = tmp_path / "not_python"
    not_python.write_text("#!/bin/sh\necho 'this is not a Python' >&2\nexit 3\n")
    not_python.chmod(0o755)
    with pytest.raises(WorkerError, match=r"not_python is not approved on this machine, so it was not started"):
        dlmodel.load(DEFAULT_MODEL, python=not_python)
    with pytest.raises(WorkerError, match=r"not_python exited \(code 3\) while starting: this is not a Python"):
        dlmodel.load(DEFAULT_MODEL, python=not_python, allow_unapproved_python=True)


def test_an_environment_without_the_engine_or_bioimageio_is_refused(tmp_path):
    no_onnx = make_environment(tmp_path / "no_onnx", PYTHON, block=["onnxruntime", "torch"])
    with pytest.raises(dlmodel.EngineError, match="no engine installed for model 'RunDLModel default nuclei'") as err:
        dlmodel.load(DEFAULT_MODEL, python=no_onnx)
    assert getattr(err.value, "choice", None) == "environment"
    no_spec = make_environment(tmp_path / "no_spec", PYTHON, block=["bioimageio"], approve=False)
    with pytest.raises(WorkerError, match="lacks bioimageio.spec"):  # dlmodel env add's own check
        approvals.approve(no_spec)
    with pytest.raises(WorkerError, match="lacks bioimageio.spec"):
        dlmodel.load(DEFAULT_MODEL, python=no_spec, allow_unapproved_python=True)


def test_the_plugin_side_needs_only_numpy_and_the_standard_library():
    """RunDLModel with torch, onnxruntime, tensorflow and bioimageio blocked in its process runs
    the default model through a worker, on a real CellProfiler workspace."""
    pytest.importorskip("cellprofiler_core")  # .venv-np2 (numpy 2) has no CellProfiler
    script = textwrap.dedent(f"""
        import sys
        BLOCKED = ["torch", "onnxruntime", "tensorflow", "keras", "bioimageio", "bioimageio.spec", "bioimageio.core"]
        for name in BLOCKED:
            sys.modules[name] = None
        sys.path.insert(0, {str(ROOT / "plugins")!r})
        import numpy as np, tifffile
        import cellprofiler_core.preferences as prefs
        prefs.set_headless()
        import rundlmodel
        from cellprofiler_core.image import Image, ImageSetList
        from cellprofiler_core.measurement import Measurements
        from cellprofiler_core.object import ObjectSet
        from cellprofiler_core.pipeline import Pipeline
        from cellprofiler_core.workspace import Workspace
        m = rundlmodel.RunDLModel()
        m.model_source.value = "models/nuclei_default"
        m.python.value = {PYTHON!r}
        m.inputs[0].image_name.value = "DNA"
        m.set_module_num(1)
        p = Pipeline()
        p.add_module(m)
        p.volumetric = lambda: False
        m.validate_module(p)
        sets = ImageSetList()
        image_set = sets.get_image_set(0)
        image_set.add("DNA", Image(tifffile.imread({str(sorted((DSB_VAL / 'images').glob('*.tif'))[0])!r})))
        meas = Measurements()
        m.run(Workspace(p, m, image_set, ObjectSet(), meas, sets))
        m.post_run(None)
        print("COUNT", meas.get_current_image_measurement("Count_Nuclei"))
        print("BLOCKED", all(sys.modules[n] is None for n in BLOCKED))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "COUNT 22" in res.stdout and "BLOCKED True" in res.stdout


def test_env_create_prints_the_commands(tmp_path):
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "env", "create", str(tmp_path / "env"), "--engines",
                          "onnx,torch", "--print"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].endswith(f"-m venv {tmp_path / 'env'}")
    # as a shell line: quoted where the path or the brackets need it
    assert lines[-1].endswith(f"-c {shlex.quote(str(ROOT / 'constraints.txt'))} {shlex.quote(f'{ROOT}[onnx,torch]')}")
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "env", "create", str(tmp_path / "env"), "--engines", "cuda"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown cuda" in res.stderr


def test_the_command_line_runs_the_model_in_another_environment(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((DSB_VAL / "images").glob("*.tif"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    runs = {}
    for name, extra in (("here", []), ("there", ["--python", PYTHON])):
        res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "predict", str(DEFAULT_MODEL), str(images), "-o",
                              str(tmp_path / name), *extra], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = sorted((tmp_path / name).iterdir())
    assert [p.name for p in runs["here"]] == [p.name for p in runs["there"]] and runs["here"]
    for a, b in zip(runs["here"], runs["there"]):
        assert np.array_equal(tifffile.imread(a), tifffile.imread(b))
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "info", str(DEFAULT_MODEL), "--python", PYTHON],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "RunDLModel default nuclei" in res.stdout
    # the flag reaches the worker: a Python that is not there is what the run stops on
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "predict", str(DEFAULT_MODEL), str(images), "-o",
                          str(tmp_path / "nowhere"), "--python", str(tmp_path / "no" / "python")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "no such Python" in res.stderr
