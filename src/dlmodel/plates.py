"""Plate summaries: per-well values from a per-image table, drawn as plate heatmaps."""
from __future__ import annotations

import csv
import functools
import os
import string
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Sequence, Tuple, Union

import numpy as np

from .errors import DLModelError

PathLike = Union[str, os.PathLike]
PLATE_SHAPES = ((8, 12), (16, 24), (32, 48))  # 96, 384, 1536 wells


def _number(value: Any) -> float:
    """A table's value as a float; blank or unreadable text is NaN (as CellProfiler writes them)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def finite_mean(values: Iterable[Any]) -> float:
    """The mean of the finite numbers among ``values``; NaN where there is none.

    >>> finite_mean([1, "3", "", float("inf"), None])
    2.0
    """
    a = np.array([_number(v) for v in values], dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def well_means(rows: Iterable[Mapping[str, Any]], well: Callable[[Mapping[str, Any]], Hashable],
               columns: Sequence[str]) -> Dict[Hashable, Dict[str, Any]]:
    """Per well, the number of rows and the mean of each column over the rows (images, sites or
    objects) that have a finite number in it, NaN where none does: the one per-well aggregator of
    ``dlmodel plate`` (objects per well), ``dlmodel heatmap`` (images per well) and the QC columns.
    ``well(row)`` names a row's well; a row for which it raises ValueError (an image set that
    failed) is left out. Wells come in the order first seen.

    >>> rows = [{"w": "A1", "x": 1}, {"w": "A1", "x": "3"}, {"w": "B2", "x": ""}]
    >>> well_means(rows, lambda r: r["w"], ["x"])
    {'A1': {'rows': 2, 'x': 2.0}, 'B2': {'rows': 1, 'x': nan}}
    """
    by_well: Dict[Hashable, List[Mapping[str, Any]]] = {}
    for r in rows:  # one pass over the rows, not one per well
        try:
            key = well(r)
        except ValueError:
            continue
        by_well.setdefault(key, []).append(r)
    return {key: {"rows": len(found), **{c: finite_mean(r.get(c) for r in found) for c in columns}}
            for key, found in by_well.items()}


def well_values(table: PathLike, measures: Sequence[str], row: str = "Metadata_Row",
                column: str = "Metadata_Column") -> Dict[Tuple[str, int], Dict[str, float]]:
    """Mean of each measure per well from a per-image CSV (e.g. CellProfiler's Image.csv).

    Returns ``{(row letter, column number): {measure: mean over the well's images}}``."""
    table = Path(table)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DLModelError(f"{table} has no rows")
    missing = [m for m in (row, column, *measures) if m not in rows[0]]
    if missing:
        raise DLModelError(f"{table} has no column {missing[0]!r} (columns: {', '.join(list(rows[0])[:12])}, ...)")
    means = well_means(rows, lambda r: (r[row].strip().upper(), int(float(r[column]))), measures)
    # a well, and a measure of it, only where an image had a number
    values = {k: {m: v for m, v in d.items() if m != "rows" and np.isfinite(v)} for k, d in means.items()}
    return {k: d for k, d in values.items() if d}


def row_index(row: str) -> int:
    """0-based index of a plate row name: A -> 0, Z -> 25, AA -> 26, AF -> 31 (1536-well plates).

    >>> [row_index(r) for r in ("A", "P", "Z", "AA", "AF")]
    [0, 15, 25, 26, 31]
    """
    n = 0
    for letter in row.strip().upper():
        if letter not in string.ascii_uppercase:
            raise DLModelError(f"plate row {row!r} is not a row name (A, B, ..., Z, AA, ...)")
        n = n * 26 + string.ascii_uppercase.index(letter) + 1
    if n == 0:
        raise DLModelError("empty plate row name")
    return n - 1


def row_name(index: int) -> str:
    """The row name of a 0-based row index (inverse of :func:`row_index`).

    >>> [row_name(i) for i in (0, 25, 26, 31)]
    ['A', 'Z', 'AA', 'AF']
    """
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = string.ascii_uppercase[rest] + name
    return name


def plate_shape(wells: Sequence[Tuple[str, int]]) -> Tuple[int, int]:
    n_rows = max(row_index(r) for r, _ in wells) + 1
    n_cols = max(c for _, c in wells)
    for shape in PLATE_SHAPES:
        if n_rows <= shape[0] and n_cols <= shape[1]:
            return shape
    return n_rows, n_cols


def plate_grid(values: Dict[Tuple[str, int], Dict[str, float]], measure: str, shape: Tuple[int, int]) -> np.ndarray:
    """One measure laid out as the plate (rows x columns); NaN where a well has no value."""
    grid = np.full(shape, np.nan)
    for (r, c), d in values.items():
        if measure in d:
            grid[row_index(r), c - 1] = d[measure]
    return grid


def literal_text(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Draw with every text shown as written: a column named ``cost $ per well`` is a dollar
    sign, not matplotlib's TeX (mathtext), which would fail on an unpaired ``$`` (or typeset a
    paired one)."""
    @functools.wraps(fn)
    def drawn_literally(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return fn(*args, **kwargs)

    return drawn_literally


@literal_text
def heatmaps(values: Dict[Tuple[str, int], Dict[str, float]], measures: Sequence[str], out: PathLike,
             title: str = "") -> Path:
    """One plate heatmap per measure, side by side, written atomically to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not values:
        raise DLModelError("no wells to draw")
    n_rows, n_cols = plate_shape(list(values))
    fig, axes = plt.subplots(1, len(measures), figsize=(6.5 * len(measures), 0.45 * n_rows + 1.8), squeeze=False)
    for ax, m in zip(axes[0], measures):
        im = ax.imshow(plate_grid(values, m, (n_rows, n_cols)), cmap="viridis")
        ax.set_xticks(range(n_cols), [str(i + 1) for i in range(n_cols)], fontsize=7)
        ax.set_yticks(range(n_rows), [row_name(i) for i in range(n_rows)], fontsize=7)
        ax.set_title(m, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from .io import atomic_path

    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out


def summarise(table: PathLike, measures: Sequence[str], out: PathLike, **columns: str) -> Tuple[Path, int]:
    """Per-well means of ``measures`` from ``table``, drawn to ``out``; returns (png, wells)."""
    from .errors import InputError
    from .outputs import check_output_files

    check_output_files([out], [table])  # -o naming the table itself would replace it
    if Path(out).suffix.lower() != ".png":  # a picture written over a file of another kind (Objects.csv) ends it
        raise InputError(f"{out}: the heatmap is a PNG; give -o a file name ending in .png")
    values = well_values(table, measures, **columns)
    n = len(values)
    return heatmaps(values, measures, out, title=f"{Path(table).name}: {n} wells"), n

