"""Screen statistics from per-well values: Z'-factor, one-tailed Z'-factor, V-factor and a
4-parameter logistic dose-response fit (EC50, Hill slope, top, bottom).

Z', one-tailed Z' and V are the formulas of CellProfiler's CalculateStatistics module
(population standard deviations; controls and doses grouped by their values), so on the same
per-well values they give CellProfiler's numbers. Where CellProfiler returns a stand-in
(-2999999 when the control means are equal, -100000 when no control well lies between the
means) or NaN without a word, these functions raise :class:`ScreenError` with one line that
says why, and :func:`screen` keeps that line beside a NaN. The dose-response fit is the same
curve as CellProfiler's sigmoid, fitted differently; ``docs/screen.md`` says how and why.

>>> round(z_factor([1.0, 1.2, 0.8], [5.0, 5.2, 4.8]), 4)
0.7551
>>> fit = fit_dose_response([0, 1, 2, 4, 8, 16, 32], [0, 0.2, 1/3, 0.5, 2/3, 0.8, 8/9])
>>> round(fit.ec50, 3), round(fit.hill, 3)
(4.0, 1.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import DLModelError

#: CellProfiler's convention for the control column: -1 negative control, 0 sample, 1 positive.
NEGATIVE, SAMPLE, POSITIVE = -1.0, 0.0, 1.0
#: words that name a control or a dose column in well metadata (``meta_SBS_Controls``, ``Metadata_Dose``)
COLUMN_WORDS = {"control": ("control",), "dose": ("dose", "conc")}


class ScreenError(DLModelError):
    """A statistic the wells cannot give (no control wells, no spread, no fit): one line why."""


@dataclass(frozen=True)
class Stat:
    """A statistic, or why there is none: ``value`` is NaN only when ``note`` says why; a
    number may carry a note too (a caveat: one well per control, an extrapolated EC50)."""

    value: float
    note: str = ""

    def __post_init__(self) -> None:
        if math.isnan(self.value) and not self.note:
            raise ValueError("a NaN statistic needs a note saying why")  # a bug here, not the user's


@dataclass(frozen=True)
class DoseResponse:
    """A fitted 4-parameter logistic: ``bottom + (top - bottom) / (1 + (ec50 / dose) ** hill)``.

    ``bottom`` is the response without compound (dose 0), ``top`` the response at saturating
    dose, ``ec50`` the dose giving half the change (in dose units), ``hill`` > 0 the steepness;
    a falling response has ``top < bottom``. ``p_flat`` is the F-test p-value of the curve
    against a flat line through the wells (small: the dose changes the readout).

    >>> DoseResponse(bottom=1.0, top=3.0, ec50=2.0, hill=1.0)(np.array([0.0, 2.0]))
    array([1., 2.])
    """

    bottom: float
    top: float
    ec50: float
    hill: float
    p_flat: float = float("nan")
    notes: Tuple[str, ...] = ()

    def __call__(self, dose: np.ndarray) -> np.ndarray:
        return _logistic(np.asarray(dose, dtype=np.float64), self.bottom, self.top, math.log(self.ec50), self.hill)


@dataclass(frozen=True)
class ReadoutStats:
    """Everything :func:`screen` says about one readout, and the values it used (for plots)."""

    readout: str
    z: Stat
    one_tailed_z: Stat
    v: Stat
    ec50: Stat
    fit: Optional[DoseResponse]
    negative: Tuple[float, ...]
    positive: Tuple[float, ...]
    doses: Tuple[float, ...] = ()
    values: Tuple[float, ...] = ()  # the readout of each well that has a dose, in the order of ``doses``
    notes: Tuple[str, ...] = field(default=())

    def row(self) -> Dict[str, Any]:
        """One row of ``screen.csv``: every number and its note."""
        f = self.fit
        return {"readout": self.readout, "z_factor": self.z.value, "z_factor_note": self.z.note,
                "one_tailed_z_factor": self.one_tailed_z.value, "one_tailed_z_factor_note": self.one_tailed_z.note,
                "v_factor": self.v.value, "v_factor_note": self.v.note, "ec50": self.ec50.value,
                "hill": f.hill if f else float("nan"), "top": f.top if f else float("nan"),
                "bottom": f.bottom if f else float("nan"), "p_flat": f.p_flat if f else float("nan"),
                "ec50_note": self.ec50.note, "n_negative": len(self.negative), "n_positive": len(self.positive),
                "notes": "; ".join(self.notes)}


def _finite(values: Iterable[float], what: str) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64).ravel()
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise ScreenError(f"{bad} of the {a.size} {what} values are NaN or infinite; leave those wells out first")
    return a


def _controls(negative: Iterable[float], positive: Iterable[float]) -> Tuple[np.ndarray, np.ndarray]:
    neg, pos = _finite(negative, "negative-control"), _finite(positive, "positive-control")
    for a, kind in ((neg, "negative"), (pos, "positive")):
        if a.size == 0:
            raise ScreenError(f"no {kind}-control wells")
    if neg.mean() == pos.mean():
        if np.all(neg == neg[0]) and np.all(pos == neg[0]):
            raise ScreenError(f"the readout is {neg[0]:g} in every control well: it does not separate the controls")
        raise ScreenError(f"no separation: the negative and positive controls have the same mean ({neg.mean():g})")
    return neg, pos


def z_factor(negative: Iterable[float], positive: Iterable[float]) -> float:
    """Z'-factor (Zhang et al. 1999) of two sets of control wells, as CellProfiler computes it:
    ``1 - 3 (sd_neg + sd_pos) / |mean_pos - mean_neg|`` with population standard deviations
    (a single well's is 0). 1 is perfect, > 0.5 an excellent assay, < 0 overlapping controls.

    Raises :class:`ScreenError` where CellProfiler gives -2999999 (equal means) or NaN.

    >>> z_factor([0, 0, 0], [10, 10, 10])
    1.0
    >>> round(z_factor([1, 2, 3], [4, 5, 6]), 4)
    -0.633
    """
    neg, pos = _controls(negative, positive)
    return float(1.0 - 3.0 * (neg.std() + pos.std()) / abs(pos.mean() - neg.mean()))


def one_tailed_z_factor(negative: Iterable[float], positive: Iterable[float]) -> float:
    """Z'-factor from the inner tails only: each control's spread is measured by its wells that
    lie between the two means, as the root mean square of their distance to the control's own
    mean (CellProfiler's OneTailedZfactor; robust to long tails away from the other control).

    Equals CellProfiler's value when the negative controls have the lower mean. When they have
    the higher mean, CellProfiler measures each control's wells from the other control's mean
    (a slip in its code); this function does not.

    >>> round(one_tailed_z_factor([0, 1, 2, 3, 30], [50, 60, 70, 71]), 4)
    -0.7294
    """
    neg, pos = _controls(negative, positive)
    lo, hi = sorted((neg.mean(), pos.mean()))
    spreads = []
    for a, kind in ((neg, "negative"), (pos, "positive")):
        inner = a[(a >= lo) & (a <= hi)]
        if inner.size == 0:
            raise ScreenError(f"no {kind}-control well lies between the two control means: the one-tailed Z' is undefined")
        spreads.append(math.sqrt(float(np.sum((inner - a.mean()) ** 2)) / inner.size))
    return float(1.0 - 3.0 * sum(spreads) / (hi - lo))


def v_factor(doses: Iterable[float], values: Iterable[float]) -> float:
    """V-factor (Ravkin 2004) over the doses, as CellProfiler computes it: wells grouped by
    dose, ``1 - 6 * mean(sd per dose) / (max - min of the mean per dose)`` with population
    standard deviations. With two doses (the controls only) it equals Z'.

    >>> round(v_factor([0, 0, 1, 1, 2, 2], [0.0, 0.2, 1.0, 1.2, 2.0, 2.2]), 4)
    0.7
    """
    x, y = _finite(doses, "dose"), _finite(values, "readout")
    if x.size != y.size:
        raise ScreenError(f"{x.size} doses for {y.size} values")
    levels = np.unique(x)
    if levels.size < 2:
        raise ScreenError(f"every well has dose {levels[0]:g}: the V-factor needs two or more doses" if levels.size
                          else "no wells with a dose")
    means = np.array([y[x == d].mean() for d in levels])
    sds = np.array([y[x == d].std() for d in levels])
    span = means.max() - means.min()
    if span == 0:
        raise ScreenError(f"the readout's mean is {means[0]:g} at every dose: the V-factor is undefined")
    return float(1.0 - 6.0 * sds.mean() / span)


def _logistic(x: np.ndarray, bottom: float, top: float, log_ec50: float, hill: float) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        # (ec50 / x) ** hill as exp(hill * (ln ec50 - ln x)): dose 0 gives bottom, never a NaN
        return bottom + (top - bottom) / (1.0 + np.exp(hill * (log_ec50 - np.log(x))))


HILL_LIMITS = (0.05, 20.0)


def fit_dose_response(doses: Iterable[float], values: Iterable[float]) -> DoseResponse:
    """Fit ``bottom + (top - bottom) / (1 + (ec50 / dose) ** hill)`` to the wells by least squares
    (``scipy.optimize.least_squares``, EC50 fitted as its logarithm so it stays > 0, Hill slope
    in [0.05, 20], started from every tested dose as the EC50 and the best kept).

    Raises :class:`ScreenError` with one line when there is no EC50 to give: fewer than four
    doses, a negative dose, a fit that does not converge, or an EC50 that runs off the tested
    doses (the readout has not levelled out on one side). A fit whose curve is no better than a
    flat line (F-test ``p_flat`` > 0.05) or whose slope is at its limit carries a note.

    >>> fit_dose_response([0, 1, 2], [1, 2, 3])
    Traceback (most recent call last):
    ...
    dlmodel.screen.ScreenError: a 4-parameter dose-response fit needs at least 4 different doses; the wells have 3
    """
    from scipy import optimize, stats

    x, y = _finite(doses, "dose"), _finite(values, "readout")
    if x.size != y.size:
        raise ScreenError(f"{x.size} doses for {y.size} values")
    if np.any(x < 0):
        raise ScreenError(f"dose {x.min():g} is negative: give doses as concentrations (>= 0), not their logarithms")
    levels = np.unique(x)
    positive = levels[levels > 0]
    if levels.size < 4:
        raise ScreenError(f"a 4-parameter dose-response fit needs at least 4 different doses; the wells have {levels.size}")
    if np.all(y == y[0]):
        raise ScreenError(f"the readout is {y[0]:g} in every well: no dose response to fit")
    lo_ec50, hi_ec50 = math.log(positive[0]) - math.log(1000.0), math.log(positive[-1]) + math.log(1000.0)
    mean_at = {d: y[x == d].mean() for d in levels}
    bottom0, top0 = mean_at[levels[0]], mean_at[levels[-1]]
    scale = max(float(np.ptp(y)), 1e-300)

    def residuals(p: np.ndarray) -> np.ndarray:
        return (_logistic(x, p[0] * scale, p[1] * scale, p[2], p[3]) - y) / scale

    best, why = None, ""
    for start in positive:  # every tested dose as the starting EC50: the best local fit wins
        p0 = np.array([bottom0 / scale, top0 / scale, math.log(start), 1.0])
        r = optimize.least_squares(residuals, p0, method="trf", x_scale="jac",
                                   bounds=([-np.inf, -np.inf, lo_ec50, HILL_LIMITS[0]], [np.inf, np.inf, hi_ec50, HILL_LIMITS[1]]))
        if r.status > 0 and (best is None or r.cost < best.cost):
            best = r
        why = why or r.message.rstrip(".")
    if best is None:
        raise ScreenError(f"the dose-response fit did not converge from any starting EC50 ({why}): the readout may not "
                          "level out within the tested doses; no EC50")
    bottom, top, log_ec50, hill = best.x[0] * scale, best.x[1] * scale, best.x[2], best.x[3]
    if min(log_ec50 - lo_ec50, hi_ec50 - log_ec50) < 1e-3:
        side = "below the lowest" if log_ec50 - lo_ec50 < 1e-3 else "above the highest"
        raise ScreenError(f"the dose-response fit puts the EC50 far {side} tested dose (the readout does not level "
                          "out on that side): no EC50")
    notes = []
    ec50 = math.exp(log_ec50)
    if not positive[0] <= ec50 <= positive[-1]:
        notes.append(f"EC50 {ec50:.3g} lies outside the tested doses ({positive[0]:g}-{positive[-1]:g}): extrapolated")
    if min(hill - HILL_LIMITS[0], HILL_LIMITS[1] - hill) < 1e-3:
        notes.append(f"Hill slope at its limit ({hill:g}): the response is a step between two doses, the EC50 only lies between them")
    rss = float(np.sum((_logistic(x, bottom, top, log_ec50, hill) - y) ** 2))
    tss = float(np.sum((y - y.mean()) ** 2))
    dof = x.size - 4
    if dof > 0 and rss > 0:
        f_stat = ((tss - rss) / 3.0) / (rss / dof)
        p_flat = float(stats.f.sf(f_stat, 3, dof))
    else:
        p_flat = 0.0 if rss == 0 else float("nan")
    if p_flat > 0.05:
        notes.append(f"the curve fits no better than a flat line (F-test p = {p_flat:.2g}): no clear dose response")
    return DoseResponse(bottom=float(bottom), top=float(top), ec50=ec50, hill=float(hill), p_flat=p_flat, notes=tuple(notes))


def find_column(columns: Sequence[str], kind: str, given: Optional[str] = None, table: str = "the well table") -> str:
    """The control (``kind="control"``) or dose (``kind="dose"``) column: ``given`` if it is one of
    ``columns``, else the one column whose name contains the word (``meta_SBS_Controls``,
    ``Metadata_SBS_Doses``, ``concentration``).

    >>> find_column(["row", "column", "meta_SBS_Doses", "meta_SBS_Controls"], "control")
    'meta_SBS_Controls'
    """
    if given is not None:
        if given not in columns:
            raise ScreenError(f"{table} has no column {given!r} (columns: {', '.join(list(columns)[:15])})")
        return given
    words = COLUMN_WORDS[kind]
    found = [c for c in columns if any(w in c.lower() for w in words)]
    if len(found) != 1:
        how = "no column" if not found else f"{len(found)} columns ({', '.join(found)})"
        raise ScreenError(f"{table} has {how} naming the {kind}s: name the {kind} column")
    return found[0]


def control_labels(labels: Iterable[float], negative: Optional[float] = None,
                   positive: Optional[float] = None) -> Tuple[float, float]:
    """The values that mark negative and positive controls in a control column. Given values
    win; otherwise -1 and 1 when the column holds only -1, 0 and 1 (CellProfiler's convention),
    else its lowest and highest values (CellProfiler's rule). A missing kind is an error here,
    where CellProfiler would silently use the samples as that control.

    >>> control_labels([-1, 0, 0, 1])
    (-1.0, 1.0)
    >>> control_labels([-1, 0, 0])
    Traceback (most recent call last):
    ...
    dlmodel.screen.ScreenError: no positive-control wells: no well is marked 1 (the column holds -1, 0)
    """
    a = np.asarray([v for v in labels if v is not None], dtype=np.float64)
    present = sorted(set(a[np.isfinite(a)].tolist()))
    if not present:
        raise ScreenError("no well has a control value")
    if negative is None or positive is None:
        if set(present) <= {NEGATIVE, SAMPLE, POSITIVE}:
            default = (NEGATIVE, POSITIVE)
        else:
            default = (present[0], present[-1])
        negative = default[0] if negative is None else float(negative)
        positive = default[1] if positive is None else float(positive)
    if negative == positive:
        raise ScreenError(f"the negative and positive controls are both marked {negative:g}")
    for value, kind in ((negative, "negative"), (positive, "positive")):
        if value not in present:
            raise ScreenError(f"no {kind}-control wells: no well is marked {value:g} (the column holds "
                              f"{', '.join(f'{p:g}' for p in present)})")
    return float(negative), float(positive)


def number(value: Any) -> float:
    """A table cell as a number: NaN for empty, ``nan`` or text cells.

    >>> number("0.5"), number(""), number(None)
    (0.5, nan, nan)
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


@dataclass(frozen=True)
class Layout:
    """Which wells are controls and what dose each got: the columns (found or given), the
    negative and positive control values, each well's control value and dose (NaN: none), and
    why there are no controls or doses when there are none."""

    control_column: str
    dose_column: Optional[str]
    negative: float
    positive: float
    labels: np.ndarray
    doses: Optional[np.ndarray]
    no_controls: str = ""
    no_doses: str = ""

    def role(self, i: int) -> str:
        """``negative``, ``positive`` or ``sample``: what well ``i`` is."""
        return "negative" if self.labels[i] == self.negative else "positive" if self.labels[i] == self.positive else "sample"


def layout(wells: Sequence[Mapping[str, Any]], controls: Optional[str] = None, doses: Optional[str] = None,
           negative: Optional[float] = None, positive: Optional[float] = None, table: str = "the well table") -> Layout:
    """The plate's :class:`Layout` from its wells' rows (see :func:`screen`); raises
    :class:`ScreenError` when there is no control column, or a named column is not there.

    >>> plan = layout([{"SBS_Controls": "-1"}, {"SBS_Controls": "0"}, {"SBS_Controls": "1"}])
    >>> [plan.role(i) for i in range(3)], plan.no_doses[:34]
    (['negative', 'sample', 'positive'], 'the well table has no column namin')
    """
    if not wells:
        raise ScreenError(f"{table} has no wells")
    columns = list(wells[0])
    control_col = find_column(columns, "control", controls, table)
    try:
        dose_col: Optional[str] = find_column(columns, "dose", doses, table)
        no_dose = ""
    except ScreenError as e:
        if doses is not None:
            raise
        dose_col, no_dose = None, str(e)
    labels = np.array([number(w.get(control_col)) for w in wells])
    try:
        neg_label, pos_label = control_labels(labels, negative, positive)
        no_controls = ""
    except ScreenError as e:
        neg_label = pos_label = float("nan")
        no_controls = f"{control_col}: {e}"
    dose_values = np.array([number(w.get(dose_col)) for w in wells]) if dose_col else None
    return Layout(control_col, dose_col, neg_label, pos_label, labels, dose_values, no_controls, no_dose)


def _stat(compute, *args) -> Stat:
    try:
        return Stat(compute(*args))
    except ScreenError as e:
        return Stat(float("nan"), str(e))


def screen(wells: Sequence[Mapping[str, Any]], readouts: Sequence[str], controls: Optional[str] = None,
           doses: Optional[str] = None, negative: Optional[float] = None, positive: Optional[float] = None,
           table: str = "the well table") -> List[ReadoutStats]:
    """Z', one-tailed Z', V and the dose-response fit of each readout over the wells (rows of a
    per-well table: ``wells.csv``, or CellProfiler's Image.csv with one image per well).

    ``controls`` and ``doses`` name the columns (found by name when not given: a column naming
    "control", and one naming "dose" or "conc"); without a dose column V and EC50 are NaN with
    that note. A well without a value for a readout is left out of that readout, and a note
    says how many were. Every NaN comes with its reason.

    >>> wells = [{"controls": c, "dose": d, "gfp": v} for c, d, v in
    ...          [(-1, 0, 1.0), (-1, 0, 1.2), (0, 1, 2.0), (0, 2, 3.0), (0, 4, 4.0), (1, 8, 5.0), (1, 8, 5.2)]]
    >>> s = screen(wells, ["gfp"])[0]
    >>> round(s.z.value, 3), round(s.v.value, 3)
    (0.85, 0.94)
    """
    plan = layout(wells, controls, doses, negative, positive, table)
    missing = [r for r in readouts if r not in wells[0]]
    if missing:
        raise ScreenError(f"{table} has no column {missing[0]!r}")
    labels, neg_label, pos_label, no_controls = plan.labels, plan.negative, plan.positive, plan.no_controls
    dose_values, no_dose = plan.doses, plan.no_doses
    out = []
    for name in readouts:
        y = np.array([number(w.get(name)) for w in wells])
        have = np.isfinite(y)
        notes = []
        if not have.all():
            notes.append(f"{int((~have).sum())} of {y.size} wells have no value and are left out")
        neg, pos = y[have & (labels == neg_label)], y[have & (labels == pos_label)]
        if no_controls:
            z = one = Stat(float("nan"), no_controls)
        else:
            z, one = _stat(z_factor, neg, pos), _stat(one_tailed_z_factor, neg, pos)
            small = [k for k, a in (("negative", neg), ("positive", pos)) if a.size == 1]
            if small and not math.isnan(z.value):
                z = Stat(z.value, f"one {small[0]}-control well: its spread counts as 0, so Z' is optimistic")
        fit, xs, ys = None, np.array([]), np.array([])
        if dose_values is None:
            v = ec50 = Stat(float("nan"), no_dose)
        else:
            keep = have & np.isfinite(dose_values)
            xs, ys = dose_values[keep], y[keep]
            v = _stat(v_factor, xs, ys)
            try:
                fit = fit_dose_response(xs, ys)
                ec50 = Stat(fit.ec50, "; ".join(fit.notes))
            except ScreenError as e:
                ec50 = Stat(float("nan"), str(e))
        out.append(ReadoutStats(readout=name, z=z, one_tailed_z=one, v=v, ec50=ec50, fit=fit,
                                negative=tuple(neg.tolist()), positive=tuple(pos.tolist()),
                                doses=tuple(xs.tolist()), values=tuple(ys.tolist()), notes=tuple(notes)))
    return out


def verdict(z: float) -> str:
    """How a screener reads a Z'-factor.

    >>> verdict(0.7), verdict(0.2), verdict(-1.0)
    ('excellent', 'marginal', 'controls overlap')
    """
    if math.isnan(z):
        return "no Z'"
    return "excellent" if z >= 0.5 else "marginal" if z > 0 else "controls overlap"
