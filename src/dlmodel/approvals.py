"""Which Python environments this machine approved to run models in.

A pipeline (``.cppipe``) is a colleague's file, and its RunDLModel setting "Python environment for
the model" names a program. CellProfiler must not start a program because a file said so: a
worker starts only in an environment the user approved on this machine, by making it
(``dlmodel env create``) or by naming it (``dlmodel env add PATH``, :func:`approve`). The list is
a JSON file in the user's configuration folder (:func:`registry_path`), one record per
environment: its Python, and where its ``dlmodel`` is imported from (checked again at every
start of a worker, which runs isolated from the current folder).

Only the standard library: this runs inside CellProfiler 4.2.8 (Python 3.9) too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .errors import WorkerError, one_line

CONFIG_ENV = "DLMODEL_CONFIG"
PROBE_TIMEOUT_S = 120.0
# The one command a worker starts with: isolated (-I), so neither the current folder nor
# PYTHONPATH/PYTHONHOME nor the user's site-packages can put another dlmodel first.
WORKER_ARGS = ("-I", "-m", "dlmodel.worker")
_LOCK = threading.Lock()
_THIS_PROCESS: set = set()  # allowed for this process only (--allow-unapproved-python)


class EnvironmentNotApproved(WorkerError):
    """A Python environment named by a pipeline, a flag or an argument that this machine has not approved."""


def config_dir() -> Path:
    """The user's dlmodel configuration folder: ``$DLMODEL_CONFIG``, else the platform's
    (``~/.config/dlmodel``, ``~/Library/Application Support/dlmodel``, ``%APPDATA%\\dlmodel``)."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "dlmodel"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "dlmodel"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "dlmodel"


def registry_path() -> Path:
    """The file that lists the approved environments."""
    return config_dir() / "environments.json"


def key(python: Union[str, Path]) -> str:
    """How an environment's Python is named in the list: its absolute path, links not
    followed (every venv's ``bin/python`` links to the same base Python)."""
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(python))))


def approved() -> List[Dict[str, Any]]:
    """Every approved environment's record (``python``, ``dlmodel``, ``how``, ``added``)."""
    path = registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise WorkerError(f"{path}: cannot read the list of approved environments ({one_line(e)}): fix or remove "
                          "it, then approve environments again with dlmodel env add PATH") from e
    records = data.get("environments") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise WorkerError(f"{path}: not a list of approved environments: fix or remove it")
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("python"), str)]


def record(python: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The approval record of an environment's Python, or None."""
    k = key(python)
    return next((r for r in approved() if r["python"] == k), None)


def probe(python: Union[str, Path]) -> Dict[str, Any]:
    """Start ``python`` isolated, as a worker would start, and ask where its dlmodel comes
    from: the user's explicit request (``dlmodel env add``), never a pipeline's."""
    code = ("import json, sys, dlmodel, dlmodel.client as c; "
            "print(json.dumps({'dlmodel': dlmodel.__path__[0], 'python': sys.version.split()[0], "
            "'missing': c.missing_here()}))")
    try:
        done = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WorkerError(f"{python}: cannot run it as a Python ({one_line(e)})") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        hint = ": install dlmodel there (pip install 'RunDLModel[onnx]')" if "dlmodel" in last else ""
        raise WorkerError(f"{python}: not a Python with dlmodel ({last}){hint}")
    try:
        facts = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise WorkerError(f"{python}: not a Python with dlmodel (it answered {done.stdout[:80]!r})") from e
    if facts.get("missing"):
        raise WorkerError(f"{python} lacks {', '.join(facts['missing'])}: install dlmodel with its engines there")
    return facts


def approve(python: Union[str, Path], how: str = "dlmodel env add") -> Dict[str, Any]:
    """Check that ``python`` is a Python with dlmodel (it is started once, isolated) and add it
    to this machine's list; returns its record."""
    from .client import find_python

    exe = find_python(python)
    facts = probe(exe)
    entry = {"python": key(exe), "dlmodel": facts["dlmodel"], "version": facts["python"], "how": how,
             "added": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _update(lambda records: [r for r in records if r["python"] != entry["python"]] + [entry])
    return entry


def remove(python: Union[str, Path]) -> bool:
    """Take an environment (its Python, or its folder, which may be gone) off the list; False if
    it was not on it."""
    names = {key(python), key(Path(python) / "bin" / "python"), key(Path(python) / "Scripts" / "python.exe")}
    found = any(r["python"] in names for r in approved())
    if found:
        _update(lambda records: [r for r in records if r["python"] not in names])
    return found


def allow_for_this_process(python: Union[str, Path]) -> None:
    """Let this process start ``python`` once without approving it on the machine (the explicit
    ``--allow-unapproved-python`` of one command, ``allow_unapproved_python=True``)."""
    _THIS_PROCESS.add(key(python))


def require(python: Union[str, Path], named_by: str = "the Python environment") -> Optional[Dict[str, Any]]:
    """The approval record of an environment's Python (None when allowed for this process only),
    or :class:`EnvironmentNotApproved` in one line, saying who named it; nothing is started."""
    k = key(python)
    found = record(k)
    if found is not None or k in _THIS_PROCESS:
        return found
    others = [r["python"] for r in approved()]
    choose = f", or choose one of: {', '.join(others)}" if others else ""
    raise EnvironmentNotApproved(
        f"{named_by} {k} is not approved on this machine, so it was not started: if you trust it, approve it with "
        f"`dlmodel env add {k}`{choose}")


def _update(change: Any) -> None:
    """Rewrite the list atomically (a reader never sees half a file)."""
    path = registry_path()
    with _LOCK:
        records = change(approved())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".environments.", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"environments": records}, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
