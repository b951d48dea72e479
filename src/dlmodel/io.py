"""Reading and writing images: TIFF (incl. OME-TIFF), PNG, JPEG and .npy; atomic writes."""
from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from .errors import ImageFileError

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
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImageFileError(f"{path}: not a readable image ({first})") from None
    raise ImageFileError(f"{path}: unsupported file type {suffix!r} (use {', '.join(IMAGE_SUFFIXES)})")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, renamed to ``path`` only if the block succeeds,
    so a crash never leaves a half-written file under the real name (``--resume`` relies on it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


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
