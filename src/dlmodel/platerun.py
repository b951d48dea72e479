"""`dlmodel plate`: segment a plate's images with a model and write per-object and per-well
tables (count, area, mean intensity of each measured channel) and plate heatmaps.

File names give plate, well, site and channel through a layout: a preset or your own regular
expression with the groups ``row``, ``col`` and ``channel`` (``plate`` and ``site`` optional).
"""
from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import io, plates, qc
from .errors import DLModelError
from .runs import ModelJob, Task

LAYOUTS = {
    # CellProfiler's ExampleSBSImages: Channel2-01-A-01.tif
    "examplesbs": r"^Channel(?P<channel>\d+)-(?P<index>\d+)-(?P<row>[A-Pa-p])-(?P<col>\d+)\.tiff?$",
    # MetaXpress / ImageXpress: PLATE_A01_s1_w1.tif
    "imagexpress": r"^(?P<plate>.+)_(?P<row>[A-Pa-p])(?P<col>\d{2})_s(?P<site>\d+)_w(?P<channel>\d+).*\.tiff?$",
}

Site = Tuple[str, str, int, int]  # plate, row, column, site


def parse_layout(paths: Sequence[Path], layout: str = "examplesbs") -> Dict[Site, Dict[str, Path]]:
    """Group files by (plate, row, column, site) -> {channel: path}; unmatched files are skipped."""
    pattern = re.compile(LAYOUTS.get(layout, layout))
    for group in ("row", "col", "channel"):
        if f"?P<{group}>" not in pattern.pattern:
            raise DLModelError(f"layout {layout!r} has no (?P<{group}>...) group")
    sites: Dict[Site, Dict[str, Path]] = defaultdict(dict)
    for p in paths:
        m = pattern.match(p.name)
        if not m:
            continue
        g = m.groupdict()
        key = (g.get("plate") or "plate", g["row"].upper(), int(g["col"]), int(g.get("site") or 1))
        sites[key][g["channel"]] = p
    if not sites:
        raise DLModelError(f"no file name matches layout {layout!r}")
    return dict(sites)


def measure(labels: np.ndarray, channels: Dict[str, np.ndarray], ring: int = 0) -> Dict[str, np.ndarray]:
    """Per object 1..N: area (pixels), centroid and mean intensity of each channel; with
    ``ring`` > 0 also the mean intensity in a ring ``ring`` pixels wide around each object
    (grown into the background, never into another object: CellProfiler's Distance-N
    cytoplasm) and the ratio inside / ring (``ring_ratio_<channel>``: a translocation readout,
    NaN for an object with no ring)."""
    from .instances import centers

    n = int(labels.max())
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    c = centers(labels)
    out = {"object": np.arange(1, n + 1), "area": area, "center_y": c[:, -2] if n else c[:, 0], "center_x": c[:, -1] if n else c[:, 0]}
    rings = ring_labels(labels, ring).ravel() if ring > 0 else None
    ring_area = np.bincount(rings, minlength=n + 1)[1:].astype(np.float64) if rings is not None else None
    for name, img in channels.items():
        values = img.ravel().astype(np.float64)
        sums = np.bincount(flat, weights=values, minlength=n + 1)[1:]
        out[f"mean_intensity_{name}"] = sums / np.maximum(area, 1)
        if rings is not None:
            ring_sums = np.bincount(rings, weights=values, minlength=n + 1)[1:]
            with np.errstate(invalid="ignore", divide="ignore"):
                ring_mean = np.where(ring_area > 0, ring_sums / np.maximum(ring_area, 1), np.nan)
                out[f"ring_mean_intensity_{name}"] = ring_mean
                out[f"ring_ratio_{name}"] = np.where(ring_mean > 0, out[f"mean_intensity_{name}"] / ring_mean, np.nan)
    return out


def ring_labels(labels: np.ndarray, width: int) -> np.ndarray:
    """Each object's ring: background pixels within ``width`` pixels of it, given to the
    nearest object (a new array; ``labels`` is not changed).

    >>> lab = np.zeros((1, 7), dtype=np.int32); lab[0, 3] = 1
    >>> ring_labels(lab, 2).tolist()
    [[0, 1, 1, 0, 1, 1, 0]]
    """
    from skimage.segmentation import expand_labels

    grown = expand_labels(labels, distance=width)
    grown[labels > 0] = 0
    return grown


def measure_columns(channels: Sequence[str], ring: int = 0) -> List[str]:
    """The per-object measurement columns :func:`measure` makes for ``channels`` (averaged per well)."""
    cols = [f"mean_intensity_{c}" for c in channels]
    if ring > 0:
        cols += [f"ring_mean_intensity_{c}" for c in channels] + [f"ring_ratio_{c}" for c in channels]
    return cols


@dataclass(frozen=True)
class PlateJob(ModelJob):
    """`dlmodel plate` on the batch engine: one task per site (segment the model channel, measure
    the measured channels in the objects), each writing ``sites/<plate>_<well>_s<site>.csv``
    atomically, so that ``resume`` and Dask work as for `dlmodel predict`; :func:`collect`
    then writes the plate's tables and heatmaps."""

    out_dir: Path = Path("out")
    model_channel: str = "2"
    measure_channels: Tuple[str, ...] = ("1", "2")
    ring: int = 0
    confidence: bool = False  # measure the model's confidence per site (dlmodel.confidence)
    augmentations: Optional[int] = None

    def tasks(self, sites: Dict[Site, Dict[str, Path]]) -> List[Task]:
        tasks = []
        for (plate, row, col, site), files in sorted(sites.items()):
            channels = tuple(dict.fromkeys(c for c in (self.model_channel, *self.measure_channels) if c in files))
            stem = self.out_dir / "sites" / f"{plate}_{row}{col:02d}_s{site}"
            outputs = (stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + "_image.csv"))
            tasks.append(Task(f"{plate} {row}{col:02d} site {site}", tuple(files[c] for c in channels), outputs,
                              key=(plate, row, col, site, channels)))
        return tasks

    def tables(self) -> List[Path]:
        """The plate's own tables and heatmaps, written by :func:`collect` (a metadata CSV must
        not be one, nor a file of the user's beside the images)."""
        measures = ("count", "mean_area", *measure_columns(self.measure_channels, self.ring))
        return [self.out_dir / "objects.csv", self.out_dir / "wells.csv",
                *(self.out_dir / f"plate_{m}.png" for m in measures),
                *([self.out_dir / "plate_confidence.png"] if self.confidence else [])]

    def __call__(self, task: Task, model: Any = None) -> int:
        plate, row, col, site, channels = task.key
        files = dict(zip(channels, task.inputs))
        if self.model_channel not in files:
            raise DLModelError(f"{task.name}: no channel {self.model_channel} image")
        model = model or self.model()
        image, axes = io.read_image(files[self.model_channel])
        measured = None
        if self.confidence:  # its plain prediction and objects are the site's: nothing is predicted twice
            measured = model.confidence(image, axes=axes, augmentations=self.augmentations, objects=dict(self.objects) or True,
                                        name=str(files[self.model_channel]))
            labels = measured.labels
        else:
            labels = model.labels(model.predict(image, axes=axes, name=str(files[self.model_channel])), **dict(self.objects))
        images = {ch: image if ch == self.model_channel else io.read_image(files[ch])[0] for ch in files}
        values = measure(labels, {ch: images[ch] for ch in self.measure_channels if ch in images}, self.ring)
        where = {"plate": plate, "row": row, "column": col, "site": site}
        if measured is not None:  # per object: the fraction of flipped or rotated copies that found it again
            values["found_in_copies"] = measured.object_fraction
        rows = [{**where, **{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in values.items()}}
                for i in range(len(values["object"]))]
        _write_csv(task.outputs[0], rows, fields=OBJECT_FIELDS + measure_columns(self.measure_channels, self.ring))
        scores = {k: (math.nan if v is None else v) for k, v in measured.to_dict().items()
                  if k in CONFIDENCE_COLUMNS} if measured is not None else {}
        _write_csv(task.outputs[1], [{**where, **qc.image_measures(images), **scores}])
        return 2


OBJECT_FIELDS = ["plate", "row", "column", "site", "object", "area", "center_y", "center_x"]
#: the per-site (and per-well: their mean) confidence columns, with --confidence (docs/confidence.md)
CONFIDENCE_COLUMNS = ("confidence", "consistency", "tta_f1", "tta_mad", "foreground_mad", "ambiguity",
                      "outside_fraction", "histogram_distance")


def collect(job: PlateJob, tasks: Sequence[Task], metadata: Optional[Path] = None,
            thresholds: qc.Thresholds = qc.Thresholds()) -> Dict[str, Path]:
    """The plate's ``objects.csv`` (every object of every site done), ``wells.csv`` (count, mean
    area and mean measurements per well, the image quality measures, the well's QC flags, and a
    per-well metadata CSV's columns) and one heatmap per per-well measurement, from the sites'
    tables."""
    object_rows: List[dict] = []
    image_rows: List[dict] = []
    for t in tasks:
        if t.done():
            with open(t.outputs[0], newline="") as f:
                object_rows += [_numbers(r) for r in csv.DictReader(f)]
            with open(t.outputs[1], newline="") as f:
                image_rows += [_numbers(r) for r in csv.DictReader(f)]
    measured = measure_columns(job.measure_channels, job.ring)
    wells = well_table(object_rows, sorted({t.key[:3] for t in tasks}), measured)
    _add_quality(wells, image_rows, thresholds)
    if metadata is not None:
        _join(wells, Path(metadata))
    out = job.out_dir
    paths = {"objects": _write_csv(out / "objects.csv", object_rows, OBJECT_FIELDS + measured),
             "wells": _write_csv(out / "wells.csv", list(wells.values()))}
    values = {(r, c): {m: w[m] for m in w if m in ("count", "mean_area", *measured)} for (_, r, c), w in wells.items()}
    for m in ("count", "mean_area", *measured):
        paths[f"heatmap_{m}"] = plates.heatmaps(values, [m], out / f"plate_{m}.png", title=f"{m} per well")
    if any("confidence" in w for w in wells.values()):
        scores = {(r, c): {"confidence": w.get("confidence", math.nan)} for (_, r, c), w in wells.items()}
        paths["heatmap_confidence"] = plates.heatmaps(scores, ["confidence"], out / "plate_confidence.png",
                                                      title="the model's confidence per well")
    return paths


def well_table(object_rows: Sequence[dict], wells: Sequence[Tuple[str, str, int]],
               measure_cols: Sequence[str]) -> Dict[Tuple[str, str, int], dict]:
    """Per well (plate, row, column): object count, mean area and the mean of each measurement
    column over the objects that have a value (as CellProfiler's per-image means); NaN where no
    object has one (by :func:`dlmodel.plates.well_means`, the one per-well aggregator)."""
    present = [c for c in measure_cols if not object_rows or c in object_rows[0]]
    means = plates.well_means(object_rows, lambda o: (o["plate"], o["row"], int(o["column"])), ["area", *present])
    table: Dict[Tuple[str, str, int], dict] = {}
    for key in wells:
        m = means.get(key, {"rows": 0})
        table[key] = {"plate": key[0], "row": key[1], "column": key[2], "count": m["rows"],
                      "mean_area": m.get("area", math.nan), **{c: m.get(c, math.nan) for c in present}}
    return table


def _add_quality(wells: Dict[Tuple[str, str, int], dict], image_rows: Sequence[dict], thresholds: qc.Thresholds) -> None:
    """Each well's image quality (mean sharpness, highest saturation over its sites) and its QC flags."""
    by_well: Dict[Tuple[str, str, int], List[dict]] = defaultdict(list)
    for r in image_rows:
        by_well[(r["plate"], r["row"], int(r["column"]))].append(r)
    for key, w in wells.items():
        for col in sorted({c for r in by_well[key] for c in r if c.startswith(("sharpness_", "saturation_"))}):
            vals = [r[col] for r in by_well[key] if col in r]
            w[col] = (plates.finite_mean(vals) if col.startswith("sharpness_")
                      else float(np.nanmax(np.asarray(vals, dtype=np.float64))))
        for col in CONFIDENCE_COLUMNS:  # a well's confidence: the mean of its sites'
            if any(col in r for r in by_well[key]):
                w[col] = plates.finite_mean([r.get(col, math.nan) for r in by_well[key]])
    for key, found in qc.flags(wells, thresholds=thresholds).items():
        wells[key]["flags"] = "; ".join(found)


def _numbers(row: dict) -> dict:
    """A row read back from a site table, its numbers as numbers."""
    out = dict(row)
    for k, v in row.items():
        if k in ("plate", "row"):
            continue
        try:
            out[k] = int(v) if k in ("column", "site", "object") else float(v)
        except (TypeError, ValueError):
            pass
    return out


def read_metadata(metadata: "plates.PathLike", numeric: Sequence[str] = (), present: Sequence[str] = ()
                  ) -> Dict[Tuple[str, int], Dict[str, str]]:
    """A per-well metadata CSV, checked whole before any image is segmented: Row (letters) and
    Column (a whole number from 1) in every row, each well once, the ``present`` columns there
    and the ``numeric`` ones numbers where given (doses). Each problem is one line naming the
    file, the line and the column; returns the rows by (row, column)."""
    metadata = Path(metadata)
    try:
        with open(metadata, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DLModelError(f"metadata {metadata} cannot be read as CSV: {e}") from e
    cols = {k.strip().lower(): k for k in (rows[0] if rows else {}) if k}
    if "row" not in cols or "column" not in cols:
        raise DLModelError(f"metadata {metadata} needs Row and Column columns to join on (it has: "
                           f"{', '.join(cols.values()) or 'no columns'})")
    for name in present:
        if name not in (rows[0] if rows else {}):
            raise DLModelError(f"metadata {metadata} has no column {name!r} (it has: {', '.join(cols.values())})")
    table: Dict[Tuple[str, int], Dict[str, str]] = {}
    for line, r in enumerate(rows, start=2):
        row, col = (r.get(cols["row"]) or "").strip().upper(), (r.get(cols["column"]) or "").strip()
        if not row.isalpha():
            raise DLModelError(f"metadata {metadata}, line {line}: Row {row!r} is not a plate row (A, B, ..., AF)")
        if not col.isdigit() or int(col) < 1:
            raise DLModelError(f"metadata {metadata}, line {line}: Column {col!r} is not a whole number from 1")
        if (row, int(col)) in table:
            raise DLModelError(f"metadata {metadata}, line {line}: well {row}{int(col):02d} is listed twice")
        for name in numeric:
            value = (r.get(name) or "").strip()
            try:
                float(value) if value else None
            except ValueError:
                raise DLModelError(f"metadata {metadata}, line {line}: {name} {value!r} is not a number") from None
        table[(row, int(col))] = r
    return table


def _join(wells: Dict[Tuple[str, str, int], dict], metadata: Path) -> None:
    """Add a per-well metadata CSV's columns (matched on its Row and Column columns)."""
    table = read_metadata(metadata)
    skip = {k for k in next(iter(table.values()), {}) if k and k.strip().lower() in ("row", "column")}
    for (_, row, col), w in wells.items():
        extra = table.get((row, col), {})
        w.update({f"meta_{k}": v for k, v in extra.items() if k not in skip})


def _write_csv(path: Path, rows: List[dict], fields: Optional[List[str]] = None) -> Path:
    fields = list(fields or [])
    for r in rows:
        fields += [k for k in r if k not in fields]
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path
