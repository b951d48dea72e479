"""Python environments for models: approved per machine, started isolated, spoken to warily
(issue 25, points 2 and 3, and the worker protocol and shared memory of point 5).

Every environment here is a real venv or a real program; the hostile worker is a real process
that speaks the protocol badly."""
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import dlmodel
from conftest import ROOT, make_environment
from dlmodel import approvals, client, envs, wire
from dlmodel.errors import DLModelError, WorkerError

DEFAULT_MODEL = ROOT / "models" / "nuclei_default"
PYTHON = sys.executable


@pytest.fixture(autouse=True)
def _close_workers():
    yield
    client.clear_cache()


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A machine whose list of approved environments starts empty."""
    monkeypatch.setenv(approvals.CONFIG_ENV, str(tmp_path / "config"))
    return tmp_path / "config"


def cli(*args, env=None, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "dlmodel.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


# --- approval ---------------------------------------------------------------------------------

def test_only_approved_environments_start_and_approval_is_checked(tmp_path, config):
    venv = make_environment(tmp_path / "env", PYTHON, approve=False)
    running = dict(client._WORKERS)  # other tests' workers may still be warm
    with pytest.raises(approvals.EnvironmentNotApproved) as err:
        dlmodel.load(DEFAULT_MODEL, python=venv)
    assert f"dlmodel env add {venv}" in str(err.value) and "\n" not in str(err.value)
    assert client._WORKERS == running  # nothing was started
    env = {**os.environ, approvals.CONFIG_ENV: str(config)}
    r = cli("info", DEFAULT_MODEL, "--python", venv, env=env)
    assert r.returncode == 2 and "is not approved on this machine" in r.stderr and "Traceback" not in r.stderr
    r = cli("info", DEFAULT_MODEL, "--python", venv, "--allow-unapproved-python", env=env)  # explicit, this call only
    assert r.returncode == 0 and "RunDLModel default nuclei" in r.stdout, r.stderr
    assert approvals.approved() == []
    # approving checks that it is a Python with dlmodel, then it is listed and used
    r = cli("env", "add", venv.parent.parent, env=env)
    assert r.returncode == 0 and "approved" in r.stdout, r.stderr
    assert [e["python"] for e in approvals.approved()] == [str(venv)]
    assert str(venv) in cli("env", "list", env=env).stdout
    model = dlmodel.load(DEFAULT_MODEL, python=venv)
    assert model.predict(np.zeros((64, 64), np.float32), axes="yx")["prediction"].shape == (3, 64, 64)
    client.clear_cache()
    r = cli("env", "remove", venv.parent.parent, env=env)
    assert r.returncode == 0 and approvals.approved() == []
    # a program that is not a Python with dlmodel is not approved
    not_python = tmp_path / "not_python"
    started = tmp_path / "started"
    not_python.write_text(f"#!/bin/sh\necho nope >&2\nexit 3\n")
    not_python.chmod(0o755)
    r = cli("env", "add", not_python, env=env)
    assert r.returncode == 2 and "not a Python with dlmodel" in r.stderr and approvals.approved() == []
    assert not started.exists()


def test_the_worker_never_imports_dlmodel_from_the_current_folder(tmp_path, monkeypatch):
    """A downloaded dataset with a dlmodel/ folder in it, and the user runs from there."""
    marker = tmp_path / "replaced"
    fake = tmp_path / "dataset" / "dlmodel"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    (fake / "worker.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    monkeypatch.chdir(fake.parent)
    model = dlmodel.load(DEFAULT_MODEL, python=PYTHON)
    assert model.predict(np.zeros((64, 64), np.float32), axes="yx")["prediction"].shape == (3, 64, 64)
    assert not marker.exists()


def test_a_worker_whose_dlmodel_moved_since_approval_is_refused(tmp_path, config):
    venv = make_environment(tmp_path / "env", PYTHON)
    entry = approvals.record(venv)
    assert entry["dlmodel"] == str(ROOT / "src" / "dlmodel")
    approvals._update(lambda records: [{**r, "dlmodel": "/elsewhere/dlmodel"} for r in records])
    with pytest.raises(WorkerError, match=r"imported dlmodel from .*src/dlmodel, not from /elsewhere/dlmodel"):
        dlmodel.load(DEFAULT_MODEL, python=venv)


# --- env create never touches the user's files; a failed one can be retried --------------------

def test_env_create_fills_only_a_new_or_empty_folder_and_cleans_up_after_itself(tmp_path, config):
    home = tmp_path / "project"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    with pytest.raises(DLModelError, match="holds other files"):
        envs.create(home, engines=[])
    assert (home / "notes.txt").read_text() == "mine\n" and sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    r = cli("env", "create", home, "--engines", "onnx")
    assert r.returncode == 2 and "holds other files" in r.stderr and (home / "notes.txt").exists()
    # a create that fails (here: its base Python cannot make a venv) leaves nothing behind
    target = tmp_path / "env"
    with pytest.raises(DLModelError):
        envs.create(target, engines=[], python="/bin/false")
    assert not target.exists()
    # one killed half-way left its marker: the next create knows the folder is its own
    target.mkdir()
    (target / envs.INCOMPLETE).write_text("")
    (target / "bin").mkdir()
    with pytest.raises(DLModelError, match="/bin/false -m venv"):
        envs.create(target, engines=[], python="/bin/false")
    assert not target.exists()
    # an empty folder the user made is kept (emptied again on failure)
    target.mkdir()
    with pytest.raises(DLModelError):
        envs.create(target, engines=[], python="/bin/false")
    assert target.is_dir() and not any(target.iterdir())
    assert approvals.approved() == []


def test_env_create_for_a_model_installs_what_its_environment_file_pins(tmp_path):
    careamics = ROOT / "tests" / "fixtures" / "careamics_n2v_tiny" / "careamics_n2v_tiny.zip"
    # its environment.yml pins torch==2.11.0+cu130 etc. for Python 3.12 with pip
    assert envs.requirements_for(str(careamics)) == ["torch==2.11.0", "torchvision==0.26.0", "careamics==0.3.5"]
    r = cli("env", "create", tmp_path / "env", "--for", careamics, "--engines", "torch", "--print")
    assert r.returncode == 0, r.stderr
    last = r.stdout.splitlines()[-1]
    # dlmodel's own pins beside the package's (numpy has none: dlmodel takes numpy 2, careamics 0.3.5 too)
    assert "careamics==0.3.5" in last and "torch==2.11.0" in last and "'pydantic<2.12'" in last and "[torch]" in last
    assert "numpy" not in last
    assert not (tmp_path / "env").exists()
    r = cli("env", "create", tmp_path / "env", "--for", ROOT / "models" / "nuclei_default", "--print")
    assert r.returncode == 2 and "names no environment file" in r.stderr


# --- the worker protocol: a peer is checked, never trusted -------------------------------------

def test_a_huge_frame_header_is_refused_without_allocating():
    tracemalloc.start()
    with pytest.raises(wire.ProtocolError, match="4294967295 bytes"):
        wire.recv(io.BytesIO(b"\xff\xff\xff\xff" + b"x" * 100))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20
    with pytest.raises(wire.ProtocolError, match="not JSON"):
        wire.recv(io.BytesIO(b"\x00\x00\x00\x05hello"))
    with pytest.raises(wire.ProtocolError, match="not a JSON object"):
        wire.recv(io.BytesIO(b"\x00\x00\x00\x02[]"))
    buf = bytearray(64)
    for bad in ({"shm": "x", "offset": 32, "shape": [16], "dtype": "<f4"},  # past the end
                {"shm": "x", "offset": -8, "shape": [1], "dtype": "<f4"},
                {"shm": "x", "offset": 0, "shape": [-1], "dtype": "<f4"},
                {"shm": "x", "offset": 0, "shape": [1], "dtype": "|O"},
                {"shm": "x", "offset": 0, "shape": "abc", "dtype": "<f4"},
                {"shm": "x"}):
        with pytest.raises(wire.ProtocolError):
            wire.view(bad, buf)


HOSTILE_WORKER = '''\
#!{python}
"""A real process that answers the approval probe properly, then speaks the protocol badly."""
import json, os, sys
sys.path.insert(0, {src!r})
if "-c" in sys.argv:
    print(json.dumps({{"dlmodel": {dlmodel!r}, "python": "3", "missing": []}}))
    sys.exit(0)
from dlmodel import wire
out = sys.stdout.buffer
how = os.environ["HOSTILE"]
if how == "junk":
    out.write(b"Welcome to my sitecustomize!\\n"); out.flush()
    sys.stdin.buffer.read()
    sys.exit(0)
wire.send(out, {{"hello": wire.PROTOCOL, "missing": [], "dlmodel": {dlmodel!r}}})
msg = wire.recv(sys.stdin.buffer)
if how == "huge":
    out.write(b"\\xff\\xff\\xff\\xff"); out.flush()
elif how == "need":
    wire.send(out, {{"need": -5}})
elif how == "garbage":
    wire.send(out, {{"ok": {{"handle": "one"}}}})
elif how == "other":
    wire.send(out, {{"surprise": 1}})
sys.stdin.buffer.read()
'''


@pytest.mark.parametrize("how,said", [
    ("junk", "sent a message of 1466264675 bytes"),
    ("huge", "sent a message of 4294967295 bytes"),
    ("need", "asked for a buffer of -5 bytes"),
    ("garbage", "answered with a malformed reply"),
    ("other", "answered {'surprise': 1}"),
])
def test_a_worker_that_breaks_the_protocol_fails_fast_in_one_line(how, said, tmp_path, config, monkeypatch):
    program = tmp_path / "hostile" / "bin" / "python"
    program.parent.mkdir(parents=True)
    program.write_text(HOSTILE_WORKER.format(python=PYTHON, src=str(ROOT / "src"), dlmodel=str(ROOT / "src" / "dlmodel")))
    program.chmod(0o755)
    approvals.approve(program)
    monkeypatch.setenv("HOSTILE", how)
    t0 = time.perf_counter()
    with pytest.raises(WorkerError) as err:
        dlmodel.load(DEFAULT_MODEL, python=program)
    assert time.perf_counter() - t0 < 20  # not the 120 s start-up timeout
    msg = str(err.value)
    assert said in msg and str(program) in msg and "it was stopped" in msg and "\n" not in msg, msg
    worker = client.worker_for(program)
    assert not worker.alive


def test_start_up_has_its_own_timeout_named_in_the_error(tmp_path, config, monkeypatch):
    program = tmp_path / "slow" / "bin" / "python"
    program.parent.mkdir(parents=True)
    program.write_text(f"#!/bin/sh\nif [ \"$1\" = -I ] && [ \"$2\" = -c ]; then exec {PYTHON} \"$@\"; fi\nexec sleep 60\n")
    program.chmod(0o755)
    approvals.allow_for_this_process(program)
    monkeypatch.setenv(client.START_TIMEOUT_ENV, "2")
    monkeypatch.setenv(client.TIMEOUT_ENV, "600")
    t0 = time.perf_counter()
    with pytest.raises(WorkerError, match=rf"did not answer in 2 s while starting; it was stopped \(set {client.START_TIMEOUT_ENV}"):
        dlmodel.load(DEFAULT_MODEL, python=program)
    assert time.perf_counter() - t0 < 15


# --- shared memory of a killed process group is reclaimed ---------------------------------------

@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="segments are files in /dev/shm on Linux only")
def test_segments_of_a_killed_process_group_are_reclaimed_at_the_next_start():
    code = textwrap.dedent(f"""
        import numpy as np, sys, time, dlmodel
        m = dlmodel.load({str(DEFAULT_MODEL)!r}, python={PYTHON!r})
        m.predict(np.zeros((128, 128), np.float32), axes="yx")
        print("ready", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.killpg(proc.pid, signal.SIGKILL)  # the client, its worker and Python's resource tracker at once
        proc.wait(30)
        time.sleep(0.5)
        left = [n for n in os.listdir("/dev/shm") if n.startswith(f"{wire.PREFIX}_{proc.pid}_")]
        assert left, "the kill left no segment: nothing to reclaim"
        removed = wire.reclaim_stale()
        assert set(left) <= set(removed)
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"{wire.PREFIX}_{proc.pid}_")]
        # a live process's segments are never touched
        mine = wire.create(10)
        try:
            assert mine.name not in wire.reclaim_stale()
            assert Path("/dev/shm", mine.name).exists()
        finally:
            wire.release(mine)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
