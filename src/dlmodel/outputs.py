"""What a command may write over: the one rule for every writer.

``--overwrite`` is consent to replace a package this tool wrote, not to delete whatever ``-o``
names. So an existing output is replaced only when

- it is a package dlmodel wrote (its marker file, :data:`PACKAGE_MARKER`, is in the folder or
  the zip) and holds nothing else: the marker lists every file with its sha256, so a file the
  user added since (``predict -o pkg/results``, notes, a package unzipped into their own
  folder) or changed (an edited README) keeps the whole package from being replaced, and
- it is not, and does not hold, the current folder or the home folder; it is not a filesystem
  root, an input of the command, a folder that holds an input, or a symbolic link (to any of
  these or anything else). Folders are compared as folders, not as spellings: one folder under
  two names (a case-insensitive disk's ``Data`` and ``data``, a bind mount) is one folder.

And no output file is ever one of the command's inputs (``predict -o`` into the input folder,
``heatmap -o`` naming its own table), nor an existing file beside an input that is not one
(``predict a.tif -o .`` over the user's ``a_labels.tif``): refused before anything runs.

>>> from pathlib import Path
>>> check_output_files([Path("out/a_prediction.tif")], [Path("in/a.tif")])
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
# Written into every package dlmodel writes (folder or zip): what --overwrite may replace.
PACKAGE_MARKER = ".dlmodel-package"
# What the system, a file browser or Python leave in any folder: never the user's data.
NOT_DATA = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "__pycache__"})


def marker_text(what: str, folder: Optional[Path] = None) -> str:
    """The marker's content: which command wrote the package (for a person reading it) and every
    file of ``folder`` (the finished package) with its sha256 (what ``--overwrite`` may replace)."""
    files = contents(Path(folder)) if folder is not None else {}
    return json.dumps({"written_by": "dlmodel", "command": what, "files": dict(sorted(files.items()))}, indent=1) + "\n"


def contents(path: Path) -> Dict[str, str]:
    """Every file of a package folder or zip (posix path inside it: sha256), the marker and
    :data:`NOT_DATA` left out; a symbolic link counts as its target's name, not followed."""
    found: Dict[str, str] = {}
    if path.is_file():
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir() and not _skipped(info.filename):
                    with z.open(info) as f:
                        found[info.filename] = _sha256(f)
        return found
    for root, dirs, files in os.walk(path):  # never follows a link to a folder
        dirs[:] = [d for d in dirs if d not in NOT_DATA]
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = Path(root, name)
            rel = full.relative_to(path).as_posix()
            if _skipped(rel):
                continue
            if full.is_symlink():
                found[rel] = "link:" + os.readlink(full)
            else:
                with open(full, "rb") as f:
                    found[rel] = _sha256(f)
    return found


def _skipped(rel: str) -> bool:
    return rel == PACKAGE_MARKER or bool(NOT_DATA.intersection(rel.split("/")))


def _sha256(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _listed(path: Path) -> Optional[Dict[str, str]]:
    """The files the marker of a package dlmodel wrote lists; None when it lists none (unreadable)."""
    try:
        if path.is_dir():
            text = (path / PACKAGE_MARKER).read_text()
        else:
            with zipfile.ZipFile(path) as z:
                text = z.read(PACKAGE_MARKER).decode()
        files = json.loads(text).get("files")
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
        return None
    return files if isinstance(files, dict) else None


def not_written(path: Path) -> List[str]:
    """The files of a package dlmodel wrote that it did not write as they are: added or changed
    since (the user's), which ``--overwrite`` must not delete. Every file when the marker lists
    none."""
    listed = _listed(path) or {}
    return sorted(rel for rel, sha in contents(path).items() if listed.get(rel) != sha)


def note_written(folder: Path, files: Iterable[Path]) -> None:
    """Record in a package's marker that dlmodel has just (re)written ``files`` in it
    (``dlmodel convert``'s weights and rdf), so they stay replaceable; a package without a
    marker stays without one, and any other file keeps its entry (the user's stay the user's)."""
    marker = Path(folder) / PACKAGE_MARKER
    listed = _listed(Path(folder)) if marker.is_file() else None
    if listed is None:
        return
    root = Path(folder).resolve()
    for f in files:
        with open(f, "rb") as fh:
            listed[Path(f).resolve().relative_to(root).as_posix()] = _sha256(fh)
    data = json.loads(marker.read_text())
    data["files"] = listed
    from .io import atomic_path

    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def same(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file or folder, however spelled (links, a case-insensitive
    disk, a bind mount): by identity where both exist, else by their resolved paths."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def holds(folder: PathLike, path: PathLike) -> bool:
    """Whether ``folder`` is ``path`` or one of the folders it lies in (compared by :func:`same`)."""
    p = Path(path).resolve()
    return any(os.path.exists(a) and same(a, folder) for a in (p, *p.parents))


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
    if out.name == "..":
        raise InputError(f"{out} ends in '..': {flag} replaces a package only when -o names it; give its own name")
    target = out.resolve()
    if target.parent == target:
        raise InputError(f"{out} is a filesystem root: {flag} never replaces it; give a new output")
    for place, what in ((Path.cwd(), "the current folder"), (Path.home(), "your home folder")):
        if same(target, place):
            raise InputError(f"{out} is {what}: {flag} never replaces it; give a new output")
        if holds(target, place):
            raise InputError(f"{out} holds {what}: {flag} never replaces it; give a new output")
    for given in inputs:
        if same(given, target):
            raise InputError(f"{out} is an input of this command: {flag} never replaces it; give another output")
        if holds(target, given):
            raise InputError(f"{out} holds {given}, an input of this command: {flag} never replaces it; give "
                             "another output")
    if not is_own_package(target):
        raise InputError(f"{out} exists and is not a package dlmodel wrote (no {PACKAGE_MARKER} in it): {flag} "
                         "replaces only those; remove it yourself, or give another output")
    if _listed(target) is None:
        raise InputError(f"{out} has a {PACKAGE_MARKER} that lists no files (an earlier dlmodel wrote it): {flag} "
                         "cannot tell your files from its own; remove it yourself, or give another output")
    foreign = not_written(target)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(f"{out} holds {foreign[0]}{more}, which dlmodel did not write (added or changed since): "
                         f"{flag} never deletes it; move it out, or give another output")


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
    ids = _identities(inputs)
    for o in outputs:
        hit = given.get(Path(o).resolve())
        if hit is None:  # the same file by another name (a case-insensitive disk, a bind mount)
            hit = ids.get(_identity(o))
        if hit is not None:
            raise InputError(f"output {o} would overwrite the input {hit}: give another output folder (-o), or "
                             "move that input")


def check_beside_inputs(outputs: Iterable[PathLike], inputs: Sequence[PathLike]) -> None:
    """Refuse, before anything runs, an output file that already exists in the folder of one of
    the inputs: there it may be the user's own (``a_labels.tif``, their annotation of ``a.tif``),
    and dlmodel cannot tell it from one it wrote. In an output folder of its own a run replaces
    its earlier outputs, and ``resume`` skips what is done, as before."""
    folders = _identities({Path(p).resolve().parent: p for p in inputs})
    for o in outputs:
        if os.path.exists(o):
            hit = folders.get(_identity(Path(o).resolve().parent))
            if hit is not None:
                raise InputError(f"{o} exists beside the input {hit} and may be yours: dlmodel never writes over "
                                 "it; give another output folder (-o), or move it")


def _identity(path: PathLike) -> Optional[tuple]:
    """What makes a file or folder itself, whatever its name (device and inode); None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _identities(paths: Union[Iterable[PathLike], Dict[Path, PathLike]]) -> Dict[tuple, PathLike]:
    """Each existing path's identity: the path as given (for messages)."""
    pairs = paths.items() if isinstance(paths, dict) else ((p, p) for p in paths)
    found: Dict[tuple, PathLike] = {}
    for p, given in pairs:
        key = _identity(p)
        if key is not None:
            found.setdefault(key, given)
    return found
