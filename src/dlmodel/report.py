"""The plate report: one self-contained HTML page (its figures inside it, also written as PNGs
beside it) that answers a screener's questions about a plate: does each readout separate the
controls (Z', with the control distributions), what does it do over the doses (the fitted
curve, EC50), where on the plate are the values, and which wells not to trust (QC flags, each
explained).

It reads a per-well table (``wells.csv`` of `dlmodel plate`); the numbers come from
:mod:`dlmodel.screen` and :mod:`dlmodel.qc`, nothing is computed here but the drawing.
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import math
import os
import textwrap
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import plates, qc, screen
from .errors import DLModelError
from .io import atomic_path

PathLike = Union[str, os.PathLike]
#: per-well columns of `dlmodel plate` that are readouts (QC measures and metadata are not)
READOUT_PREFIXES = ("count", "mean_area", "mean_intensity_", "ring_mean_intensity_", "ring_ratio_")
NEG_COLOUR, POS_COLOUR, FLAG_COLOUR = "#1f77b4", "#d62728", "#ff7f0e"


def read_table(path: PathLike) -> List[Dict[str, str]]:
    """A CSV's rows as dicts; one line naming the file when it cannot be read or is empty."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DLModelError(f"cannot read {path}: {e.strerror or e}") from e
    if not rows:
        raise DLModelError(f"{path} has no rows")
    return rows


def default_readouts(columns: Sequence[str]) -> List[str]:
    """The readout columns of a `dlmodel plate` wells table, in its order.

    >>> default_readouts(["plate", "row", "count", "mean_area", "mean_intensity_1", "sharpness_1", "meta_Dose"])
    ['count', 'mean_area', 'mean_intensity_1']
    """
    return [c for c in columns if c in ("count", "mean_area") or c.startswith(READOUT_PREFIXES[2:])]


def describe(readout: str) -> str:
    """What a `dlmodel plate` readout column measures, in words ("" for other columns).

    >>> describe("ring_ratio_1")
    'channel 1: mean inside the objects / mean in the ring around them (translocation)'
    """
    for prefix, words in (("ring_ratio_", "channel {}: mean inside the objects / mean in the ring around them (translocation)"),
                          ("ring_mean_intensity_", "channel {}: mean intensity in the ring around the objects"),
                          ("mean_intensity_", "channel {}: mean intensity inside the objects")):
        if readout.startswith(prefix):
            return words.format(readout[len(prefix):])
    return {"count": "objects per well", "mean_area": "mean object area (pixels)"}.get(readout, "")


@plates.literal_text
def plate_report(wells_csv: PathLike, out_dir: PathLike, readouts: Optional[Sequence[str]] = None,
                 controls: Optional[str] = None, doses: Optional[str] = None, negative: Optional[float] = None,
                 positive: Optional[float] = None, about: Mapping[str, str] = {}, title: str = "",
                 thresholds: qc.Thresholds = qc.Thresholds()) -> Dict[str, Path]:
    """Write ``report.html``, ``screen.csv`` (the statistics of each readout, :func:`screen.screen`)
    and ``report/*.png`` into ``out_dir``; returns their paths by name.

    ``readouts`` default to the table's readout columns (:func:`default_readouts`); ``controls``,
    ``doses``, ``negative`` and ``positive`` as in :func:`screen.screen`; ``about`` adds lines to
    the report's header (model, images); ``title`` names the plate (default: its ``plate``
    column). Readouts are shown best Z' first. Without a control column the report still has
    the heatmaps and the QC flags, and says why there is no Z'.
    """
    wells_csv, out_dir = Path(wells_csv), Path(out_dir)
    rows = read_table(wells_csv)
    plate_names = sorted({r.get("plate", "") for r in rows})
    if len(plate_names) > 1:
        raise DLModelError(f"{wells_csv} holds {len(plate_names)} plates ({', '.join(plate_names[:5])}): "
                           "the report covers one plate; run dlmodel plate on each plate's folder")
    # a metadata column of `dlmodel plate` is meta_<name> in wells.csv: either name will do
    controls, doses = (c if c is None or c in rows[0] or f"meta_{c}" not in rows[0] else f"meta_{c}" for c in (controls, doses))
    readouts = list(readouts or default_readouts(list(rows[0])))
    if not readouts:
        raise DLModelError(f"{wells_csv} has no readout columns (count, mean_area, mean_intensity_*)")
    try:
        plan: Optional[screen.Layout] = screen.layout(rows, controls, doses, negative, positive, table=str(wells_csv))
        stats = screen.screen(rows, readouts, controls, doses, negative, positive, table=str(wells_csv))
        no_stats = ""
    except screen.ScreenError as e:
        if controls is not None or doses is not None:
            raise  # a column the user named is not there
        plan, stats, no_stats = None, [], str(e)
    # the screener's question first: which readout separates the controls best
    stats = sorted(stats, key=lambda s: -s.z.value if not math.isnan(s.z.value) else math.inf)
    readouts = [s.readout for s in stats] or readouts
    flags = {i: [f for f in r.get("flags", "").split("; ") if f] for i, r in enumerate(rows)}
    figures = out_dir / "report"
    figures.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    by_name = {s.readout: s for s in stats}
    for name in readouts:
        paths[f"figure_{name}"] = _readout_figure(rows, name, by_name.get(name), plan, flags, figures / f"{name}.png")
    paths["figure_qc"] = _qc_figure(rows, flags, figures / "qc.png")
    if stats:
        paths["screen"] = _write_rows(out_dir / "screen.csv", [s.row() for s in stats])
    page = _html(rows, readouts, stats, plan, no_stats, flags, paths, about, wells_csv, thresholds, title)
    with atomic_path(out_dir / "report.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    paths["report"] = out_dir / "report.html"
    return paths


# --- figures ---------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _wells(rows: Sequence[Mapping[str, str]]) -> List[Tuple[int, int]]:
    """Each row's (row index, column index) on the plate, 0-based."""
    return [(plates.row_index(r["row"]), int(float(r["column"])) - 1) for r in rows]


def _heatmap(ax, rows, values: np.ndarray, plan: Optional[screen.Layout], flags, title: str) -> None:
    where = _wells(rows)
    n_rows, n_cols = plates.plate_shape([(r["row"], int(float(r["column"]))) for r in rows])
    grid = np.full((n_rows, n_cols), np.nan)
    for (i, j), v in zip(where, values):
        grid[i, j] = v
    im = ax.imshow(grid, cmap="viridis")
    ax.figure.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
    from matplotlib.patches import Rectangle
    from matplotlib.patheffects import withStroke

    for k, (i, j) in enumerate(where):
        role = plan.role(k) if plan is not None else "sample"
        if role != "sample":
            colour = NEG_COLOUR if role == "negative" else POS_COLOUR
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=3.2))
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=2))
            ax.text(j, i, "−" if role == "negative" else "+", ha="center", va="center", fontsize=10,
                    fontweight="bold", color="white", path_effects=[withStroke(linewidth=2, foreground="black")])
        if flags.get(k):
            ax.plot(j + 0.3, i - 0.3, marker="X", markersize=7, color=FLAG_COLOUR, markeredgecolor="black", markeredgewidth=0.5)
    ax.set_xticks(range(n_cols), [str(c + 1) for c in range(n_cols)], fontsize=7)
    ax.set_yticks(range(n_rows), [plates.row_name(r) for r in range(n_rows)], fontsize=7)
    ax.set_title(title, fontsize=9)


def _wrap(text: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _controls_panel(ax, rows, name: str, s: Optional[screen.ReadoutStats], plan: Optional[screen.Layout]) -> None:
    if s is None or plan is None or plan.no_controls:
        why = (plan.no_controls if plan is not None else "") or "no control column in the well table"
        ax.text(0.5, 0.5, _wrap(f"no Z': {why}", 40), ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
        return
    values = np.array([screen.number(r.get(name)) for r in rows])
    samples = values[[plan.role(k) == "sample" for k in range(len(rows))]]
    samples = samples[np.isfinite(samples)]
    rng = np.random.default_rng(0)  # the same jitter every time: a report is reproducible
    groups = [("negative", np.array(s.negative), NEG_COLOUR), ("samples", samples, "0.55"), ("positive", np.array(s.positive), POS_COLOUR)]
    for x, (label, v, colour) in enumerate(groups):
        if v.size == 0:
            continue
        ax.scatter(x + rng.uniform(-0.18, 0.18, v.size), v, s=14, color=colour, alpha=0.8 if label != "samples" else 0.45,
                   edgecolors="none", zorder=3)
        if label != "samples":
            m, sd = v.mean(), v.std()
            ax.plot([x - 0.3, x + 0.3], [m, m], color=colour, linewidth=2, zorder=4)
            ax.fill_between([x - 0.3, x + 0.3], m - 3 * sd, m + 3 * sd, color=colour, alpha=0.15, zorder=1)
    ax.set_xticks(range(3), [f"negative\n(n={len(s.negative)})", f"samples\n(n={samples.size})", f"positive\n(n={len(s.positive)})"],
                  fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(-0.6, 2.6)
    z = s.z.value
    title = f"Z' = {z:.2f} ({screen.verdict(z)})" + (" *" if s.z.note else "") if not math.isnan(z) else f"no Z': {s.z.note}"
    ax.set_title(_wrap(title), fontsize=9)
    ax.text(0.02, 0.02, "bars: control mean; bands: mean ± 3 SD", transform=ax.transAxes, fontsize=6, color="0.35")


def _dose_axis(doses: np.ndarray) -> Tuple[str, float]:
    """``linear`` or ``log`` for the doses, and where dose 0 is drawn on a log axis."""
    positive = doses[doses > 0]
    if positive.size == 0 or positive.max() / positive.min() < 100:
        return "linear", 0.0
    return "log", positive.min() / 10.0


def _dose_panel(ax, s: Optional[screen.ReadoutStats], plan: Optional[screen.Layout]) -> None:
    if s is None or not s.doses:
        why = (s.ec50.note if s is not None else "") or (plan.no_doses if plan is not None else "") or "no dose column"
        ax.text(0.5, 0.5, _wrap(f"no dose response: {why}", 40), ha="center", va="center", fontsize=8, transform=ax.transAxes)
        ax.set_axis_off()
        return
    x, y = np.array(s.doses), np.array(s.values)
    scale, zero_at = _dose_axis(x)
    xp = np.where(x > 0, x, zero_at) if scale == "log" else x
    ax.scatter(xp, y, s=10, color="0.55", alpha=0.6, edgecolors="none", label="wells", zorder=2)
    levels = np.unique(x)
    means = np.array([y[x == d].mean() for d in levels])
    sds = np.array([y[x == d].std() for d in levels])
    lp = np.where(levels > 0, levels, zero_at) if scale == "log" else levels
    ax.errorbar(lp, means, yerr=sds, fmt="o", color="black", markersize=4, capsize=2, label="mean ± SD per dose", zorder=3)
    if s.fit is not None:
        grid = np.geomspace(max(zero_at, 1e-12), x.max(), 200) if scale == "log" else np.linspace(0, x.max(), 200)
        ax.plot(grid, s.fit(grid), color=POS_COLOUR, linewidth=1.8, label="4-parameter fit", zorder=4)
        ax.axvline(s.fit.ec50, color=POS_COLOUR, linestyle="--", linewidth=1)
        title = f"EC50 = {s.fit.ec50:.3g} (Hill {s.fit.hill:.2g})" + (" *" if s.ec50.note else "")
        if s.ec50.note:
            ax.text(0.98, 0.02, "* caveats: see the notes above", transform=ax.transAxes, fontsize=6, color="0.35", ha="right")
    else:
        title = f"no EC50: {s.ec50.note}"
    if scale == "log":
        ax.set_xscale("log")
        ax.axvline(zero_at * 2, color="0.8", linewidth=0.8)
        ticks = [t for t in ax.get_xticks() if zero_at * 3 < t <= x.max() * 1.01]
        ax.set_xticks([zero_at, *ticks], ["0", *[f"{t:g}" for t in ticks]])
    ax.set_xlabel(f"dose ({plan.dose_column})" if plan is not None else "dose", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="best", frameon=False)
    ax.set_title(_wrap(title), fontsize=9)


def _readout_figure(rows, name: str, s: Optional[screen.ReadoutStats], plan: Optional[screen.Layout],
                    flags: Mapping[int, List[str]], out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9), gridspec_kw={"width_ratios": [1.45, 0.8, 1.0]})
    values = np.array([screen.number(r.get(name)) for r in rows])
    _heatmap(axes[0], rows, values, plan, flags, f"{name} per well")
    _controls_panel(axes[1], rows, name, s, plan)
    _dose_panel(axes[2], s, plan)
    for ax in axes[1:]:
        ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def _qc_figure(rows, flags: Mapping[int, List[str]], out: Path) -> Path:
    """The plate with each well coloured by how many flags it has, and the flags' initials."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    n_rows, n_cols = plates.plate_shape([(r["row"], int(float(r["column"]))) for r in rows])
    grid = np.full((n_rows, n_cols), np.nan)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * n_rows + 1.4))
    for k, (i, j) in enumerate(_wells(rows)):
        grid[i, j] = min(len(flags.get(k, [])), 2)
    ax.imshow(grid, cmap=ListedColormap(["#e8f5e9", "#ffcc80", "#e57373"]), vmin=0, vmax=2)
    for k, (i, j) in enumerate(_wells(rows)):
        short = "".join(f.split(" (")[0][0].upper() for f in flags.get(k, []))
        if short:
            ax.text(j, i, short, ha="center", va="center", fontsize=7, fontweight="bold")
    ax.set_xticks(range(n_cols), [str(c + 1) for c in range(n_cols)], fontsize=7)
    ax.set_yticks(range(n_rows), [plates.row_name(r) for r in range(n_rows)], fontsize=7)
    n = sum(1 for f in flags.values() if f)
    ax.set_title(f"QC flags: {n} of {len(rows)} wells flagged (N no objects, C count outlier, B blurred, S saturated, M model unsure)", fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    plt = _pyplot()
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out


def _write_rows(path: Path, rows: List[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# --- the page --------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 24px 32px; color: #222; max-width: 1400px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; font-size: 13px; margin: 2px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.excellent { background: #c8e6c9; } .marginal { background: #fff3c4; } .overlap { background: #ffcdd2; } .none { background: #eeeeee; }
.note { color: #555; font-size: 12px; max-width: 520px; }
.what { color: #666; font-size: 12px; font-weight: normal; } .caveat { color: #888; font-style: italic; }
img { max-width: 100%; border: 1px solid #eee; }
.legend span { display: inline-block; margin-right: 16px; font-size: 12px; }
.box { display: inline-block; width: 12px; height: 12px; vertical-align: middle; margin-right: 4px; border: 2px solid; }
dt { font-weight: 600; margin-top: 6px; } dd { margin-left: 18px; font-size: 13px; }
"""


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}g}"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html(rows, readouts, stats, plan, no_stats, flags, paths, about, wells_csv, thresholds, title) -> str:
    e = html.escape
    plate = title or rows[0].get("plate", "") or wells_csv.parent.name
    head = [f"<h1>Plate report: {e(plate)}</h1>",
            f'<p class="meta">{len(rows)} wells from {e(str(wells_csv))}; written {datetime.date.today().isoformat()}</p>']
    for k, v in about.items():
        head.append(f'<p class="meta">{e(k)}: {e(v)}</p>')
    if plan is not None:
        neg = int(np.sum(plan.labels == plan.negative))
        pos = int(np.sum(plan.labels == plan.positive))
        head.append(f'<p class="meta">controls: column <b>{e(plan.control_column)}</b>, negative = {plan.negative:g} '
                    f'({neg} wells), positive = {plan.positive:g} ({pos} wells)'
                    + (f"; doses: column <b>{e(plan.dose_column)}</b>" if plan.dose_column else f"; {e(plan.no_doses)}")
                    + "</p>")
        if plan.no_controls:
            head.append(f'<p class="meta"><b>no Z\'</b>: {e(plan.no_controls)}</p>')
    elif no_stats:
        head.append(f'<p class="meta"><b>no statistics</b>: {e(no_stats)}</p>')
    body = ["<h2>Assay quality per readout</h2>"]
    if stats and not math.isnan(stats[0].z.value):
        best = stats[0]
        body.append(f"<p>Best separation of the controls: <b>{e(best.readout)}</b> ({e(describe(best.readout))}), "
                    f"Z' = {best.z.value:.2f}, {e(screen.verdict(best.z.value))}"
                    + (f"; EC50 = {best.ec50.value:.3g}" if not math.isnan(best.ec50.value) else "") + ".</p>")
    if stats:
        body.append("<table><tr><th>readout</th><th>Z'</th><th>assay</th><th>one-tailed Z'</th><th>V-factor</th><th>EC50</th>"
                    "<th>Hill</th><th>bottom → top</th><th>notes</th></tr>")
        for s in stats:
            verdict = screen.verdict(s.z.value)
            cls = {"excellent": "excellent", "marginal": "marginal", "controls overlap": "overlap"}.get(verdict, "none")
            notes = [n for n in (s.z.note and f"Z': {s.z.note}", s.one_tailed_z.note and f"one-tailed Z': {s.one_tailed_z.note}",
                                 s.v.note and f"V: {s.v.note}", s.ec50.note and f"dose response: {s.ec50.note}", *s.notes) if n]
            f = s.fit
            caveat = ' class="num caveat" title="see the notes"' if s.ec50.note and f else ' class="num"'
            body.append(f'<tr><td><a href="#{e(s.readout)}">{e(s.readout)}</a><br><span class="what">{e(describe(s.readout))}</span></td>'
                        f'<td class="num {cls}">{_num(s.z.value)}</td>'
                        f'<td class="{cls}">{e(verdict)}</td><td class="num">{_num(s.one_tailed_z.value)}</td>'
                        f'<td class="num">{_num(s.v.value)}</td><td{caveat}>{_num(s.ec50.value)}{" *" if s.ec50.note and f else ""}</td>'
                        f'<td class="num">{_num(f.hill, 2) if f else "–"}</td>'
                        f'<td class="num">{(_num(f.bottom) + " → " + _num(f.top)) if f else "–"}</td>'
                        f'<td class="note">{"<br>".join(e(n) for n in notes)}</td></tr>')
        body.append("</table>")
        body.append('<p class="note">Z\' = 1 − 3 (SD<sub>neg</sub> + SD<sub>pos</sub>) / |mean<sub>pos</sub> − mean<sub>neg</sub>| '
                    "over the control wells (population SD, as CellProfiler's CalculateStatistics): ≥ 0.5 excellent, "
                    "0–0.5 marginal, &lt; 0 the controls overlap. V = 1 − 6 · mean SD per dose / range of the dose means. "
                    "EC50, Hill, bottom and top from a 4-parameter logistic fitted to every well with a dose.</p>")
    else:
        body.append(f"<p>{e(no_stats or 'no statistics')}</p>")
    body.append('<p class="legend"><span><span class="box" style="border-color:%s"></span>negative control (−)</span>'
                '<span><span class="box" style="border-color:%s"></span>positive control (+)</span>'
                '<span style="color:%s">✖</span> <span>QC-flagged well</span></p>' % (NEG_COLOUR, POS_COLOUR, FLAG_COLOUR))
    for name in readouts:
        what = describe(name)
        body.append(f'<h2 id="{e(name)}">{e(name)}' + (f' <span class="what">{e(what)}</span>' if what else "")
                    + f'</h2>{_img(paths[f"figure_{name}"])}')
    body.append("<h2>Well quality</h2><p>Flagged wells are kept in the statistics above: look at their images before "
                "leaving them out.</p>" + _img(paths["figure_qc"]))
    flagged = [(k, f) for k, f in flags.items() if f]
    if flagged:
        body.append("<table><tr><th>well</th><th>flags</th><th>count</th></tr>")
        for k, f in sorted(flagged, key=lambda kf: (plates.row_index(rows[kf[0]]["row"]), int(float(rows[kf[0]]["column"])))):
            r = rows[k]
            body.append(f"<tr><td>{e(r['row'])}{int(float(r['column'])):02d}</td><td>{'<br>'.join(e(x) for x in f)}</td>"
                        f'<td class="num">{e(r.get("count", ""))}</td></tr>')
        body.append("</table>")
    else:
        body.append("<p>No well is flagged.</p>")
    body.append("<dl>" + "".join(f"<dt>{e(name)}</dt><dd>{e(qc.explain(name, thresholds))}</dd>" for name in qc.FLAGS) + "</dl>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Plate report: {e(plate)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(head + body) + "\n</body></html>\n")
