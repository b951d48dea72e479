"""The one batch engine: jobs of many tasks (an image to predict, a plate site to segment and
measure), run in this process or on a Dask cluster (:mod:`dlmodel.distributed`), with the same
bookkeeping: what is still to do, resume, progress, failures, one summary.

A task's outputs are written atomically, so a task whose outputs all exist is complete: that is
what ``resume`` relies on. One task's failure never stops the others.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import io
from .errors import DLModelError, ImageFileError, InputError, one_line


@dataclass(frozen=True)
class Task:
    """One unit of a job: its name (in messages), the files it reads and the files it writes."""

    name: str
    inputs: Tuple[Path, ...]
    outputs: Tuple[Path, ...]
    key: Tuple[Any, ...] = ()  # what the job needs besides the files (an image's output stem, a site's well)
    size: int = 1  # what the progress bar counts for it (a CellProfiler slice: its image sets)

    def done(self) -> bool:
        return all(p.exists() for p in self.outputs)


@dataclass(frozen=True)
class ModelJob:
    """What every job needs to get its model in any process (picklable, for Dask workers).

    Subclasses add their own options and implement ``tasks`` and ``__call__(task, model)``,
    which does one task and returns how many files it wrote."""

    source: str
    engine: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None
    trust: Optional[bool] = None
    # how outputs become objects: Model.labels' choices as (name, value) pairs (hashable); () the package's recipe
    objects: Tuple[Tuple[str, Any], ...] = ()

    def model(self) -> Any:
        """This process's model for the job (loaded once per process)."""
        from .api import load_cached

        return load_cached(self.source, engine=self.engine, device=self.device, threads=self.threads, trust=self.trust)


@dataclass(frozen=True)
class Job(ModelJob):
    """`dlmodel predict`: each image file's outputs (and labels) into ``out_dir``."""

    out_dir: Path = Path("out")
    output_ids: Sequence[str] = ()
    axes: Optional[str] = None
    tile: Any = None
    batch_size: Optional[int] = None
    fmt: str = "tif"
    labels: bool = False
    confidence: bool = False  # also measure each image's confidence (dlmodel.confidence)
    augmentations: Optional[int] = None  # its transformed copies (None: the default)

    def targets(self, stem: str) -> Dict[str, Path]:
        """The output files of the input whose outputs are named ``stem`` (:func:`output_stems`);
        with ``confidence``, its row of ``confidence.csv`` (``confidence/<stem>.csv``), which
        :func:`collect_confidence` gathers."""
        found = {oid: self.out_dir / f"{stem}_{oid}.{self.fmt}" for oid in self.output_ids}
        if self.labels:
            found["labels"] = self.out_dir / f"{stem}_labels.{self.fmt}"
        if self.confidence:
            found["confidence"] = self.out_dir / "confidence" / f"{stem}.csv"
        return found

    def tasks(self, paths: Sequence[Path]) -> List[Task]:
        return [Task(str(p), (Path(p),), tuple(self.targets(stem).values()), key=(stem,))
                for p, stem in output_stems(paths).items()]

    def __call__(self, task: Task, model: Any = None) -> int:
        return len(predict_file(self, task, model or self.model()))


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


def predict_file(job: Job, task: Task, model: Any) -> List[Path]:
    """Predict one file (a task of :meth:`Job.tasks`) and write its outputs; raises
    DLModelError naming the file."""
    path = task.inputs[0]
    model.check_file_fits(path, axes=job.axes, tile=job.tile, batch_size=job.batch_size)
    image, file_axes = io.read_image(path)
    axes = job.axes or file_axes
    targets = job.targets(task.key[0])
    measured = None
    if job.confidence:  # the plain prediction and objects come with it: nothing is predicted twice
        measured = model.confidence(image, axes=axes, augmentations=job.augmentations,
                                    objects=(dict(job.objects) or True) if job.labels else None,
                                    tile=job.tile, batch_size=job.batch_size, name=str(path))
        pred = measured.prediction
    else:
        pred = model.predict(image, axes=axes, tile=job.tile, batch_size=job.batch_size, name=str(path))
    written = [io.write_image(targets[oid], pred[oid], pred.axes[oid]) for oid in job.output_ids]
    if job.labels:
        labels = (measured.labels if measured is not None and measured.labels is not None
                  else model.labels(pred, **dict(job.objects)))
        written.append(io.write_image(targets["labels"], labels))
    if measured is not None:
        written.append(write_rows(targets["confidence"], [confidence_row(str(path), measured)], CONFIDENCE_FIELDS))
    return written


#: the columns of confidence.csv (docs/confidence.md defines each)
CONFIDENCE_FIELDS = ["image", "confidence", "consistency", "tta_f1", "tta_mad", "foreground_mad", "ambiguity",
                     "outside_fraction", "histogram_distance", "transforms", "left_out"]


def confidence_row(image: str, measured: Any) -> Dict[str, Any]:
    """One image's row of confidence.csv: its confidence and components (empty: does not apply)."""
    values = {k: ("" if v is None else v) for k, v in measured.to_dict().items()}
    return {"image": image, **{k: values[k] for k in CONFIDENCE_FIELDS[1:-2]},
            "transforms": "; ".join(measured.transforms), "left_out": "; ".join(measured.left_out)}


def write_rows(path: Path, rows: Sequence[Dict[str, Any]], fields: Sequence[str]) -> Path:
    """A CSV written atomically (a reader never sees half of it)."""
    import csv

    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)
    return path


def collect_confidence(job: Job, tasks: Sequence[Task]) -> Optional[Path]:
    """``confidence.csv`` in the output folder: one row per image whose outputs are all written
    (this run's or an earlier one's, with ``resume``), in input order; None without confidence."""
    import csv

    if not job.confidence:
        return None
    rows: List[Dict[str, Any]] = []
    for t in tasks:
        if t.done():
            with open(job.targets(t.key[0])["confidence"], newline="") as f:
                rows += list(csv.DictReader(f))
    return write_rows(job.out_dir / "confidence.csv", rows, CONFIDENCE_FIELDS)


def attempt(job: ModelJob, task: Task, model: Any = None) -> Tuple[int, Optional[str]]:
    """Do one task: (files written, None), or (0, one line) when it failed. An unexpected
    failure of one task must not end a run of thousands, in one process or on Dask."""
    try:
        return job(task, model), None
    except DLModelError as e:
        return 0, str(e)
    except MemoryError:
        return 0, f"{task.name}: out of memory"
    except Exception as e:
        return 0, f"{task.name}: {type(e).__name__}: {one_line(e)}"


def todo(tasks: Sequence[Task], resume: bool) -> List[Task]:
    """The tasks still to do. With ``resume``, tasks whose outputs are all there are skipped and
    temporary files that a killed run left are removed (only provably stale ones: a
    concurrent run's files in flight stay, :func:`io.remove_stale_parts`)."""
    if not resume:
        return list(tasks)
    names: Dict[Path, set] = {}
    for t in tasks:
        for p in t.outputs:
            names.setdefault(p.parent, set()).add(p.name)
    for folder, own in names.items():  # only part files of this job's outputs: -o may hold others' .part files
        io.remove_stale_parts(folder, names=own)
    return [t for t in tasks if not t.done()]


def run(job: ModelJob, tasks: Sequence[Task], model: Any = None, workers: Optional[int] = None,
        scheduler: Optional[str] = None, resume: bool = False, progress: bool = True) -> Summary:
    """Run a job's tasks here (``model``: the job's model, already loaded) or on Dask
    (``workers`` local worker processes, or an existing ``scheduler``); one summary either way."""
    from .outputs import check_beside_inputs, check_output_files

    # no output may be an input (predict -o into the input folder): refused before anything runs
    inputs = [i for t in tasks for i in t.inputs]
    check_output_files((o for t in tasks for o in t.outputs), inputs)
    summary = Summary()
    remaining = todo(tasks, resume)
    # nor overwrite an existing file beside an input (the user's a_labels.tif): what resume skips is not written
    check_beside_inputs((o for t in remaining for o in t.outputs), inputs)
    summary.skipped = len(tasks) - len(remaining)
    if not remaining:
        return summary
    if workers or scheduler:
        from .distributed import run_tasks

        for written, error in run_tasks(job, remaining, attempt, workers, scheduler, progress):
            record(summary, written, error)
        return summary
    from tqdm import tqdm

    model = model or job.model()
    bar = tqdm(total=sum(t.size for t in remaining), unit=getattr(job, "unit", "task"),
               desc=getattr(job, "label", None) or model.spec.name[:30], disable=None if progress else True)
    for task in remaining:
        record(summary, *attempt(job, task, model))
        bar.update(task.size)
    bar.close()
    return summary


def record(summary: Summary, written: int, error: Optional[str]) -> None:
    """Count one task's result in the summary (and say a failure at once)."""
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
