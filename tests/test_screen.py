"""Screen statistics (Z', one-tailed Z', V, dose-response), well QC and the plate report:
hand-computed cases, and CellProfiler's own CalculateStatistics on the same wells (a real
headless `cellprofiler` run of example_pipelines/plate_screen.cppipe)."""
import csv
import doctest
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from conftest import ROOT, SHARED

from dlmodel import platerun, qc, report, screen
from dlmodel.screen import ScreenError
from zoo import write_csv

SBS = SHARED / "data" / "ExampleSBSImages"
MODEL = ROOT / "models" / "nuclei_default"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("module", [screen, qc, report, platerun])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --- hand-computed cases -----------------------------------------------------------------------

def test_z_factors_by_hand():
    # neg 1, 2, 3: mean 2, population SD sqrt(2/3); pos 7, 8, 9: mean 8, the same SD
    assert screen.z_factor([1, 2, 3], [7, 8, 9]) == pytest.approx(1 - 6 * math.sqrt(2 / 3) / 6, rel=1e-12)
    # one-tailed: neg wells in [2, 8] are 2, 3 (RMS distance to 2: sqrt(1/2)); pos 7, 8 likewise
    assert screen.one_tailed_z_factor([1, 2, 3], [7, 8, 9]) == pytest.approx(1 - 3 * 2 * math.sqrt(0.5) / 6, rel=1e-12)
    # the controls' order does not matter to us (it does to CellProfiler's one-tailed Z': docs/screen.md)
    assert screen.one_tailed_z_factor([7, 8, 9], [1, 2, 3]) == screen.one_tailed_z_factor([1, 2, 3], [7, 8, 9])
    # V: per-dose SDs 0.1, 0.1, 0.1; dose means 0.1, 1.1, 2.1
    assert screen.v_factor([0, 0, 1, 1, 2, 2], [0, 0.2, 1, 1.2, 2, 2.2]) == pytest.approx(1 - 6 * 0.1 / 2, rel=1e-12)
    # with only the two control doses V is Z'
    assert screen.v_factor([0, 0, 0, 5, 5, 5], [1, 2, 3, 7, 8, 9]) == pytest.approx(screen.z_factor([1, 2, 3], [7, 8, 9]))


def test_perfect_separation():
    assert screen.z_factor([0, 0, 0], [10, 10, 10]) == 1.0
    assert screen.one_tailed_z_factor([0, 0, 0], [10, 10, 10]) == 1.0
    assert screen.v_factor([0, 0, 1, 1], [0, 0, 10, 10]) == 1.0
    wells = [{"controls": c, "x": v} for c, v in [(-1, 0), (-1, 0), (0, 5), (1, 10), (1, 10)]]
    (s,) = screen.screen(wells, ["x"])
    assert s.z == screen.Stat(1.0) and s.v.note.startswith("the well table has no column naming the doses")
    # a single well per control has no spread: 1 as CellProfiler says, with a caveat
    (s,) = screen.screen([{"controls": -1, "x": 0}, {"controls": 1, "x": 10}], ["x"])
    assert s.z.value == 1.0 and "one negative-control well" in s.z.note


def test_no_separation_is_said_not_a_sentinel():
    with pytest.raises(ScreenError, match=r"no separation: the negative and positive controls have the same mean \(2\)"):
        screen.z_factor([1, 2, 3], [3, 2, 1])
    wells = [{"controls": c, "x": v} for c, v in [(-1, 1), (-1, 3), (1, 2), (1, 2)]]
    (s,) = screen.screen(wells, ["x"])
    assert math.isnan(s.z.value) and s.z.note.startswith("no separation")  # CellProfiler: -2999999
    # overlapping controls are a number, below 0
    assert screen.z_factor([1, 2, 3], [2, 3, 4]) < 0 and screen.verdict(screen.z_factor([1, 2, 3], [2, 3, 4])) == "controls overlap"


def test_one_control_missing():
    wells = [{"SBS_Controls": c, "SBS_Doses": d, "x": v} for c, d, v in [(-1, 0, 1.0), (-1, 0, 1.1), (0, 1, 2.0), (0, 2, 3.0)]]
    (s,) = screen.screen(wells, ["x"])
    for stat in (s.z, s.one_tailed_z):
        assert math.isnan(stat.value)
        assert stat.note == "SBS_Controls: no positive-control wells: no well is marked 1 (the column holds -1, 0)"
    assert not math.isnan(s.v.value)  # V needs doses, not controls
    assert s.ec50.note == "a 4-parameter dose-response fit needs at least 4 different doses; the wells have 3"
    with pytest.raises(ScreenError, match="no negative-control wells"):
        screen.z_factor([], [1, 2])


def test_constant_readout():
    wells = [{"controls": c, "dose": d, "x": 5.0} for c, d in [(-1, 0), (-1, 0), (0, 1), (0, 2), (0, 4), (1, 8), (1, 8)]]
    (s,) = screen.screen(wells, ["x"])
    assert s.z.note == s.one_tailed_z.note == "the readout is 5 in every control well: it does not separate the controls"
    assert s.v.note == "the readout's mean is 5 at every dose: the V-factor is undefined"
    assert s.ec50.note == "the readout is 5 in every well: no dose response to fit"
    assert all(math.isnan(x.value) for x in (s.z, s.one_tailed_z, s.v, s.ec50))


def test_no_nan_in_silence():
    with pytest.raises(ValueError):
        screen.Stat(float("nan"))  # a NaN statistic cannot be made without its reason
    with pytest.raises(ScreenError, match="1 of the 3 negative-control values are NaN"):
        screen.z_factor([1, float("nan"), 2], [5, 6])
    # a well without a value is left out of that readout, and the note says so
    wells = [{"controls": c, "x": v} for c, v in [(-1, 1.0), (-1, ""), (-1, 1.2), (1, 5.0), (1, 5.2), (0, "nan")]]
    (s,) = screen.screen(wells, ["x"])
    assert s.z.value == pytest.approx(screen.z_factor([1.0, 1.2], [5.0, 5.2]))
    assert s.notes == ("2 of 6 wells have no value and are left out",)
    row = s.row()
    for key in ("z_factor", "one_tailed_z_factor", "v_factor", "ec50"):
        assert not math.isnan(row[key]) or row[f"{key}_note"]


def test_control_labels_and_columns():
    assert screen.control_labels([-1, 0, 1, 1]) == (-1.0, 1.0)
    assert screen.control_labels([0, 1, 2, 2]) == (0.0, 2.0)  # CellProfiler's rule: lowest and highest
    assert screen.control_labels([0, 1, 2, 3], negative=1, positive=3) == (1.0, 3.0)
    with pytest.raises(ScreenError, match="both marked 1"):
        screen.control_labels([1, 2], negative=1, positive=1)
    with pytest.raises(ScreenError, match=r"2 columns \(Control_A, control_b\) naming the controls"):
        screen.find_column(["Control_A", "control_b", "Dose"], "control")
    with pytest.raises(ScreenError, match="wells.csv has no column 'Treatment'"):
        screen.find_column(["Control", "Dose"], "dose", given="Treatment", table="wells.csv")
    assert screen.find_column(["row", "Concentration_uM"], "dose") == "Concentration_uM"


def _logistic_wells(bottom, top, ec50, hill, noise, seed=0):
    rng = np.random.default_rng(seed)
    doses = np.repeat([0, 0.1, 0.3, 1, 3, 10, 30, 100], 3).astype(float)
    with np.errstate(over="ignore", divide="ignore"):
        y = bottom + (top - bottom) / (1 + (ec50 / doses) ** hill)  # dose 0: bottom
    return doses, y + rng.normal(0, noise, y.size)


@pytest.mark.parametrize("bottom, top, ec50, hill", [(10, 100, 2.0, 1.2), (80, 5, 7.0, 2.5), (0.2, 0.9, 0.5, 0.8)])
def test_dose_response_recovers_a_known_curve(bottom, top, ec50, hill):
    doses, y = _logistic_wells(bottom, top, ec50, hill, noise=0.01 * abs(top - bottom))
    fit = screen.fit_dose_response(doses, y)
    assert fit.ec50 == pytest.approx(ec50, rel=0.08) and fit.hill == pytest.approx(hill, rel=0.15)
    assert fit.bottom == pytest.approx(bottom, abs=0.03 * abs(top - bottom))
    assert fit.top == pytest.approx(top, abs=0.03 * abs(top - bottom))
    assert fit.p_flat < 1e-6 and fit.notes == ()
    # exact data: the fit is exact
    exact = screen.fit_dose_response(*_logistic_wells(bottom, top, ec50, hill, noise=0))
    assert exact.ec50 == pytest.approx(ec50, rel=1e-6)


def test_dose_response_says_when_there_is_no_ec50():
    doses = np.repeat([0, 1, 2, 3, 4, 5], 2).astype(float)
    with pytest.raises(ScreenError, match="did not converge .* may not level out within the tested doses; no EC50"):
        screen.fit_dose_response(doses, doses * 2.0)  # a straight line: never levels out
    with pytest.raises(ScreenError, match="dose -1 is negative"):
        screen.fit_dose_response([-1, 0, 1, 2], [1, 2, 3, 4])
    flat = screen.fit_dose_response(doses, np.random.default_rng(1).normal(5, 1, doses.size))
    assert any("no better than a flat line" in n for n in flat.notes)
    step = screen.fit_dose_response(doses, np.where(doses >= 3, 10.0, 1.0))
    assert 2 <= step.ec50 <= 3 and any("Hill slope at its limit" in n for n in step.notes)


# --- QC -----------------------------------------------------------------------------------------

def test_qc_flags_a_blurred_a_saturated_and_an_empty_well():
    from scipy.ndimage import gaussian_filter

    images = [tifffile.imread(p) for p in sorted(SBS.glob("Channel2-*.tif"))[:12]]
    wells = {i: {"count": 200 + i, **qc.image_measures({"2": img})} for i, img in enumerate(images)}
    wells[3].update(qc.image_measures({"2": gaussian_filter(images[3], 3)}))
    clipped = images[5].copy()
    clipped[clipped > np.percentile(clipped, 97)] = 255
    wells[5].update(qc.image_measures({"2": clipped}))
    wells[7]["count"] = 0
    found = qc.flags(wells)
    assert [k for k, f in found.items() if f] == [3, 5, 7]
    assert found[3][0].startswith("blurred (channel 2, z = -")
    assert found[5][0].startswith("saturated (channel 2, ") and found[5][0].endswith(" %)")
    assert found[7] == ["no objects", found[7][1]] and found[7][1].startswith("count outlier (z = -")
    assert "out of focus" in qc.explain(found[3][0]) and "channel 2" in qc.explain(found[3][0])
    assert qc.saturation(images[0]) < 0.005 and qc.saturation(np.zeros((4, 4), np.uint8)) == 0.0


def test_ring_measure_by_hand():
    labels = np.zeros((9, 9), dtype=np.int32)
    labels[3:6, 3:6] = 1
    img = np.zeros((9, 9))
    img[3:6, 3:6] = 8.0  # inside: 8
    img[2, 2:7] = img[6, 2:7] = img[2:7, 2] = img[2:7, 6] = 2.0  # the 1-pixel ring: 2
    m = platerun.measure(labels, {"1": img}, ring=1)
    assert m["mean_intensity_1"][0] == 8.0 and m["ring_mean_intensity_1"][0] == 2.0 and m["ring_ratio_1"][0] == 4.0
    assert "ring_ratio_1" not in platerun.measure(labels, {"1": img})
    assert labels.sum() == 9  # not changed


# --- the report -----------------------------------------------------------------------------------

def test_report_is_one_self_contained_page(tmp_path):
    meta = {(r["Row"], int(r["Column"])): r for r in read_csv(SBS / "1049_Metadata.csv")}
    rng = np.random.default_rng(0)
    rows = []
    for (row, col), m in sorted(meta.items()):
        dose, ctrl = float(m["SBS_Doses"]), m["SBS_Controls"]
        gfp = 1 + 2 / (1 + (3 / dose) ** 2) if dose > 0 else 1.0
        rows.append({"plate": "plate", "row": row, "column": col, "count": 150 + int(rng.integers(0, 20)),
                     "mean_area": 300.0, "mean_intensity_1": gfp + rng.normal(0, 0.05), "constant": 7.0,
                     "flags": "blurred (channel 2, z = -5.0)" if (row, col) == ("C", 4) else "",
                     "meta_SBS_Doses": m["SBS_Doses"], "meta_SBS_Controls": ctrl})
    rows[0]["count"] = 0
    rows[0]["flags"] = "no objects"
    table = write_csv(tmp_path / "wells.csv", rows)
    paths = report.plate_report(table, tmp_path, readouts=["count", "mean_intensity_1", "constant"],
                                about={"model": "test wells"})
    page = paths["report"].read_text()
    assert page.count('src="data:image/png;base64,') == 4  # 3 readouts + QC, inside the page
    assert "<script" not in page and "http" not in page  # nothing to fetch
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {"count.png", "mean_intensity_1.png", "constant.png", "qc.png"}
    stats = {r["readout"]: r for r in read_csv(paths["screen"])}
    assert float(stats["mean_intensity_1"]["z_factor"]) > 0.5 and float(stats["mean_intensity_1"]["ec50"]) == pytest.approx(3, rel=0.1)
    assert stats["constant"]["z_factor"] == "nan" and "does not separate the controls" in stats["constant"]["z_factor_note"]
    assert "the readout is 7 in every control well" in page  # the reason is on the page, not just a NaN
    assert "meta_SBS_Controls" in page and "negative = -1 (16 wells), positive = 1 (8 wells)" in page
    assert "A01" in page and "no objects" in page and "out of focus" in page  # flagged wells, each flag explained
    for name in qc.FLAGS:
        assert f"<dt>{name}</dt>" in page


def test_report_without_controls_and_with_two_plates(tmp_path):
    rows = [{"plate": "p", "row": "A", "column": c, "count": 10 + c, "flags": ""} for c in range(1, 7)]
    paths = report.plate_report(write_csv(tmp_path / "wells.csv", rows), tmp_path)
    page = paths["report"].read_text()
    assert "no statistics</b>: " in page and "no column naming the controls" in page and "screen" not in paths
    rows[0]["plate"] = "q"
    with pytest.raises(Exception, match="holds 2 plates"):
        report.plate_report(write_csv(tmp_path / "two.csv", rows), tmp_path / "two")


# --- the whole command: segment, measure, QC, statistics, report ---------------------------------

def test_plate_command_writes_the_report(tmp_path):
    from scipy.ndimage import gaussian_filter

    folder = tmp_path / "plate"
    folder.mkdir()
    wells = ["A-01", "A-02", "A-03", "A-05", "A-07", "A-09", "A-11", "A-12", "B-12", "E-01", "B-01"]
    for p in SBS.glob("Channel*.tif"):
        if p.stem.split("-", 2)[2] in wells:
            shutil.copy(p, folder)
    blurred = next(folder.glob("Channel2-*-A-05.tif"))
    tifffile.imwrite(blurred, gaussian_filter(tifffile.imread(blurred), 4))
    shutil.copy(SBS / "1049_Metadata.csv", folder)
    cmd = [sys.executable, "-m", "dlmodel.cli", "plate", str(MODEL), str(folder), "-o", str(tmp_path / "out"),
           "--metadata", str(folder / "1049_Metadata.csv"), "--ring", "6", "--threads", "1"]
    refused = subprocess.run(cmd + ["--controls", "SBS_Controls"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "add --report" in refused.stderr
    res = subprocess.run(cmd + ["--report", "--controls", "SBS_Controls"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "report written" in res.stdout
    rows = {f"{w['row']}{int(w['column']):02d}": w for w in read_csv(tmp_path / "out" / "wells.csv")}
    assert len(rows) == 11 and {"sharpness_2", "saturation_1", "flags", "ring_ratio_1"} <= set(rows["A01"])
    assert rows["A05"]["flags"].startswith("blurred (channel 2")
    assert [w for w, r in rows.items() if "blurred" in r["flags"]] == ["A05"]
    stats = {r["readout"]: r for r in read_csv(tmp_path / "out" / "screen.csv")}
    assert {"count", "mean_intensity_1", "ring_ratio_1"} <= set(stats)
    assert int(stats["ring_ratio_1"]["n_negative"]) == 3 and int(stats["ring_ratio_1"]["n_positive"]) == 3
    for r in stats.values():
        for key in ("z_factor", "v_factor", "ec50"):
            assert r[key] != "nan" or r[f"{key}_note"], (r["readout"], key)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "ring_ratio_1" in page and "blurred" in page and page.count("data:image/png;base64,") == len(stats) + 1


# --- CellProfiler's CalculateStatistics on the same wells ----------------------------------------

# rows A and E of the example plate: 4 negative and 2 positive control wells, doses 0-10
CP_WELLS = [f"{r}-{c:02d}" for r in "AE" for c in range(1, 13)]


@pytest.fixture(scope="module")
def cp_run(tmp_path_factory):
    from test_cellprofiler import CELLPROFILER, _plate_subset, run_cellprofiler

    if not CELLPROFILER.exists():
        pytest.skip("cellprofiler is not installed")
    tmp = tmp_path_factory.mktemp("calcstats")
    res = run_cellprofiler("plate_screen.cppipe", _plate_subset(tmp, CP_WELLS), tmp / "out")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Failed to complete post_run" not in res.stderr
    rows = read_csv(tmp / "out" / "Image.csv")
    with open(tmp / "out" / "Experiment.csv", newline="") as f:
        experiment = dict(csv.reader(f))
    return rows, experiment


def _cp_statistics(experiment):
    """{Image.csv column: {statistic: CellProfiler's value}} from Experiment.csv."""
    out = {}
    for key, value in experiment.items():
        for stat in ("Zfactor", "OneTailedZfactor", "Vfactor", "EC50"):
            if key.startswith(stat + "_"):
                obj, feature = key[len(stat) + 1:].split("_", 1)
                out.setdefault(feature if obj == "Image" else f"Mean_{obj}_{feature}", {})[stat] = float(value)
    return out


def test_plate_screen_pipeline_ends_with_statistics_of_rundlmodel_objects(cp_run):
    rows, experiment = cp_run
    assert len(rows) == 24
    for key in ("Zfactor_Image_Count_Nuclei", "Vfactor_Nuclei_Intensity_MeanIntensity_GFP",
                "EC50_Cytoplasm_Intensity_MeanIntensity_GFP", "OneTailedZfactor_Cells_AreaShape_Area"):
        assert math.isfinite(float(experiment[key]))


def test_statistics_match_cellprofilers_calculatestatistics(cp_run):
    """Z' and V to 1e-6 relative on every feature CellProfiler scores; one-tailed Z' where the
    negative controls have the lower mean (docs/screen.md: CellProfiler's slip otherwise);
    CellProfiler's stand-in values (-2999999, -5999999, -100000) are ours NaN with the reason."""
    rows, experiment = cp_run
    cp = _cp_statistics(experiment)
    columns = [c for c in cp if c in rows[0]]
    # ExportToSpreadsheet writes no per-image mean of the object numbers; every other feature is there
    assert set(cp) - set(columns) == {f"Mean_{o}_Number_Object_Number" for o in ("Cells", "Cytoplasm", "Nuclei")}
    assert len(columns) > 100
    ours = {s.readout: s for s in screen.screen(rows, columns, controls="Metadata_SBS_Controls", doses="Metadata_SBS_Doses")}
    compared = {"Zfactor": 0, "Vfactor": 0, "OneTailedZfactor": 0}
    sentinels = {"Zfactor": -2999999.0, "Vfactor": -5999999.0, "OneTailedZfactor": -100000.0}
    for col in columns:
        s = ours[col]
        rising = np.mean(s.negative) <= np.mean(s.positive)
        for stat, mine in (("Zfactor", s.z), ("Vfactor", s.v), ("OneTailedZfactor", s.one_tailed_z)):
            theirs = cp[col][stat]
            if theirs == sentinels[stat]:
                assert math.isnan(mine.value) and mine.note, (col, stat)
                continue
            assert not math.isnan(mine.value), (col, stat, mine.note)
            if stat == "OneTailedZfactor" and not rising:
                continue
            assert mine.value == pytest.approx(theirs, rel=1e-6, abs=1e-12), (col, stat)
            compared[stat] += 1
    assert compared["Zfactor"] > 100 and compared["Vfactor"] > 100 and compared["OneTailedZfactor"] > 30
    # EC50: the same curve fitted another way (docs/screen.md); where ours is a clean fit of a clear
    # response, CellProfiler's Nelder-Mead lands on the same EC50 within its tolerance
    clean = [c for c in columns if ours[c].fit is not None and not ours[c].ec50.note and ours[c].fit.p_flat < 0.01]
    close = [c for c in clean if ours[c].ec50.value == pytest.approx(cp[c]["EC50"], rel=1e-3)]
    assert len(clean) > 20 and len(close) >= 0.9 * len(clean)
