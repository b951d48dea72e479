"""Which model segments your images best: several models on the same images, their objects compared.

:func:`compare` (``dlmodel.compare``) runs each model on each image and makes its objects the way the model itself
says (:meth:`dlmodel.api.Model.labels`: the package's own recipe or family step, else the
default step), as ``dlmodel predict --labels``, RunDLModel and ``benchmarks/accuracy.py`` do.

- With label images (your annotations): per model, F1 at IoU 0.5 pooled over the images,
  precision, recall, the mean IoU of the matched objects and the count error.
- Without: objects per image, how far each pair of models agrees (F1 at IoU 0.5 between their
  objects) and the images where they disagree most. Agreement says where to look, not which
  model is right.
- Always: each model's time per image (load time apart) and its failures, one line each. A
  model that cannot run here is a row with its reason; the others still run.

``out`` receives ``compare.csv`` (one row per model), ``compare_images.csv`` (one row per image
and model), ``overlays/<image>.png`` (each model's outlines on the image, side by side) and
``compare.html`` (the table and the overlays, the images where the models disagree most first).
"""
from __future__ import annotations

import datetime
import html
import math
import os
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import io
from .errors import ImageFileError, InputError, one_line

PathLike = Union[str, "os.PathLike[str]"]
IOU = 0.5  # a predicted object matches a true one (or another model's) above this IoU
CSV_NAME, IMAGES_CSV_NAME, HTML_NAME, OVERLAYS = "compare.csv", "compare_images.csv", "compare.html", "overlays"
TRUTH_COLOUR = "#ffd60a"
# outline colours of the models, in order (distinct on grey images and for colour-blind eyes)
COLOURS = ("#00e5ff", "#ff4fd8", "#7dff4f", "#ff8c1a", "#8c9eff", "#ffffff", "#ff5252", "#b2ff59")
PANEL_MAX, PANEL_MIN = 768, 384  # overlay panels: larger images subsampled, smaller ones enlarged (pixels)


# ------------------------------------------------------------------------------------- results

@dataclass
class Outcome:
    """One model on one image: its objects, time, and (with labels) matches; or why it failed."""

    objects: Optional[int] = None
    seconds: Optional[float] = None
    error: str = ""
    tp: Optional[int] = None
    fp: Optional[int] = None
    fn: Optional[int] = None
    iou_sum: float = 0.0  # sum of the matched objects' IoUs (pooled into a mean over images)

    @property
    def f1(self) -> Optional[float]:
        """F1 at IoU 0.5 on this image; None without labels, or with nothing to match at all."""
        if self.tp is None:
            return None
        total = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / total if total else None


@dataclass
class ImageResult:
    """One image: its annotations' object count, each model's :class:`Outcome` (by model label),
    each pair of models' matches ``(tp, fp, fn)`` and the overlay written for it."""

    path: Path
    labels_path: Optional[Path] = None
    truth_objects: Optional[int] = None
    outcomes: Dict[str, Outcome] = field(default_factory=dict)
    pairs: Dict[Tuple[str, str], Tuple[int, int, int]] = field(default_factory=dict)
    overlay: Optional[Path] = None

    @property
    def disagreement(self) -> Optional[float]:
        """1 - the mean agreement (F1 at IoU 0.5 between their objects) of the pairs of models that
        both segmented this image; None with fewer than two."""
        if not self.pairs:
            return None
        return 1.0 - float(np.mean([agreement(*m) for m in self.pairs.values()]))


@dataclass
class ModelScore:
    """One model over all images. Scores count only the images it segmented (``images``);
    ``failed`` lists the others, one line each; ``error`` says why it could not run at all."""

    label: str
    source: str
    name: str = ""
    runs_on: str = ""  # weights format and device
    objects_by: str = ""  # how its objects are made
    colour: str = ""
    load_seconds: Optional[float] = None
    error: str = ""
    images: int = 0
    failed: List[str] = field(default_factory=list)
    seconds_per_image: Optional[float] = None  # median over its images (the first call's warm-up aside)
    objects_per_image: Optional[float] = None
    f1: Optional[float] = None
    f1_interval: Optional[Tuple[float, float]] = None  # 95% of F1 over resampled images (bootstrap)
    precision: Optional[float] = None
    recall: Optional[float] = None
    mean_iou: Optional[float] = None
    tp: Optional[int] = None
    fp: Optional[int] = None
    fn: Optional[int] = None
    count_error: Optional[float] = None  # mean over images of |objects - true objects|
    count_bias: Optional[float] = None  # mean over images of objects - true objects (+: too many)
    agreement: Dict[str, float] = field(default_factory=dict)  # other model's label -> F1 between their objects

    @property
    def ran(self) -> bool:
        return not self.error


@dataclass
class CompareResult:
    """What :func:`compare` found: ``models`` in the order given, ``images`` sorted as the report
    shows them (most disagreement first), and the ``files`` written (by name: csv, images_csv,
    html, overlays)."""

    models: List[ModelScore]
    images: List[ImageResult]
    with_labels: bool
    files: Dict[str, Path] = field(default_factory=dict)
    # other model's label -> (the best's F1 - its F1, 95% interval of that difference over resampled images)
    margins: Dict[str, Tuple[float, float, float]] = field(default_factory=dict)

    def __getitem__(self, label: str) -> ModelScore:
        for m in self.models:
            if m.label == label:
                return m
        raise KeyError(label)

    @property
    def best(self) -> Optional[ModelScore]:
        """With labels, the model with the highest F1 among those that segmented every image."""
        whole = [m for m in self.models if m.ran and m.images and not m.failed and m.f1 is not None]
        return max(whole, key=lambda m: m.f1) if self.with_labels and whole else None

    def verdict(self) -> str:
        """One sentence on which model segments these images best, and how sure that is."""
        best = self.best
        if best is None:
            if self.with_labels:
                return "No model segmented every image, so none is named best: see the failures."
            return ("Without annotations there is no right answer: where the models disagree is where to look, "
                    "and where annotating a few images would decide.")
        rivals = [m for m in self.models if m.f1 is not None and m is not best]
        text = f"{'Best F1' if rivals else 'F1'} at IoU {IOU:g}: {best.label}, {best.f1:.3f}" + (
            " (95% interval {:.3f} to {:.3f} over resampled images)".format(*best.f1_interval)
            if best.f1_interval else "") + "."
        close = [(label, m) for label, m in self.margins.items() if m[1] <= 0]  # the difference may be none
        if close:
            text += (" Not clearly better than " + ", ".join(
                f"{label} (F1 {d:+.3f}, 95% interval {lo:+.3f} to {hi:+.3f})" for label, (d, lo, hi) in close)
                + f" on these {len(self.images)} images: annotate more images, or look at the overlays, to decide.")
        elif self.margins:
            text += f" Better than every other model on these {len(self.images)} images, beyond image-to-image chance."
        return text

    @property
    def failures(self) -> int:
        """How many models could not run, plus how many (image, model) runs failed."""
        return sum(1 if m.error else len(m.failed) for m in self.models)

    def table(self) -> Tuple[List[str], List[List[str]]]:
        """The terminal table: header and rows of text (``dlmodel compare`` prints it)."""
        if self.with_labels:
            header = ["model", "F1", "precision", "recall", "mean IoU", "count err", "obj/img", "s/img",
                      "load s", "failed"]
        else:
            header = ["model", "runs on", "obj/img", "s/img", "load s", "failed"]
        rows = []
        for m in self.models:
            n = len(self.images)
            failed = "cannot run" if m.error else (f"{len(m.failed)} of {n}" if m.failed else "0")
            tail = [_fmt(m.objects_per_image, 1), _fmt(m.seconds_per_image, 3), _fmt(m.load_seconds, 1), failed]
            if self.with_labels:
                rows.append([m.label, _fmt(m.f1), _fmt(m.precision), _fmt(m.recall), _fmt(m.mean_iou),
                             _fmt(m.count_error, 1), *tail])
            else:
                rows.append([m.label, m.runs_on or "-", *tail])
        return header, rows

    def notes(self, most: int = 3) -> List[str]:
        """The lines under the table: the best model, why models failed, pairwise agreement and
        the images where the models disagree most."""
        lines = [self.verdict()]
        for m in self.models:
            if m.error:
                lines.append(f"{m.label}: cannot run here: {m.error}")
            for reason, names in failure_groups(self, m.label):
                lines.append(f"{m.label}: failed on {_images(names, len(self.images))}: {reason}")
        ran = [m for m in self.models if m.ran]
        for a, b in combinations(ran, 2):
            if b.label in a.agreement:
                lines.append(f"agreement {a.label} vs {b.label}: F1 {a.agreement[b.label]:.3f} between their objects")
        worst = [r for r in self.images if r.disagreement is not None][:most]
        if worst:
            lines.append("most disagreement: " + ", ".join(f"{r.path.name} ({r.disagreement:.2f})" for r in worst))
        return lines


def failure_groups(result: CompareResult, label: str) -> List[Tuple[str, List[str]]]:
    """A model's failures grouped by reason (the image's name taken out): [(reason, image names)]."""
    groups: Dict[str, List[str]] = {}
    for r in result.images:
        o = r.outcomes.get(label)
        if o is not None and o.error:
            reason = o.error[len(f"{r.path}: "):] if o.error.startswith(f"{r.path}: ") else o.error
            groups.setdefault(reason, []).append(r.path.name)
    return list(groups.items())


def _images(names: Sequence[str], total: int, show: int = 3) -> str:
    if len(names) == total:
        return f"all {total} images" if total > 1 else names[0]
    listed = ", ".join(names[:show]) + (f" and {len(names) - show} more" if len(names) > show else "")
    return f"{len(names)} of {total} images ({listed})"


def bootstrap_f1(counts: Any, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Pooled F1 over ``n`` resamplings of the images (drawn with replacement, the same draws for
    every model, so differences between models are paired).

    ``counts``: per image (tp, fp, fn), shape (images, 3), or (models, images, 3). Returns shape
    (n,) or (models, n); its 2.5th and 97.5th percentiles bound F1 against which images happened to
    be chosen.

    >>> samples = bootstrap_f1([[3, 1, 0], [3, 1, 0]])   # two alike images: no spread
    >>> float(samples.min()), float(samples.max())
    (0.8571428571428571, 0.8571428571428571)
    """
    counts = np.asarray(counts, np.float64)
    k = counts.shape[-2]
    weights = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=n).astype(np.float64)
    sums = np.einsum("bi,...ic->...bc", weights, counts)
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    total = 2 * tp + fp + fn
    return np.divide(2 * tp, total, out=np.zeros_like(total), where=total > 0)


MIN_IMAGES_FOR_INTERVAL = 3  # fewer images say nothing about how F1 varies between images


def _intervals(result: CompareResult) -> None:
    """Each model's 95% F1 interval, and by how much the best model's F1 exceeds each other's,
    with its interval (over the images both segmented)."""
    def counts(label: str, images: Sequence[ImageResult]) -> np.ndarray:
        return np.array([[r.outcomes[label].tp, r.outcomes[label].fp, r.outcomes[label].fn] for r in images])

    def scored(label: str) -> List[ImageResult]:  # by name: the same draws whatever the report's order
        return sorted((r for r in result.images if label in r.outcomes and r.outcomes[label].tp is not None),
                      key=lambda r: str(r.path))

    for m in result.models:
        images = scored(m.label)
        if len(images) >= MIN_IMAGES_FOR_INTERVAL:
            lo, hi = np.percentile(bootstrap_f1(counts(m.label, images)), (2.5, 97.5))
            m.f1_interval = (float(lo), float(hi))
    best = result.best
    if best is None:
        return
    for m in result.models:
        both = scored(m.label) if m is not best else []  # the best segmented every image
        if len(both) >= MIN_IMAGES_FOR_INTERVAL:
            theirs, best_counts = counts(m.label, both), counts(best.label, both)
            samples = bootstrap_f1(np.stack([best_counts, theirs]))
            lo, hi = np.percentile(samples[0] - samples[1], (2.5, 97.5))
            result.margins[m.label] = (_pooled(best_counts) - _pooled(theirs), float(lo), float(hi))


def _pooled(counts: np.ndarray) -> float:
    """F1 from per-image (tp, fp, fn), summed first (as :func:`dlmodel.instances.pooled_f1`)."""
    tp, fp, fn = counts.sum(axis=0)
    return float(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn else 0.0


def agreement(tp: int, fp: int, fn: int) -> float:
    """F1 from matches; 1.0 when neither side has an object (two models that find nothing agree).

    >>> agreement(4, 1, 1), agreement(0, 0, 0), agreement(0, 3, 0)
    (0.8, 1.0, 0.0)
    """
    total = 2 * tp + fp + fn
    return 2 * tp / total if total else 1.0


def model_label(source: PathLike) -> str:
    """A short name for a model source in tables: its folder, zip or zoo id.

    >>> model_label("models/stardist_nuclei/rdf.yaml"), model_label("pkg.bioimage.io.zip"), model_label("affable-shark")
    ('stardist_nuclei', 'pkg', 'affable-shark')
    >>> model_label("https://example.org/models/unet/rdf.yaml")
    'unet'
    """
    text = str(source).strip().rstrip("/\\")
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    if not parts:
        return text or "model"
    name = parts[-1]
    if name.lower().endswith((".yaml", ".yml")) and len(parts) > 1:
        name = parts[-2]
    for suffix in (".zip", ".bioimage.io", ".bioimageio"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------- compare

def compare(
    models: Union[PathLike, Sequence[PathLike]],
    images: Union[PathLike, Sequence[PathLike]],
    labels: Optional[PathLike] = None,
    out: Optional[PathLike] = None,
    *,
    engine: str = "auto",
    device: str = "auto",
    threads: Optional[int] = None,
    trust: Optional[bool] = None,
    python: Optional[PathLike] = None,
    progress: bool = True,
) -> CompareResult:
    """Run several models on the same images and compare their objects.

    Parameters
    ----------
    models : sequence of str or path
        Model sources, as :func:`dlmodel.load` takes them: package folders, rdfs, zips, URLs, zoo ids
        (downloaded once into the cache) or DOIs.
    images : str or path, or a sequence of them
        With ``labels``: a folder of images. Without: image files, folders or glob patterns.
    labels : str or path, optional
        A folder of label images (0 background, 1..N objects) named as the images (``a.tif`` or
        ``a_labels.tif``, :func:`dlmodel.training.pair_files`). Then each model is scored against
        them.
    out : str or path, optional
        Folder for ``compare.csv``, ``compare_images.csv``, ``compare.html`` and ``overlays/``;
        None writes nothing.
    engine, device, threads, trust, python
        As in :func:`dlmodel.load`, for every model.
    progress : bool
        Show progress bars.

    Returns
    -------
    CompareResult
        Per model a :class:`ModelScore` (``result["stardist_nuclei"].f1``), per image an
        :class:`ImageResult`, sorted most disagreement first, and the files written.

    Raises
    ------
    InputError, ImageFileError
        Bad input, before any model runs: no images, images and labels that do not pair, labels
        that do not fit their image, an output folder that is a file or would overwrite an input.
        A model that cannot be loaded or fails on an image never raises: it is in the result.

    Examples
    --------
    >>> result = compare(["models/nuclei_default", "models/stardist_nuclei"], "val/images",
    ...                  labels="val/labels", out="comparison")              # doctest: +SKIP
    >>> result.best.label, round(result.best.f1, 3)                         # doctest: +SKIP
    ('stardist_nuclei', 0.853)
    """
    from tqdm import tqdm

    sources = _sources(models)
    image_paths, label_paths = _inputs(images, labels)
    targets = _targets(out, image_paths, label_paths)
    scores = [ModelScore(label, str(source), colour=COLOURS[i % len(COLOURS)])
              for i, (label, source) in enumerate(sources.items())]
    loaded: Dict[str, Any] = {}
    try:
        for score in tqdm(scores, desc="loading models", unit="model", disable=None if progress else True):
            loaded[score.label] = _load(score, engine=engine, device=device, threads=threads, trust=trust, python=python)
        results = []
        ready = {label: m for label, m in loaded.items() if m is not None}
        for i, path in enumerate(tqdm(image_paths, desc="comparing", unit="image", disable=None if progress else True)):
            image, axes = io.read_image(path)
            labels_path = label_paths[i] if label_paths else None
            truth = None if labels_path is None else _truth(labels_path, _spatial_shape(image, axes), path)
            result, objects = _run_image(ImageResult(path, labels_path), image, axes, truth, ready)
            if targets is not None:
                result.overlay = write_overlay(targets[path], image, axes, truth, result, objects, scores)
            results.append(result)  # the objects go: memory stays one image's, however many images
    finally:
        for model in loaded.values():
            if model is not None:
                model.unload()
    for score in scores:
        _summarise(score, results)
    ordered = sorted(results, key=_order(label_paths is not None))
    found = CompareResult(scores, ordered, with_labels=label_paths is not None)
    _intervals(found)
    if out is not None:
        found.files = write_outputs(found, Path(out), images, labels)
    return found


def _sources(models: Union[PathLike, Sequence[PathLike]]) -> Dict[str, PathLike]:
    """The model sources by a label unique among them; the same source twice is refused."""
    given = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    if not given:
        raise InputError("no models given: name at least one (a package folder, zip, rdf, URL or zoo id)")
    found: Dict[str, PathLike] = {}
    seen = set()
    for source in given:
        key = os.path.abspath(source) if Path(source).exists() else str(source)
        if key in seen:
            raise InputError(f"model {source} is given twice; give each model once")
        seen.add(key)
        label, n = model_label(source), 2
        while label in found:  # two folders of the same name: a number tells them apart
            label, n = f"{model_label(source)}-{n}", n + 1
        found[label] = source
    return found


def _inputs(images: Union[PathLike, Sequence[PathLike]], labels: Optional[PathLike]
            ) -> Tuple[List[Path], Optional[List[Path]]]:
    """The image files (and their label files, paired by name), each checked readable, and the
    labels checked to be label images of their image's size: one line naming the file, before any
    model runs."""
    if labels is not None:
        from .training import pair_files

        if not isinstance(images, (str, os.PathLike)):
            raise InputError("with labels, give the images as one folder (paired with the labels folder by name)")
        pairs = pair_files(images, labels)
        image_paths, label_paths = [i for i, _ in pairs], [la for _, la in pairs]
    else:
        given = [str(images)] if isinstance(images, (str, os.PathLike)) else [str(i) for i in images]
        for arg in given:
            if not any(ch in arg for ch in "*?[") and not Path(arg).exists():
                raise ImageFileError(f"{arg}: no such file or folder")
        image_paths, label_paths = io.find_images(given), None
        if not image_paths:
            raise InputError(f"no images found in {', '.join(given)} (tif, png, jpg or npy)")
    for i, path in enumerate(image_paths):
        image, axes = io.read_image(path)
        if label_paths is not None:
            _truth(label_paths[i], _spatial_shape(image, axes), path)
    return image_paths, label_paths


def _truth(path: Path, shape: Optional[Tuple[int, ...]], image: Path) -> np.ndarray:
    """An annotation as int32 objects 1..N; refused in one line if it is not a label image of
    the image's size."""
    from .training import exact_labels

    truth, _ = io.read_image(path)
    truth = np.squeeze(np.asarray(truth))
    if truth.dtype.kind not in "iub":
        raise InputError(f"labels {path}: not a label image ({truth.dtype}); save objects as integer labels "
                         "(uint16), 0 for background and one number per object")
    if truth.dtype.kind == "i" and truth.size and truth.min() < 0:
        raise InputError(f"labels {path} have negative numbers; use 0 for background and 1..N for objects")
    if shape is not None and truth.shape != shape:
        raise InputError(f"labels {path} are {'x'.join(map(str, truth.shape))}; image {image.name} is "
                         f"{'x'.join(map(str, shape))}")
    return exact_labels(truth)


def _spatial_shape(image: np.ndarray, axes: Optional[str]) -> Optional[Tuple[int, ...]]:
    """The image's size without its channel axis (what its labels measure), when known."""
    if axes is None:
        return image.shape if image.ndim == 2 else None
    return tuple(n for n, a in zip(image.shape, axes) if a != "c")


def _targets(out: Optional[PathLike], images: Sequence[Path], labels: Optional[Sequence[Path]]
             ) -> Optional[Dict[Path, Path]]:
    """Each image's overlay file in ``out``; checked (``out`` a folder that takes files, no
    output an input) and the folder made, before any model runs."""
    if out is None:
        return None
    from .outputs import check_output_files
    from .runs import output_stems, prepare_output

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ImageFileError(f"output folder {out} is a file; give a folder with -o")
    stems = output_stems(images)  # images of the same name in different folders: overlays kept apart
    overlays = {p: out / OVERLAYS / f"{stem}.png" for p, stem in stems.items()}
    check_output_files([out / CSV_NAME, out / IMAGES_CSV_NAME, out / HTML_NAME, *overlays.values()],
                       [*images, *(labels or [])])
    prepare_output(out)
    return overlays


def _load(score: ModelScore, **options: Any) -> Any:
    """The model, or None with ``score.error`` saying why it cannot run here (one line)."""
    from . import client

    t0 = time.perf_counter()
    try:
        model = client.load(score.source, **options)
        info = model.info()
    except Exception as e:  # noqa: BLE001 - any model that cannot run is a row, never the end of the comparison
        score.error = _reason(e)
        return None
    score.load_seconds = time.perf_counter() - t0
    score.name = str(info.get("name") or model.spec.name)
    score.runs_on = f"{model.weights_format} on {model.device}"
    score.objects_by = str(info.get("objects", ""))
    return model


def _reason(error: BaseException) -> str:
    """One line for a failure: dlmodel's own message, else the exception's type and first line."""
    from .errors import DLModelError

    if isinstance(error, DLModelError):
        return one_line(error, 1000)
    if isinstance(error, MemoryError):
        return "out of memory"
    return f"{type(error).__name__}: {one_line(error, 1000)}"


def _run_image(result: ImageResult, image: np.ndarray, axes: Optional[str], truth: Optional[np.ndarray],
               models: Mapping[str, Any]) -> Tuple[ImageResult, Dict[str, np.ndarray]]:
    """Every model on one image: objects, time, matches with the truth (objects 1..N) and with
    each other, in ``result``; and the objects of each model that segmented it."""
    from .instances import matched_ious

    path, shape = result.path, _spatial_shape(image, axes)
    if truth is not None:
        result.truth_objects = int(truth.max())
    objects: Dict[str, np.ndarray] = {}
    for label, model in models.items():
        t0 = time.perf_counter()
        try:
            pred = model.predict(image, axes=axes, name=str(path))
            found = np.array(model.labels(pred))  # a copy: a worker's result is a view on shared memory
            seconds = time.perf_counter() - t0
            if shape is not None and found.shape != shape:
                raise InputError(f"{path}: the objects are {'x'.join(map(str, found.shape))}, the image is "
                                 f"{'x'.join(map(str, shape))} (an output of another size than its input)")
        except Exception as e:  # noqa: BLE001 - one model's failure on one image is recorded, the rest go on
            result.outcomes[label] = Outcome(error=_reason(e))
            continue
        outcome = Outcome(objects=_count(found), seconds=seconds)
        if truth is not None:
            ious = matched_ious(found, truth, IOU)
            outcome.tp = int(ious.size)
            outcome.fp, outcome.fn = outcome.objects - outcome.tp, result.truth_objects - outcome.tp
            outcome.iou_sum = float(ious.sum())
        result.outcomes[label] = outcome
        objects[label] = found
    for a, b in combinations(objects, 2):
        ious = matched_ious(objects[a], objects[b], IOU)
        n_a, n_b = result.outcomes[a].objects, result.outcomes[b].objects
        result.pairs[(a, b)] = (int(ious.size), n_a - int(ious.size), n_b - int(ious.size))
    return result, objects


def _count(labels: np.ndarray) -> int:
    """Distinct objects (non-zero values) in a label image."""
    values = np.unique(labels)
    return int(np.count_nonzero(values))


def _summarise(score: ModelScore, results: Sequence[ImageResult]) -> None:
    """A model's scores over the images it segmented."""
    if score.error:
        return
    done = [r.outcomes[score.label] for r in results if not r.outcomes[score.label].error]
    score.failed = [r.outcomes[score.label].error for r in results if r.outcomes[score.label].error]
    score.images = len(done)
    if done:
        score.seconds_per_image = statistics.median(o.seconds for o in done)
        score.objects_per_image = float(np.mean([o.objects for o in done]))
    scored = [(o, r.truth_objects) for r in results for o in [r.outcomes[score.label]] if not o.error and o.tp is not None]
    if scored:
        tp, fp, fn = (sum(getattr(o, k) for o, _ in scored) for k in ("tp", "fp", "fn"))
        score.tp, score.fp, score.fn = tp, fp, fn
        score.f1 = _pooled(np.array([[tp, fp, fn]]))
        score.precision = tp / (tp + fp) if tp + fp else None
        score.recall = tp / (tp + fn) if tp + fn else None
        score.mean_iou = sum(o.iou_sum for o, _ in scored) / tp if tp else None
        score.count_error = float(np.mean([abs(o.objects - t) for o, t in scored]))
        score.count_bias = float(np.mean([o.objects - t for o, t in scored]))
    for r in results:
        for (a, b), m in r.pairs.items():
            if score.label in (a, b):
                other = b if a == score.label else a
                score.agreement.setdefault(other, [0, 0, 0])  # type: ignore[arg-type]
                sums = score.agreement[other]
                for k in range(3):
                    sums[k] += m[k]  # type: ignore[index]
    score.agreement = {other: agreement(*sums) for other, sums in score.agreement.items()}  # type: ignore[misc]


def _order(with_labels: bool) -> Any:
    """How the report sorts images: most disagreement between models first; with a single model
    and labels, its worst F1 first; then by name."""
    def key(r: ImageResult) -> Tuple[int, float, str]:
        d = r.disagreement
        if d is not None:
            return (0, -d, str(r.path))
        f1s = [o.f1 for o in r.outcomes.values() if o.f1 is not None]
        if with_labels and f1s:
            return (1, min(f1s), str(r.path))
        return (2, 0.0, str(r.path))

    return key


# ------------------------------------------------------------------------------------------ output

def write_overlay(target: Path, image: np.ndarray, axes: Optional[str], truth: Optional[np.ndarray],
                  result: ImageResult, objects: Mapping[str, np.ndarray], scores: Sequence[ModelScore]) -> Path:
    """One PNG: the image with the outlines of each model that segmented it (``objects`` by model
    label), the annotations' (``truth``) first, side by side; a model that failed on the image has
    no panel (the report says why)."""
    from skimage.segmentation import find_boundaries

    plane = _display(image, axes)
    side = max(plane.shape[:2])
    # large images subsampled, small ones enlarged, so that 1-pixel outlines stay visible and crisp
    step, up = max(1, math.ceil(side / PANEL_MAX)), max(1, math.ceil(PANEL_MIN / side))
    base = _resample(plane, step, up)
    panels: List[Tuple[str, np.ndarray, str]] = []
    if truth is not None:
        panels.append((f"annotations: {result.truth_objects} objects", truth, TRUTH_COLOUR))
    for score in scores:
        o = result.outcomes.get(score.label)
        if o is not None and not o.error:
            panels.append((f"{score.label}: {o.objects} objects" + (f", F1 {o.f1:.2f}" if o.f1 is not None else ""),
                           objects[score.label], score.colour))
    if not panels:
        panels.append(("no model segmented this image", np.zeros(plane.shape[:2], np.int32), "#000000"))
    plt = _pyplot()
    width, height = base.shape[1] / 100.0, base.shape[0] / 100.0  # inches at 100 dpi: one PNG pixel per pixel
    title = 0.4
    fig, axs = plt.subplots(1, len(panels), figsize=(width * len(panels) * 1.01, height + title), dpi=100,
                            squeeze=False)
    for ax, (name, labels, colour) in zip(axs[0], panels):
        rgb = base.copy()
        rgb[find_boundaries(_resample(_label_plane(labels), step, up), mode="inner")] = _rgb(colour)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=16, loc="left", pad=4)
        ax.set_axis_off()
    fig.subplots_adjust(left=0, right=1, bottom=0, top=height / (height + title), wspace=0.01)
    try:
        with io.atomic_path(target) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return target


def _resample(plane: np.ndarray, step: int, up: int) -> np.ndarray:
    """Every ``step``-th pixel, each repeated ``up`` times along y and x (labels stay labels)."""
    plane = plane[::step, ::step]
    return np.repeat(np.repeat(plane, up, axis=0), up, axis=1) if up > 1 else plane


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _display(image: np.ndarray, axes: Optional[str]) -> np.ndarray:
    """An RGB uint8 picture of an image: one 2D plane (the middle one of a stack), contrast
    stretched from the 1st to the 99.8th percentile; three channels shown as colour."""
    arr = np.asarray(image)
    axes = axes or ("yxc" if arr.ndim == 3 and arr.shape[-1] in (3, 4) else "".join("?" * (arr.ndim - 2)) + "yx")
    for letter in list(axes):  # every axis but y, x and c: its middle plane
        if letter not in "yxc":
            i = axes.index(letter)
            arr, axes = np.take(arr, arr.shape[i] // 2, axis=i), axes[:i] + axes[i + 1:]
    order = [axes.index(a) for a in "yx"] + ([axes.index("c")] if "c" in axes else [])
    arr = np.transpose(arr, order).astype(np.float32)
    if arr.ndim == 3 and arr.shape[2] not in (3, 4):
        arr = arr.mean(axis=2)
    elif arr.ndim == 3:
        arr = arr[..., :3]
    lo, hi = np.percentile(arr, (1, 99.8)) if arr.size else (0.0, 1.0)
    grey = np.clip((arr - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)
    return (rgb * 255).astype(np.uint8)


def _label_plane(labels: np.ndarray) -> np.ndarray:
    """The middle plane of a label stack (as :func:`_display` shows its image)."""
    while labels.ndim > 2:
        labels = labels[labels.shape[0] // 2]
    return labels


def _rgb(colour: str) -> Tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def model_rows(result: CompareResult) -> List[Dict[str, Any]]:
    """The rows of ``compare.csv``: one per model (empty cells: does not apply or not measured)."""
    rows = []
    for m in result.models:
        row = {"model": m.label, "name": m.name, "source": m.source, "runs_on": m.runs_on, "images": m.images,
               "failed": len(m.failed) if m.ran else "", "objects_per_image": _cell(m.objects_per_image, 2),
               "f1": _cell(m.f1), "f1_low": _cell(m.f1_interval[0] if m.f1_interval else None),
               "f1_high": _cell(m.f1_interval[1] if m.f1_interval else None), "precision": _cell(m.precision), "recall": _cell(m.recall),
               "mean_iou": _cell(m.mean_iou), "tp": _cell(m.tp), "fp": _cell(m.fp), "fn": _cell(m.fn),
               "count_error": _cell(m.count_error, 2), "count_bias": _cell(m.count_bias, 2),
               "seconds_per_image": _cell(m.seconds_per_image, 4), "load_seconds": _cell(m.load_seconds, 2)}
        for other in result.models:  # every model's column in every row (its own left empty)
            row[f"agreement_{other.label}"] = _cell(m.agreement.get(other.label))
        row["error"] = m.error or (f"failed on {len(m.failed)} image(s); first: {m.failed[0]}" if m.failed else "")
        rows.append(row)
    return rows


def image_rows(result: CompareResult) -> List[Dict[str, Any]]:
    """The rows of ``compare_images.csv``: one per image and model, in the report's order."""
    rows = []
    for r in result.images:
        for m in result.models:
            o = r.outcomes.get(m.label, Outcome(error=m.error))
            rows.append({"image": str(r.path), "labels": str(r.labels_path or ""), "disagreement": _cell(r.disagreement),
                         "model": m.label, "objects": _cell(o.objects), "true_objects": _cell(r.truth_objects),
                         "tp": _cell(o.tp), "fp": _cell(o.fp), "fn": _cell(o.fn), "f1": _cell(o.f1),
                         "mean_iou": _cell(o.iou_sum / o.tp if o.tp else None), "seconds": _cell(o.seconds, 4),
                         "error": o.error})
    return rows


def _cell(x: Any, digits: int = 4) -> Any:
    if x is None:
        return ""
    return round(x, digits) if isinstance(x, float) else x


def write_outputs(result: CompareResult, out: Path, images: Any, labels: Optional[PathLike]) -> Dict[str, Path]:
    """``compare.csv``, ``compare_images.csv`` and, last, ``compare.html``, each atomically."""
    from .runs import write_rows

    rows, per_image = model_rows(result), image_rows(result)
    files = {"csv": write_rows(out / CSV_NAME, rows, list(rows[0])),
             "images_csv": write_rows(out / IMAGES_CSV_NAME, per_image, list(per_image[0])),
             "overlays": out / OVERLAYS}
    page = report_html(result, out, images, labels)
    with io.atomic_path(out / HTML_NAME) as tmp:
        tmp.write_text(page, encoding="utf-8")
    files["html"] = out / HTML_NAME
    return files


CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 20px 28px; color: #222; max-width: 1500px; }
h1 { font-size: 21px; margin-bottom: 4px; } h2 { font-size: 16px; margin-top: 26px; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.meta { color: #555; font-size: 13px; margin: 2px 0; } .verdict { font-size: 15px; margin: 10px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #e3f5e1; } .failed { color: #a00; } td.error { color: #a00; font-size: 12px; max-width: 560px; }
.swatch { display: inline-block; width: 11px; height: 11px; border: 2px solid; margin-right: 5px; vertical-align: -1px; background: #333; }
.what { color: #666; font-size: 12px; }
figure { margin: 14px 0 22px; } figcaption { font-size: 13px; margin-bottom: 4px; }
figure img { max-width: 100%; display: block; border: 1px solid #ccc; }
dt { font-weight: 600; margin-top: 5px; font-size: 13px; } dd { margin-left: 18px; font-size: 13px; color: #333; }
"""


def report_html(result: CompareResult, out: Path, images: Any, labels: Optional[PathLike]) -> str:
    """The page: the verdict, the table, how the models agree, failures, then every image's
    overlay (most disagreement first) and what the numbers mean. Every name from a file or a
    package is escaped; images are relative links."""
    e = html.escape
    n = len(result.images)
    where = images if isinstance(images, (str, os.PathLike)) else ", ".join(map(str, images))
    head = ["<h1>Which model segments these images best?</h1>",
            f'<p class="meta">{n} image(s) from {e(str(where))}; '
            + (f"annotations from {e(str(labels))}" if labels is not None
               else "no annotations: the models are compared with each other") + "</p>",
            f'<p class="meta">written {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")} by dlmodel compare</p>']
    best = result.best
    verdict = e(result.verdict())
    if best is not None:  # the name in bold, and a reminder that a score is a summary
        verdict = verdict.replace(e(best.label), f"<b>{e(best.label)}</b>", 1) + (
            " A score summarises; the outlines below show where each model goes wrong.")
    body = [f'<p class="verdict">{verdict}</p>', _model_table(result, best), *_agreement_table(result),
            *_failure_list(result), "<h2>Images, most disagreement between the models first</h2>"]
    if len([m for m in result.models if m.ran]) < 2:
        body[-1] = "<h2>Images" + (", worst F1 first" if result.with_labels else "") + "</h2>"
    for r in result.images:
        body.append(_figure(r, result, out))
    body.append(_glossary(result.with_labels))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dlmodel compare</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(head + body) + "\n</body></html>\n")


def _model_table(result: CompareResult, best: Optional[ModelScore]) -> str:
    e = html.escape
    labelled = result.with_labels
    cols = (["F1", "precision", "recall", "mean IoU", "count error", "count bias"] if labelled else []) + [
        "objects / image", "s / image", "load s", "images"]
    rows = ["<table><tr><th>model</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"]
    for m in result.models:
        who = (f'<span class="swatch" style="border-color:{m.colour}"></span><b>{e(m.label)}</b>'
               + (f'<br><span class="what">{e(m.name)} · {e(m.runs_on)}</span>' if m.name else "")
               + (f'<br><span class="what">objects: {e(m.objects_by)}</span>' if m.objects_by else ""))
        if m.error:
            rows.append(f'<tr><td>{who}</td><td class="error" colspan="{len(cols)}">cannot run here: {e(m.error)}</td></tr>')
            continue
        f1 = _fmt(m.f1) + ('<br><span class="what">{:.3f}–{:.3f}</span>'.format(*m.f1_interval) if m.f1_interval else "")
        values = ([f1, _fmt(m.precision), _fmt(m.recall), _fmt(m.mean_iou), _fmt(m.count_error, 1),
                   _signed(m.count_bias)] if labelled else []) + [
            _fmt(m.objects_per_image, 1), _fmt(m.seconds_per_image, 3), _fmt(m.load_seconds, 1),
            f"{m.images} of {len(result.images)}"]
        cls = ' class="best"' if m is best else ""
        cells = [f'<td class="num">{v}</td>' for v in values]
        if m.failed:  # the images column says it in red: its scores leave images out
            cells[-1] = f'<td class="num failed" title="see Failures">{values[-1]}</td>'
        rows.append(f"<tr{cls}><td>{who}</td>" + "".join(cells) + "</tr>")
    return "\n".join(rows) + "</table>"


def _signed(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:+.1f}"


def _agreement_table(result: CompareResult) -> List[str]:
    e = html.escape
    ran = [m for m in result.models if m.ran and m.images]
    if len(ran) < 2:
        return []
    rows = ["<h2>Agreement between the models</h2>",
            '<p class="meta">F1 at IoU 0.5 between two models\' objects, pooled over the images both segmented: '
            "1 = the same objects, 0 = none in common.</p>",
            "<table><tr><th></th>" + "".join(f"<th>{e(m.label)}</th>" for m in ran) + "</tr>"]
    for a in ran:
        cells = "".join('<td class="num">–</td>' if a is b else f'<td class="num">{_fmt(a.agreement.get(b.label))}</td>'
                        for b in ran)
        rows.append(f"<tr><th>{e(a.label)}</th>{cells}</tr>")
    rows.append("</table>")
    return rows


def _failure_list(result: CompareResult) -> List[str]:
    e = html.escape
    items = []
    for m in result.models:
        groups = failure_groups(result, m.label)
        if len(groups) == 1 and not m.images:  # one reason for every image: one line
            items.append(f"<li><b>{e(m.label)}</b> failed on every image: {e(groups[0][0])}</li>")
        elif groups:
            items.append(f"<li><b>{e(m.label)}</b> failed on {len(m.failed)} of {len(result.images)} images"
                         + (f" (scored on the other {m.images})" if m.images else "") + ":<ul>"
                         + "".join(f"<li>{e(_images(names, len(result.images)))}: {e(reason)}</li>"
                                   for reason, names in groups)
                         + "</ul></li>")
    return ["<h2>Failures</h2><ul>" + "".join(items) + "</ul>"] if items else []


def _figure(r: ImageResult, result: CompareResult, out: Path) -> str:
    e = html.escape
    parts = []
    if r.truth_objects is not None:
        parts.append(f"annotations: {r.truth_objects} objects")
    for m in result.models:
        o = r.outcomes.get(m.label)
        if o is None:
            continue
        if o.error:
            parts.append(f'{e(m.label)}: <span class="failed">failed</span>')
        else:
            parts.append(f"{e(m.label)}: {o.objects} objects" + (f", F1 {o.f1:.2f}" if o.f1 is not None else ""))
    dis = f"disagreement {r.disagreement:.2f} · " if r.disagreement is not None else ""
    img = ""
    if r.overlay is not None:
        rel = os.path.relpath(r.overlay, out).replace(os.sep, "/")
        src = e(urllib.parse.quote(rel))  # a click opens the overlay at its full size
        img = f'<a href="{src}"><img src="{src}" alt="{e(r.path.name)}" loading="lazy"></a>'
    return (f'<figure id="{e(r.path.name)}" data-disagreement="{"" if r.disagreement is None else f"{r.disagreement:.4f}"}">'
            f"<figcaption><b>{e(r.path.name)}</b> · {dis}{' · '.join(parts)}</figcaption>{img}</figure>")


def _glossary(labelled: bool) -> str:
    terms = [("objects", "each model makes its objects its own way: the package's recipe or its family's step "
                         "(StarDist, Cellpose), else dlmodel's default (threshold 0.5, watershed split, as dlmodel "
                         "predict --labels and RunDLModel)")]
    if labelled:
        terms += [
            ("F1 at IoU 0.5", "a found object matches an annotated one when their overlap is more than half of their "
                              "union (IoU > 0.5); F1 = 2 TP / (2 TP + FP + FN), the matches (TP), extra objects (FP) "
                              "and missed objects (FN) summed over the images first"),
            ("95% interval", "the range of F1 (under it in the table) when the images are drawn again at random, "
                             "with replacement, 2000 times: how much F1 depends on which images were chosen. The "
                             "best model is 'not clearly better' than another when the interval of their difference "
                             "includes 0"),
            ("precision", "TP / (TP + FP): the share of found objects that are real"),
            ("recall", "TP / (TP + FN): the share of annotated objects that were found"),
            ("mean IoU", "the mean IoU of the matched objects: how well their outlines fit (1 = exactly)"),
            ("count error", "the mean over images of |objects found − objects annotated|; count bias is the mean of "
                            "found − annotated (+ too many, − too few)")]
    terms += [
        ("agreement, disagreement", "agreement is F1 at IoU 0.5 between two models' objects; an image's disagreement "
                                    "is 1 − the mean agreement of the pairs of models on it"),
        ("s / image", "the median time per image: prediction and objects, the model already loaded (load s)"),
        ("images", "the images the model segmented; scores count only those, and a model that failed on some is "
                   "not named best")]
    return "<h2>What the numbers mean</h2><dl>" + "".join(
        f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>" for t, d in terms) + "</dl>"
