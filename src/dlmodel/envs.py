"""Engine environments: a Python environment with dlmodel, its engines and bioimageio.spec, for
models that run outside the caller's Python (RunDLModel's "Python environment for the model",
``dlmodel.load(..., python=...)``, ``--python``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .errors import DLModelError, one_line
from .engines import ENGINE_EXTRA

ENGINES = sorted(set(ENGINE_EXTRA.values()))  # the registry's pip extras: onnx, tensorflow, torch
PROJECT = Path(__file__).resolve().parents[2]  # the RunDLModel folder, when dlmodel runs from it


def env_python(path: Path) -> Path:
    """The Python of an environment folder."""
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirements_for(source: str) -> List[str]:
    """The pip requirements a package's own environment file names (``environment.yaml`` of its
    state dict, as bioimageio.core's "as described" test environment reads it), for this
    machine: conda-only entries (python, pip, cudatoolkit) are left out, conda's ``pytorch`` is
    pip's ``torch``, and CUDA local versions (``torch==2.11.0+cu130``) become the plain release.

    Raises DLModelError when the package names no environment file."""
    import re

    from .engines import environment_packages
    from .package import open_spec

    spec, _ = open_spec(source)
    if spec.environment_file is None:
        raise DLModelError(f"model {spec.name!r} names no environment file: --for needs one (use --engines instead)")
    wanted = []
    for item in environment_packages(spec):
        name = re.split(r"[=<>!~ ;\[]", item, maxsplit=1)[0].strip().lower()
        if not name or name in ("python", "pip", "cudatoolkit", "cuda-version", "cudnn", "nvidia") or item.startswith("-"):
            continue
        item = re.sub(r"^pytorch(?=[=<>!~ ]|$)", "torch", item)
        wanted.append(re.sub(r"\+[A-Za-z0-9.]+", "", item))  # torch==2.11.0+cu130: the release on PyPI
    return wanted


def core_pins() -> List[str]:
    """This project's pins of what dlmodel itself needs (numpy, pydantic, bioimageio.spec), from
    constraints.txt: an environment made for a package's own pins still gets a dlmodel that works."""
    import re

    keep = ("numpy", "pydantic", "bioimageio.spec")
    lines = (PROJECT / "constraints.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if re.split(r"[=<>!~ ]", ln.strip(), maxsplit=1)[0] in keep]


def install_commands(path: Path, engines: Sequence[str], python: Optional[str] = None,
                     requirements: Sequence[str] = ()) -> List[List[str]]:
    """The commands that make an engine environment at ``path``: a venv, then dlmodel with the
    engines' extras from this project, pinned by its constraints.txt, or, with ``requirements``
    (a package's own environment, :func:`requirements_for`), dlmodel and those requirements as
    the package pins them (not this project's constraints: they may clash, which is why such a
    package gets its own environment)."""
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise DLModelError(f"--engines {','.join(engines)}: unknown {', '.join(unknown)}; use {', '.join(ENGINES)}")
    if not (PROJECT / "setup.py").is_file():
        raise DLModelError(f"{PROJECT} is not the RunDLModel project folder: dlmodel env create installs from it")
    target = f"{PROJECT}[{','.join(engines)}]" if engines else str(PROJECT)
    pip = [str(env_python(path)), "-m", "pip", "install", "-q"]
    if requirements:
        # the package's pins first, then dlmodel beside them (without this project's pins)
        return [
            [python or sys.executable, "-m", "venv", str(path)],
            pip + ["--upgrade", "pip"],
            pip + list(requirements),
            pip + [target, *requirements, *core_pins()],
        ]
    return [
        [python or sys.executable, "-m", "venv", str(path)],
        pip + ["--upgrade", "pip"],
        pip + ["-c", str(PROJECT / "constraints.txt"), target],
    ]


INCOMPLETE = ".dlmodel-env-incomplete"  # in a folder dlmodel env create is still filling


def create(path: Path, engines: Sequence[str] = ("onnx",), python: Optional[str] = None,
           requirements: Sequence[str] = ()) -> Path:
    """Make the environment, approve it on this machine (:mod:`dlmodel.approvals`) and return its
    Python (what RunDLModel's setting points at).

    Only an absent or empty folder is filled, or one that an interrupted ``create`` left (its
    marker says so): never a folder holding anything else. A failure removes what was made, so
    the same command can be run again.
    """
    from . import approvals

    path = Path(path).expanduser().absolute()
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise DLModelError(f"{path} is not a folder: give a new folder for the environment")
    if env_python(path).exists() and not (path / INCOMPLETE).exists():
        raise DLModelError(f"{path} already holds an environment: remove it first, or approve it with "
                           f"dlmodel env add {env_python(path)}")
    if path.exists() and any(path.iterdir()) and not (path / INCOMPLETE).exists():
        raise DLModelError(f"{path} holds other files: give a new or empty folder for the environment")
    if (path / INCOMPLETE).exists():  # left by an interrupted create: ours to remove
        shutil.rmtree(path)
    made = not path.exists()  # else an empty folder of the user's: emptied again on failure, kept
    path.mkdir(parents=True, exist_ok=True)
    (path / INCOMPLETE).write_text("made by dlmodel env create; removed when it completes\n")
    try:
        for cmd in install_commands(path, engines, python, requirements):
            try:
                subprocess.run(cmd, check=True)
            except (OSError, subprocess.CalledProcessError) as e:
                raise DLModelError(f"{' '.join(cmd[:4])}...: {one_line(e)}") from e
        (path / INCOMPLETE).unlink()
        approvals.approve(env_python(path), how="dlmodel env create")
    except BaseException:
        # only ever what this call made (the folder was absent, empty or an interrupted create's)
        for child in [path] if made else list(path.iterdir()):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() and not child.is_symlink() else child.unlink()
        raise
    return env_python(path)
