"""What a command may write over: the one rule for every writer.

``--overwrite`` is consent to replace a package this tool wrote, not to delete whatever ``-o``
names. So an existing output is replaced only when

- it is a package dlmodel wrote (its marker file, :data:`PACKAGE_MARKER`, is in the folder or
  the zip), and
- it is not the current folder, the home folder, a filesystem root, an input of the command, a
  folder that holds an input, or a symbolic link (to any of these or anything else).

And no output file is ever one of the command's inputs (``predict -o`` into the input folder,
``heatmap -o`` naming its own table): refused before anything runs.

>>> from pathlib import Path
>>> check_output_files([Path("out/a_prediction.tif")], [Path("in/a.tif")])
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
# Written into every package dlmodel writes (folder or zip): what --overwrite may replace.
PACKAGE_MARKER = ".dlmodel-package"


def marker_text(what: str) -> str:
    """The marker's content: which command wrote the package (for a person reading it)."""
    return json.dumps({"written_by": "dlmodel", "command": what}) + "\n"


def is_own_package(path: Path) -> bool:
    """Whether ``path`` is a package folder or zip that dlmodel wrote (it holds the marker)."""
    if path.is_dir():
        return (path / PACKAGE_MARKER).is_file()
    if path.is_file() and path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as z:
                return PACKAGE_MARKER in z.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
    return False


def check_replaceable(out: PathLike, inputs: Iterable[PathLike] = (), flag: str = "--overwrite") -> None:
    """Refuse, in one line, to replace ``out`` unless it is a package dlmodel wrote and none of
    the places a command must never delete (module docstring). Nothing is touched."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink():
        raise InputError(f"{out} is a symbolic link: {flag} replaces only a package folder dlmodel wrote, never "
                         "through a link; give another output")
    target = out.resolve()
    never = {Path.cwd().resolve(): "the current folder", Path.home().resolve(): "your home folder",
             Path(target.anchor): "a filesystem root"}
    if target in never:
        raise InputError(f"{out} is {never[target]}: {flag} never replaces it; give a new output")
    for given in inputs:
        p = Path(given).resolve()
        if p == target:
            raise InputError(f"{out} is an input of this command: {flag} never replaces it; give another output")
        if target in p.parents:
            raise InputError(f"{out} holds {given}, an input of this command: {flag} never replaces it; give "
                             "another output")
    if not is_own_package(target):
        raise InputError(f"{out} exists and is not a package dlmodel wrote (no {PACKAGE_MARKER} in it): {flag} "
                         "replaces only those; remove it yourself, or give another output")


def replace(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out``, replacing the package there (checked by
    :func:`check_replaceable` before the work began, and again now): the old one is moved aside
    first and removed only once the new one is in place."""
    aside: Optional[Path] = None
    if out.exists() or out.is_symlink():
        check_replaceable(out)
        aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        if aside is not None:
            os.replace(aside, out)
        raise
    if aside is not None:
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()


def check_output_files(outputs: Iterable[PathLike], inputs: Sequence[PathLike]) -> None:
    """Refuse, before anything runs, an output file that is one of the inputs (the same file,
    however named). ``predict -o`` into its input folder would otherwise overwrite an input named
    like an output (``x_labels.tif``, the user's own labels)."""
    given = {Path(p).resolve(): p for p in inputs}
    for o in outputs:
        hit = given.get(Path(o).resolve())
        if hit is not None:
            raise InputError(f"output {o} would overwrite the input {hit}: give another output folder (-o), or "
                             "move that input")
