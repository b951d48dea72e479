"""Predicting files into a folder: what `dlmodel predict` does per image, in one process or on
a Dask cluster (:mod:`dlmodel.distributed`). Outputs are written atomically, so an output that
exists is complete, which is what ``resume`` relies on."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from . import io
from .errors import DLModelError


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

    def targets(self, path: Path) -> Dict[str, Path]:
        stem = _stem(Path(path))
        found = {oid: self.out_dir / f"{stem}_{oid}.{self.fmt}" for oid in self.output_ids}
        if self.labels:
            found["labels"] = self.out_dir / f"{stem}_labels.{self.fmt}"
        return found

    def done(self, path: Path) -> bool:
        return all(t.exists() for t in self.targets(path).values())


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failures: List[str] = field(default_factory=list)


def predict_file(job: Job, path: Path, model: Any = None) -> List[Path]:
    """Predict one file and write its outputs; raises DLModelError naming the file."""
    from .api import load_cached

    model = model or load_cached(job.source, engine=job.engine, device=job.device, threads=job.threads, trust=job.trust)
    image, file_axes = io.read_image(Path(path))
    pred = model.predict(image, axes=job.axes or file_axes, tile=job.tile, batch_size=job.batch_size, name=str(path))
    targets = job.targets(path)
    written = [io.write_image(targets[oid], pred[oid], pred.axes[oid]) for oid in job.output_ids]
    if job.labels:
        written.append(io.write_image(targets["labels"], model.labels(pred)))
    return written


def todo(job: Job, paths: Sequence[Path], resume: bool) -> List[Path]:
    """The files still to predict; with ``resume``, also remove temporary files a killed run left."""
    if not resume:
        return list(paths)
    for stale in Path(job.out_dir).glob(".*.part"):
        stale.unlink(missing_ok=True)
    return [p for p in paths if not job.done(p)]


def run_in_process(job: Job, paths: Sequence[Path], model: Any, resume: bool = False, progress: bool = True) -> Summary:
    from tqdm import tqdm

    summary = Summary()
    remaining = todo(job, paths, resume)
    summary.skipped = len(paths) - len(remaining)
    bar = tqdm(remaining, unit="image", desc=model.spec.name[:30], disable=None if progress else True)
    for path in bar:
        try:
            predict_file(job, path, model)
            summary.done += 1
        except DLModelError as e:
            summary.failures.append(str(e))
            tqdm.write(f"dlmodel: skipped: {e}")
    bar.close()
    return summary


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
