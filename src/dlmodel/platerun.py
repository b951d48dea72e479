"""`dlmodel plate`: segment a plate's images with a model and write per-object and per-well
tables (count, area, mean intensity of each measured channel) and plate heatmaps.

File names give plate, well, site and channel through a layout: a preset or your own regular
expression with the groups ``row``, ``col`` and ``channel`` (``plate`` and ``site`` optional).
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import io, plates
from .errors import DLModelError

LAYOUTS = {
    # CellProfiler's ExampleSBSImages: Channel2-01-A-01.tif
    "examplesbs": r"^Channel(?P<channel>\d+)-(?P<index>\d+)-(?P<row>[A-Pa-p])-(?P<col>\d+)\.tiff?$",
    # MetaXpress / ImageXpress: PLATE_A01_s1_w1.tif
    "imagexpress": r"^(?P<plate>.+)_(?P<row>[A-Pa-p])(?P<col>\d{2})_s(?P<site>\d+)_w(?P<channel>\d+).*\.tiff?$",
}

Site = Tuple[str, str, int, int]  # plate, row, column, site


def parse_layout(paths: Sequence[Path], layout: str) -> Dict[Site, Dict[str, Path]]:
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


def measure(labels: np.ndarray, channels: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Per object 1..N: area (pixels), centroid and mean intensity of each channel."""
    from .instances import centers

    n = int(labels.max())
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    c = centers(labels)
    out = {"object": np.arange(1, n + 1), "area": area, "center_y": c[:, -2] if n else c[:, 0], "center_x": c[:, -1] if n else c[:, 0]}
    for name, img in channels.items():
        sums = np.bincount(flat, weights=img.ravel().astype(np.float64), minlength=n + 1)[1:]
        out[f"mean_intensity_{name}"] = sums / np.maximum(area, 1)
    return out


def run(model, images: Sequence[Path], out: Path, layout: str = "examplesbs", model_channel: str = "2",
        measure_channels: Sequence[str] = ("1", "2"), metadata: Optional[Path] = None) -> Tuple[Dict[str, Path], List[str]]:
    """Segment every site's ``model_channel`` image, measure ``measure_channels`` in the objects,
    and write ``objects.csv``, ``wells.csv`` and one heatmap per per-well measurement.

    Returns the written files and the sites that failed (the others are complete)."""
    sites = parse_layout(images, layout)
    out.mkdir(parents=True, exist_ok=True)
    object_rows: List[dict] = []
    failures: List[str] = []
    for (plate, row, col, site), files in sorted(sites.items()):
        if model_channel not in files:
            failures.append(f"{plate} {row}{col:02d} site {site}: no channel {model_channel} image")
            continue
        try:
            image, axes = io.read_image(files[model_channel])
            labels = model.labels(model.predict(image, axes=axes, name=str(files[model_channel])))
            chans = {ch: io.read_image(files[ch])[0] for ch in measure_channels if ch in files}
        except DLModelError as e:
            failures.append(str(e))
            continue
        values = measure(labels, chans)
        for i in range(len(values["object"])):
            object_rows.append({"plate": plate, "row": row, "column": col, "site": site,
                                **{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in values.items()}})
    intensity_cols = [f"mean_intensity_{ch}" for ch in measure_channels]
    by_well: Dict[Tuple[str, str, int], List[dict]] = defaultdict(list)
    for o in object_rows:  # one pass over the objects, not one per well
        by_well[(o["plate"], o["row"], o["column"])].append(o)
    wells: Dict[Tuple[str, str, int], dict] = {}
    for key in sorted({(p, r, c) for p, r, c, _ in sites}):
        objs = by_well[key]
        wells[key] = {"plate": key[0], "row": key[1], "column": key[2], "count": len(objs),
                      "mean_area": float(np.mean([o["area"] for o in objs])) if objs else float("nan"),
                      **{c: float(np.mean([o[c] for o in objs])) if objs else float("nan") for c in intensity_cols if objs and c in objs[0]}}
    if metadata is not None:
        _join(wells, Path(metadata))
    paths = {"objects": _write_csv(out / "objects.csv", object_rows), "wells": _write_csv(out / "wells.csv", list(wells.values()))}
    values = {(r, c): {m: w[m] for m in w if m in ("count", "mean_area", *intensity_cols)} for (_, r, c), w in wells.items()}
    for m in ("count", "mean_area", *intensity_cols):
        paths[f"heatmap_{m}"] = plates.heatmaps(values, [m], out / f"plate_{m}.png", title=f"{m} per well")
    return paths, failures


def _join(wells: Dict[Tuple[str, str, int], dict], metadata: Path) -> None:
    """Add a per-well metadata CSV's columns (matched on its Row and Column columns)."""
    with open(metadata, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = {k.lower(): k for k in (rows[0] if rows else {})}
    if "row" not in cols or "column" not in cols:
        raise DLModelError(f"{metadata} needs Row and Column columns to join on")
    table = {(r[cols["row"]].strip().upper(), int(r[cols["column"]])): r for r in rows}
    for (_, row, col), w in wells.items():
        extra = table.get((row, col), {})
        w.update({f"meta_{k}": v for k, v in extra.items() if k not in (cols["row"], cols["column"])})


def _write_csv(path: Path, rows: List[dict]) -> Path:
    fields: List[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path
