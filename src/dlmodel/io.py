"""Reading and writing images: TIFF (incl. OME-TIFF), PNG, JPEG and .npy; atomic writes."""
from __future__ import annotations

import glob
import os
import re
import socket
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .errors import ImageFileError, one_line

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")

# tifffile's axis letters -> ours ("S" = samples, i.e. RGB channels; "Q" = unknown)
_TIFF_AXES = {"X": "x", "Y": "y", "Z": "z", "C": "c", "S": "c", "T": "t", "I": "z"}


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def find_images(args: Iterable[str]) -> List[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order, once each."""
    found: List[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.is_file() and is_image(q))
        elif any(ch in arg for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            if not matches:
                raise ImageFileError(f"no files match {arg!r}")
            found += [m for m in matches if m.is_file()]
        else:
            found.append(p)  # missing or unreadable files are reported when read
    seen = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def read_image(path: Path) -> Tuple[np.ndarray, Optional[str]]:
    """Read an image; return the array and its axes when the file says (else None).

    2D images are ``yx``; colour PNG/JPEG are ``yxc`` (grey when all channels are equal)."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            return arr, "yx" if arr.ndim == 2 else None
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                arr = series.asarray()
                axes = "".join(_TIFF_AXES.get(a, "?") for a in series.axes)
            if arr.ndim == 2:
                return arr, "yx"
            return arr, axes if "?" not in axes and len(set(axes)) == len(axes) else None
        if suffix in (".png", ".jpg", ".jpeg"):
            import imageio.v3 as iio

            arr = iio.imread(path)
            if arr.ndim == 3:
                if arr.shape[-1] == 4:
                    arr = arr[..., :3]
                if all(np.array_equal(arr[..., 0], arr[..., i]) for i in range(1, arr.shape[-1])):
                    return arr[..., 0], "yx"
                return arr, "yxc"
            return arr, "yx"
    except ImageFileError:
        raise
    except Exception as e:
        first = one_line(e)
        raise ImageFileError(f"{path}: not a readable image ({first})") from e
    raise ImageFileError(f"{path}: unsupported file type {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")


def current_umask() -> int:
    """The process umask, read without changing it where the system says (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def honour_umask(path: Path, directory: bool = False) -> None:
    """Give a file (0666) or folder (0777) made by ``mkstemp``/``mkdtemp``, which use 0600 and
    0700 whatever the umask, the permissions an ordinary ``open``/``mkdir`` would have given:
    shared output folders and caches on a cluster depend on it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


# Temporary outputs are named ``.<name>.<host>-<pid>.<random>.part``: whoever finds one can tell
# whether the process writing it is alive (``remove_stale_parts``).
_HOST = socket.gethostname().replace(".", "_")[:40] or "host"


def image_header(path: Path) -> Optional[Tuple[Tuple[int, ...], np.dtype, Optional[str]]]:
    """(shape, dtype, axes) of a TIFF or .npy file from its header, without reading the pixels,
    as :func:`read_image` would return them; None for other files or an unreadable header
    (:func:`read_image` then says what is wrong)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".npy":
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    return None
            return tuple(shape), np.dtype(dtype), "yx" if len(shape) == 2 else None
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                shape, dtype = tuple(series.shape), np.dtype(series.dtype)
                axes = "".join(_TIFF_AXES.get(a, "?") for a in series.axes)
            if len(shape) == 2:
                return shape, dtype, "yx"
            return shape, dtype, axes if "?" not in axes and len(set(axes)) == len(axes) else None
    except Exception:
        return None
    return None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, renamed to ``path`` only if the block succeeds,
    so a crash never leaves a half-written file under the real name (``--resume`` relies on it).

    An error writing (no such folder, no permission, disk full, a name that is a folder) is one
    line naming the file (:class:`ImageFileError`); the temporary file is always removed."""
    path = Path(path)
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".part", dir=path.parent)
        os.close(fd)
        honour_umask(Path(tmp))
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise ImageFileError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def remove_stale_parts(folder: Path, older_than: float = 3600.0, names: Optional[Iterable[str]] = None) -> int:
    """Remove temporary outputs that a killed run left in ``folder``; returns how many.

    Only what is provably stale: a part file of this machine whose process is gone, or one of
    another machine (a cluster job writing to a shared folder) untouched for ``older_than``
    seconds. A part file in flight, this machine's or another's, is left alone. ``names``: only
    part files of these outputs (``.<name>.*.part``): an output folder may hold other programs'
    ``.*.part`` files (a browser's paused download), which are never dlmodel's to remove."""
    import time

    removed = 0
    now = time.time()
    own = None if names is None else set(names)
    for part in Path(folder).glob(".*.part"):
        if own is not None and not any(part.name.startswith(f".{n}.") for n in own):
            continue
        m = re.match(r"^\.(.+)\.(?P<host>[^.]+)-(?P<pid>\d+)\.[^.]+\.part$", part.name)
        try:
            if m and m.group("host") == _HOST:
                stale = not _alive(int(m.group("pid")))
            else:  # another machine's, or an older dlmodel's name: judge by age
                stale = now - part.stat().st_mtime > older_than
            if stale:
                part.unlink()
                removed += 1
        except OSError:  # gone meanwhile: its writer finished
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def write_image(path: Path, array: np.ndarray, axes: Optional[str] = None) -> Path:
    """Write a TIFF (with its axes) or .npy file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, array, allow_pickle=False)
        else:
            import tifffile

            meta = {"axes": axes.upper()} if axes and len(axes) == array.ndim else None
            tifffile.imwrite(tmp, array, metadata=meta)
    return path
