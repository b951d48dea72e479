"""Engine environments: a Python environment with dlmodel, its engines and bioimageio.spec, for
models that run outside the caller's Python (RunDLModel's "Python environment for the model",
``dlmodel.load(..., python=...)``, ``--python``)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .errors import DLModelError, one_line
from .spec import ENGINE_EXTRA

ENGINES = sorted(set(ENGINE_EXTRA.values()))  # onnx, tensorflow, torch
PROJECT = Path(__file__).resolve().parents[2]  # the RunDLModel folder, when dlmodel runs from it


def env_python(path: Path) -> Path:
    """The Python of an environment folder."""
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def install_commands(path: Path, engines: Sequence[str], python: Optional[str] = None) -> List[List[str]]:
    """The commands that make an engine environment at ``path``: a venv, then dlmodel with the
    engines' extras from this project, pinned by its constraints.txt."""
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise DLModelError(f"--engines {','.join(engines)}: unknown {', '.join(unknown)}; use {', '.join(ENGINES)}")
    if not (PROJECT / "setup.py").is_file():
        raise DLModelError(f"{PROJECT} is not the RunDLModel project folder: dlmodel env create installs from it")
    target = f"{PROJECT}[{','.join(engines)}]" if engines else str(PROJECT)
    pip = [str(env_python(path)), "-m", "pip", "install", "-q"]
    return [
        [python or sys.executable, "-m", "venv", str(path)],
        pip + ["--upgrade", "pip"],
        pip + ["-c", str(PROJECT / "constraints.txt"), target],
    ]


def create(path: Path, engines: Sequence[str] = ("onnx",), python: Optional[str] = None) -> Path:
    """Make the environment and return its Python (what RunDLModel's setting points at)."""
    if env_python(path).exists():
        raise DLModelError(f"{path} already holds an environment: remove it first, or point RunDLModel at "
                           f"{env_python(path)}")
    for cmd in install_commands(path, engines, python):
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise DLModelError(f"{' '.join(cmd[:4])}...: {one_line(e)}") from e
    return env_python(path)
