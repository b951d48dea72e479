"""Predicting files into a folder: what `dlmodel predict` does per image, in one process or on
a Dask cluster (:mod:`dlmodel.distributed`). Outputs are written atomically, so an output that
exists is complete, which is what ``resume`` relies on."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import io
from .errors import DLModelError, ImageFileError, InputError, one_line


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to predict files with a model (picklable)."""

    source: str
    out_dir: Path
    output_ids: Sequence[str]
    engine: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None
    trust: Optional[bool] = None
    axes: Optional[str] = None
    tile: Any = None
    batch_size: Optional[int] = None
    fmt: str = "tif"
    labels: bool = False

    def targets(self, stem: str) -> Dict[str, Path]:
        """The output files of the input whose outputs are named ``stem`` (:func:`output_stems`)."""
        found = {oid: self.out_dir / f"{stem}_{oid}.{self.fmt}" for oid in self.output_ids}
        if self.labels:
            found["labels"] = self.out_dir / f"{stem}_labels.{self.fmt}"
        return found

    def done(self, stem: str) -> bool:
        return all(t.exists() for t in self.targets(stem).values())


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    written: int = 0  # output files written by this run
    failures: List[str] = field(default_factory=list)


def output_stems(paths: Sequence[Path]) -> Dict[Path, str]:
    """What each input's output files are named after: its name without the extension, or,
    when two inputs share that name (``A/cell.tif`` and ``B/cell.tif``), its path relative to
    the inputs' common folder (``A/cell``, ``B/cell``) for every input, so that no output
    overwrites another. Inputs that still collide (``cell.tif`` and ``cell.png`` in one folder)
    are refused, before anything runs.

    >>> output_stems([Path("a/x.tif"), Path("a/y.tif")]) == {Path("a/x.tif"): "x", Path("a/y.tif"): "y"}
    True
    >>> sorted(output_stems([Path("p1/A01.tif"), Path("p2/A01.tif")]).values())
    ['p1/A01', 'p2/A01']
    """
    paths = list(paths)
    flat = {p: _stem(p) for p in paths}
    if len(set(flat.values())) == len(paths):
        return flat
    folders = [os.path.abspath(p.parent) for p in paths]
    common = os.path.commonpath(folders)
    stems = {p: (Path(os.path.relpath(f, common)) / _stem(p)).as_posix().removeprefix("./")
             for p, f in zip(paths, folders)}
    first: Dict[str, Path] = {}
    for p, s in stems.items():
        if s in first:
            raise InputError(
                f"{first[s]} and {p} would both write outputs named {Path(s).name}_*: "
                "rename one, or predict them into different output folders"
            )
        first[s] = p
    return stems


def prepare_output(folder: Path) -> Path:
    """Make the output folder and check that it takes files: one line, before any image runs."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ImageFileError(f"output folder {folder} is a file; give a folder with -o")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ImageFileError(f"cannot write to output folder {folder}: {e.strerror or e}") from e
    return folder


def predict_file(job: Job, path: Path, stem: str, model: Any = None) -> List[Path]:
    """Predict one file and write its outputs; raises DLModelError naming the file."""
    from .api import load_cached

    model = model or load_cached(job.source, engine=job.engine, device=job.device, threads=job.threads, trust=job.trust)
    path = Path(path)
    model.check_file_fits(path, axes=job.axes, tile=job.tile, batch_size=job.batch_size)
    image, file_axes = io.read_image(path)
    pred = model.predict(image, axes=job.axes or file_axes, tile=job.tile, batch_size=job.batch_size, name=str(path))
    targets = job.targets(stem)
    written = [io.write_image(targets[oid], pred[oid], pred.axes[oid]) for oid in job.output_ids]
    if job.labels:
        written.append(io.write_image(targets["labels"], model.labels(pred)))
    return written


def attempt(job: Job, path: Path, stem: str, model: Any = None) -> Tuple[int, Optional[str]]:
    """Predict one file: (files written, None), or (0, one line) when this image failed. An
    unexpected failure of one image must not end a run of thousands, in one process or on Dask."""
    try:
        return len(predict_file(job, path, stem, model)), None
    except DLModelError as e:
        return 0, str(e)
    except MemoryError:
        return 0, f"{path}: out of memory"
    except Exception as e:
        return 0, f"{path}: {type(e).__name__}: {one_line(e)}"


def todo(job: Job, paths: Sequence[Path], resume: bool) -> List[Tuple[Path, str]]:
    """(file, output stem) still to predict. With ``resume``, images whose outputs are all there
    are skipped and temporary files that a killed run left are removed (only provably stale
    ones: a concurrent run's files in flight stay, :func:`io.remove_stale_parts`)."""
    stems = output_stems(paths)
    if not resume:
        return list(stems.items())
    folders = {Path(job.out_dir)} | {t.parent for s in stems.values() for t in job.targets(s).values()}
    for folder in folders:
        io.remove_stale_parts(folder)
    return [(p, s) for p, s in stems.items() if not job.done(s)]


def run_in_process(job: Job, paths: Sequence[Path], model: Any, resume: bool = False, progress: bool = True) -> Summary:
    from tqdm import tqdm

    summary = Summary()
    remaining = todo(job, paths, resume)
    summary.skipped = len(paths) - len(remaining)
    bar = tqdm(remaining, unit="image", desc=model.spec.name[:30], disable=None if progress else True)
    for path, stem in bar:
        written, error = attempt(job, path, stem, model)
        record(summary, written, error)
    bar.close()
    return summary


def record(summary: Summary, written: int, error: Optional[str]) -> None:
    """Count one image's result in the summary (and say a failure at once)."""
    from tqdm import tqdm

    if error:
        summary.failures.append(error)
        tqdm.write(f"dlmodel: skipped: {error}")
    else:
        summary.done += 1
        summary.written += written


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
