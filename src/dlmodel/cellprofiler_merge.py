"""The merge of `dlmodel cellprofiler`: ExportToSpreadsheet's tables of each slice of a screen
(Image, one per object, Experiment) into one set, and the screen statistics of the merged plate.

Values are copied as CellProfiler wrote them (text, never parsed and printed again), rows in
CellProfiler's image-set order, in the slices' own delimiter and line ends; ImageNumber becomes
the image set's number in the whole run (the number a one-process run gives it), in the Image
table and in every object table, so object rows stay with their image, and parent links
(``Parent_*``, ``Children_*``: object numbers within one image) stay valid. So the merged tables
do not depend on how the run was sliced: byte for byte, but for what differs between any two
CellProfiler runs (``ExecutionTime_*``, RunDLModel's inference seconds).
"""
from __future__ import annotations

import csv
import io as _io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import DLModelError

#: Image-table columns CellProfiler sets per run, not per image set: taken from the whole run's listing
_RUN_WIDE = ("Group_Number", "Group_Index", "Group_Length")


@dataclass
class Tables:
    """The CSVs ExportToSpreadsheet wrote into one folder, by kind (paths relative or absolute)."""

    image: Optional[Path] = None
    objects: List[Path] = field(default_factory=list)
    experiment: List[Path] = field(default_factory=list)
    other: List[Path] = field(default_factory=list)  # a CSV of the pipeline's that is none of these: copied per slice

    def all(self) -> List[Path]:
        return [p for p in [self.image, *self.objects, *self.experiment, *self.other] if p is not None]


def _dialect(path: Path) -> Tuple[str, str]:
    """(delimiter, line end) of a table as ExportToSpreadsheet wrote it."""
    with open(path, "rb") as f:
        head = f.readline()
    text = head.decode("utf-8", errors="replace")
    delimiter = "\t" if text.count("\t") > text.count(",") else ","
    return delimiter, "\r\n" if head.endswith(b"\r\n") else "\n"


def read_rows(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    """A table's header and rows, values as the text in the file."""
    delimiter, _ = _dialect(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, [])
        rows = [dict(zip(header, r)) for r in reader]
    return header, rows


def find_tables(folder: Path) -> Tables:
    """ExportToSpreadsheet's tables in ``folder`` (and its sub-folders), told apart by their
    columns: ImageNumber and ObjectNumber (an object table), ImageNumber alone (the Image table),
    Key and Value (Experiment)."""
    found = Tables()
    for path in sorted(Path(folder).rglob("*.csv")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        header, _ = read_rows(path) if path.stat().st_size else ([], [])
        if "ImageNumber" in header and "ObjectNumber" in header:
            found.objects.append(path)
        elif "ImageNumber" in header and found.image is None:
            found.image = path
        elif header[:2] == ["Key", "Value"]:
            found.experiment.append(path)
        else:
            found.other.append(path)
    return found


def _write(path: Path, header: List[str], rows: Sequence[Dict[str, str]], delimiter: str, newline: str) -> Path:
    from .io import atomic_path

    buf = _io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator=newline)
    w.writerow(header)
    for r in rows:
        w.writerow([r.get(k, "") for k in header])
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue().encode("utf-8"))
    return path


def merge(done: Sequence[Tuple[Path, Sequence[int]]], out: Path, sets: Sequence[Any]) -> Dict[str, Path]:
    """Merge complete slices (their folder and the image-set numbers each ran, in run order)
    into ``out``: one Image table, one table per object, Experiment (the first slice's: the
    run-level facts, which are the same in every slice but for times). Returns the merged
    tables by name ("Image", "Experiment", each object table's file stem)."""
    run_wide = {s.number: s.values for s in sets}
    merged: Dict[Path, Tuple[List[str], List[Dict[str, str]], str, str]] = {}
    order: List[Path] = []
    kinds: Dict[Path, str] = {}
    for folder, numbers in sorted(done, key=lambda d: min(d[1])):
        tables = find_tables(folder)
        if tables.image is None:
            raise DLModelError(f"{folder} has no Image table: a complete slice always has one")
        _, image_rows = read_rows(tables.image)
        local = sorted({int(r["ImageNumber"]) for r in image_rows})
        if len(local) != len(numbers):
            raise DLModelError(f"{tables.image}: {len(local)} image sets, the slice ran {len(numbers)}")
        renumber = {str(a): str(b) for a, b in zip(local, sorted(numbers))}
        for path, kind in ([(tables.image, "image")] + [(p, "objects") for p in tables.objects]
                           + [(p, "experiment") for p in tables.experiment]):
            rel = path.relative_to(folder)
            header, rows = read_rows(path)
            if rel not in merged:
                merged[rel] = (list(header), [], *_dialect(path))
                order.append(rel)
                kinds[rel] = kind
            mheader, mrows, _, _ = merged[rel]
            mheader += [h for h in header if h not in mheader]  # a column one slice lacks: blank there
            if kind == "experiment":
                if not mrows:
                    mrows += rows
                continue
            for r in rows:
                r = dict(r)
                number = renumber.get(r["ImageNumber"])
                if number is None:
                    raise DLModelError(f"{path}: ImageNumber {r['ImageNumber']} is not one of the slice's image sets")
                r["ImageNumber"] = number
                if kind == "image":
                    for k in _RUN_WIDE:
                        if k in r and k in run_wide[int(number)]:
                            r[k] = str(run_wide[int(number)][k])
                mrows.append(r)
    written: Dict[str, Path] = {}
    for rel in order:
        header, rows, delimiter, newline = merged[rel]
        if kinds[rel] != "experiment":  # image-set order; within an image, CellProfiler's object order
            rows = sorted(rows, key=lambda r: int(r["ImageNumber"]))
        name = {"image": "Image", "experiment": "Experiment"}.get(kinds[rel], rel.stem)
        written.setdefault(name, _write(out / rel, header, rows, delimiter, newline))
    return written


# --- the screen statistics of the merged plate ---------------------------------------------------

#: Image-table columns that are bookkeeping, not measurements of the image set
_NOT_READOUTS = ("ImageNumber", "Metadata_", "Group_", "ExecutionTime_", "DLModel_InferenceSeconds_", "Height_",
                 "Width_", "Scaling_", "Series_", "Frame_", "Channel_", "C_", "T_", "Z_", "MD5Digest_", "URL_",
                 "PathName_", "FileName_", "ImageSet_", "ModuleError_", "meta_")


def readouts(columns: Sequence[str], rows: Sequence[Dict[str, str]] = ()) -> List[str]:
    """The Image-table columns scored: the numeric image measurements, as CalculateStatistics
    scores them (``Count_*``, ``Threshold_*``, the per-image means ``Mean_*`` of the object
    measurements...), without CellProfiler's bookkeeping (image size, groups, times, metadata)
    and the per-image means of the object numbers."""
    def numeric(c: str) -> bool:
        for r in rows:
            try:
                float(r.get(c, ""))
            except ValueError:
                return False
        return True

    return [c for c in columns if not c.startswith(_NOT_READOUTS) and not c.endswith("_Number_Object_Number")
            and numeric(c)]


def _well(r: Dict[str, str]) -> Tuple[str, str]:
    if r.get("Metadata_Row") and r.get("Metadata_Column"):
        return r["Metadata_Row"].strip().upper(), str(int(float(r["Metadata_Column"])))
    well = (r.get("Metadata_Well") or "").strip().upper()
    letters = "".join(ch for ch in well if ch.isalpha())
    digits = "".join(ch for ch in well if ch.isdigit())
    return letters, str(int(digits)) if digits else ""


def statistics(image_csv: Path, out: Path, report: bool = False, metadata: Optional[Path] = None,
               controls: Optional[str] = None, doses: Optional[str] = None, title: str = "",
               report_readouts: int = 12) -> Tuple[Optional[Path], Optional[Path], List[str]]:
    """Z', one-tailed Z', V and EC50 of every readout of the merged Image table
    (:func:`dlmodel.screen.screen`, CalculateStatistics' formulas) into ``screen.csv``; with
    ``report`` also ``wells.csv`` (one row per image set, with ``row``/``column``) and the plate
    report (``report/report.html``) of the ``report_readouts`` readouts with the best Z'. Returns (screen.csv, report.html,
    notes): a plate without controls gets a note, not an error."""
    from . import screen
    from .runs import write_rows

    header, rows = read_rows(image_csv)
    notes: List[str] = []
    if metadata is not None:
        from .platerun import read_metadata

        table = read_metadata(metadata)
        skip = {k for k in next(iter(table.values()), {}) if k and k.strip().lower() in ("row", "column")}
        for r in rows:
            row, col = _well(r)
            extra = table.get((row, int(col))) if row and col else None
            r.update({f"meta_{k}": v for k, v in (extra or {}).items() if k not in skip})
        header += [k for k in (rows[0] if rows else {}) if k not in header]
    names = readouts(header, rows)
    try:
        stats = screen.screen(rows, names, controls=controls, doses=doses, table=str(image_csv))
    except screen.ScreenError as e:
        if controls is not None or doses is not None:
            raise
        notes.append(f"no screen statistics: {e}")
        return None, None, notes
    screen_csv = write_rows(out / "screen.csv", [s.row() for s in stats], list(stats[0].row()) if stats else ["readout"])
    html = None
    if report:
        from .report import plate_report

        wells = []
        for r in rows:
            row, col = _well(r)
            if not row or not col:
                raise DLModelError(f"{image_csv}: image set {r.get('ImageNumber')} has no Metadata_Row/Metadata_Column "
                                   "(or Metadata_Well): the report places wells on the plate by them")
            wells.append({"row": row, "column": col, **r})
        wells_csv = write_rows(out / "wells.csv", wells, list(wells[0]))
        best = sorted(stats, key=lambda s: -s.z.value if not math.isnan(s.z.value) else math.inf)[:report_readouts]
        # in a folder of its own: the report's screen.csv holds only the readouts it shows
        made = plate_report(wells_csv, out / "report", readouts=[s.readout for s in best], controls=controls, doses=doses,
                            about={"pipeline tables": str(image_csv)}, title=title)
        html = made["report"]
        if len(stats) > report_readouts:
            notes.append(f"the report shows the {report_readouts} readouts with the best Z' of {len(stats)} "
                         "(all are in screen.csv)")
    return screen_csv, html, notes
