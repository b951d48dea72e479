"""deepImageJ's macros: recognition of the real macro files and their numpy equivalents, checked
against numbers computed by hand from ImageJ's semantics and against numbers ImageJ produced.

The macro files are copies from deepimagej/imagej-macros (tests/fixtures/deepimagej_macros,
README there). Numbers marked "ImageJ 1.53t" came from ImageJ 1.x running the real macro on the
same input, via benchmarks/deepimagej_macros_check.py (its ImageJ helper); that script compares
many more inputs (docs/deepimagej-macros.md).
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from dlmodel.errors import DLModelError, InputError, SpecError
from dlmodel.families import deepimagej as dij
from dlmodel.families.deepimagej import MacroStep, macro_steps, recognise

MACROS = Path(__file__).parent / "fixtures" / "deepimagej_macros"


def _text(name):
    return (MACROS / name).read_text(encoding="utf-8")


def _step(name, stage="preprocess", text=None):
    return dij.step_from_text(name, stage, _text(name) if text is None else text)


# the 3x4 float32 input of the ImageJ reference numbers below
RAMP = (np.arange(12, dtype=np.float32).reshape(3, 4) * np.float32(1.37) + np.float32(0.11)).astype(np.float32)


# ---- recognition of the real macros ----


@pytest.mark.parametrize("name, kind, params", [
    ("per_sample_scale_range.ijm", "per_sample_scale_range",
     {"min_percentile": 1.0, "max_percentile": 99.8, "bins": 256, "rgb_branch": True}),
    ("history/percentile_b3575b3.ijm", "per_sample_scale_range",
     {"min_percentile": 1.0, "max_percentile": 99.8, "min_target": 0.01, "max_target": 0.998, "rgb_branch": False}),
    ("zero_mean_unit_variance.ijm", "zero_mean_unit_variance", {}),
    ("fixed_zero_mean_unit_variance.ijm", "fixed_zero_mean_unit_variance", {"mean": 0.23325787, "std": 0.15511274}),
    ("scale_linear.ijm", "scale_linear", {"gain": 1.0, "offset": 0.0}),
    ("binarize.ijm", "binarize", {"threshold": 0.5, "foreground": 1}),
    ("history/binarize_9c65877.ijm", "binarize", {"threshold": 0.5, "foreground": 255}),
    ("MeanNormalization.ijm", "min_max_fixed_zero_mean_unit_variance", {"mean": 0.23325787, "std": 0.15511274}),
    ("history/fixed_zero_mean_unit_variance_026a71e.ijm", "min_max_fixed_zero_mean_unit_variance", {"mean": 0.23325787}),
    ("PercentileNormalization.ijm", "percentile_normalization", {"min_target": 0.01, "max_target": 0.998, "bins": 256}),
    ("Contours2InstanceSegmentation.ijm", "contours_to_instances",
     {"threshold": 0.5, "upper": 1.0, "dynamic": 1, "connectivity": 4, "min_size": 10}),
    ("StarDist2D_Post-processing.ijm", "stardist_2d",
     {"grid": 2, "prob_threshold": 0.7, "nms_threshold": 0.2, "exclude_boundary": 2}),
])
def test_real_macros_recognised(name, kind, params):
    found, got = recognise(_text(name))
    assert found == kind
    for key, value in params.items():
        assert got[key] == pytest.approx(value) if isinstance(value, float) else got[key] == value


def test_step_fields_and_summary():
    step = _step("per_sample_scale_range.ijm")
    assert (step.kind, step.equivalent_op, step.makes_objects, step.stage) == (
        "per_sample_scale_range", "scale_range", False, "preprocess")
    assert step.summary().startswith("per_sample_scale_range.ijm: percentiles 1-99.8 from a 256-bin histogram")
    assert _step("Contours2InstanceSegmentation.ijm", "postprocess").makes_objects
    assert _step("StarDist2D_Post-processing.ijm", "postprocess").makes_objects
    assert _step("fixed_zero_mean_unit_variance.ijm").equivalent_op == "fixed_zero_mean_unit_variance"
    assert _step("binarize.ijm").equivalent_op == "binarize"
    for name in ["zero_mean_unit_variance.ijm", "fixed_zero_mean_unit_variance.ijm", "scale_linear.ijm", "binarize.ijm",
                 "MeanNormalization.ijm", "PercentileNormalization.ijm", "Contours2InstanceSegmentation.ijm",
                 "StarDist2D_Post-processing.ijm"]:
        line = _step(name).summary()
        assert line.startswith(name + ": ") and "\n" not in line
    assert "0.2333" in _step("fixed_zero_mean_unit_variance.ijm").summary()


def test_recognition_survives_comment_and_whitespace_edits():
    text = _text("per_sample_scale_range.ijm")
    code = "\n".join(line.split("//")[0].rstrip() for line in text.splitlines())  # no comments
    edited = "/* my lab's copy */\n" + code.replace("\t", "    ").replace(";\n", "\n\n").replace("(", " ( ")
    edited = edited.replace('print("and max_percentile: " + max_percentile);', 'print("max: " + max_percentile);')
    assert recognise(edited)[0] == "per_sample_scale_range"
    zmuv = ('run("32-bit") ;\n// stats\ngetStatistics(_,mean,min,max,std,_)\n'
            'run("Subtract...","value="+mean)\nrun("Divide...", "value="+std);')
    assert recognise(zmuv) == ("zero_mean_unit_variance", {})


def test_edited_percentiles_are_read_from_the_text():
    text = _text("per_sample_scale_range.ijm").replace("min_percentile = 1;", "min_percentile = 3;")
    text = text.replace("max_percentile = 99.8;", "max_percentile = 97.5;").replace("nBins = 256;", "nBins = 128;")
    kind, p = recognise(text)
    assert kind == "per_sample_scale_range"
    assert (p["min_percentile"], p["max_percentile"], p["bins"]) == (3.0, 97.5, 128)
    step = dij.step_from_text("per_sample_scale_range.ijm", "preprocess", text)
    assert "percentiles 3-97.5 from a 128-bin histogram" in step.summary()


def test_edited_fixed_values_are_read_from_the_text():
    text = _text("fixed_zero_mean_unit_variance.ijm").replace("0.23325787", "-12.5").replace("0.15511274", "3")
    assert recognise(text) == ("fixed_zero_mean_unit_variance", {"mean": -12.5, "std": 3.0})


@pytest.mark.parametrize("extra", [
    'run("Gaussian Blur...", "sigma=2");',
    'run("Invert");',
    'setMinAndMax(0, 1); run("8-bit");',
])
def test_a_macro_that_does_more_is_not_recognised(extra):
    text = _text("per_sample_scale_range.ijm") + "\n" + extra
    assert recognise(text) == (None, {})
    assert recognise(extra + "\n" + _text("zero_mean_unit_variance.ijm")) == (None, {})


def test_other_changes_are_not_recognised():
    # without " stack" the macro would normalise only the first slice: another macro
    assert recognise(_text("per_sample_scale_range.ijm").replace('+" stack"', '+""'))[0] is None
    # a dynamic set through another variable is not a number in the text
    assert recognise(_text("Contours2InstanceSegmentation.ijm").replace("dynamic=1", "dynamic=2"))[1]["dynamic"] == 2
    assert recognise(_text("binarize.ijm").replace("optimalThreshold = 0.5;", "optimalThreshold = t;"))[0] is None
    assert recognise(_text("8bitBinarize.ijm")) == (None, {})
    assert recognise("") == (None, {})


def test_unrecognised_macro_is_reported_not_skipped(tmp_path):
    (tmp_path / "my_macro.ijm").write_text('run("Median...", "radius=2");\n')
    config = {"deepimagej": {"prediction": {"preprocess": [{"spec": "ij.IJ::runMacroFile", "kwargs": "my_macro.ijm"}]}}}
    (step,) = macro_steps(config, tmp_path)
    assert (step.file, step.kind, step.makes_objects, step.equivalent_op) == ("my_macro.ijm", None, False, None)
    assert step.summary() == "my_macro.ijm: not recognised; dlmodel does not run it"
    with pytest.raises(SpecError, match="my_macro.ijm: not recognised"):
        step.apply(np.zeros((4, 4), np.float32), "yx")


# ---- the rdf's list ----


def test_macro_steps_in_order(tmp_path):
    for name in ["per_sample_scale_range.ijm", "Contours2InstanceSegmentation.ijm"]:
        (tmp_path / name).write_text(_text(name))
    config = {"deepimagej": {"prediction": {
        "postprocess": [{"spec": None}, {"spec": "ij.IJ::runMacroFile", "kwargs": "Contours2InstanceSegmentation.ijm"},
                        {"spec": "de.csbdresden.stardist.StarDist2D"}],
        "preprocess": [{"kwargs": "per_sample_scale_range.ijm", "spec": "ij.IJ::runMacroFile"}],
    }}}
    steps = macro_steps(config, tmp_path)
    assert [(s.stage, s.kind) for s in steps] == [
        ("preprocess", "per_sample_scale_range"), ("postprocess", "contours_to_instances"), ("postprocess", None)]
    assert steps[2].file == "de.csbdresden.stardist.StarDist2D"
    assert "not recognised" in steps[2].summary()
    assert all(isinstance(s, MacroStep) for s in steps)


def test_macro_steps_none():
    assert macro_steps({}, Path(".")) == ()
    assert macro_steps({"deepimagej": {"prediction": {"preprocess": [{"spec": None}], "postprocess": [{"spec": None}]}}},
                       Path(".")) == ()


def test_missing_macro_file(tmp_path):
    config = {"deepimagej": {"prediction": {"preprocess": [{"spec": "ij.IJ::runMacroFile", "kwargs": "gone.ijm"}]}}}
    with pytest.raises(SpecError, match="gone.ijm") as err:
        macro_steps(config, tmp_path)
    assert "\n" not in str(err.value)
    config["deepimagej"]["prediction"]["preprocess"][0]["kwargs"] = "../outside.ijm"
    with pytest.raises(SpecError, match="outside.ijm"):
        macro_steps(config, tmp_path)


# ---- ImageJ's number formatting ----


@pytest.mark.parametrize("x, text", [
    (0.23325787, "0.2333"), (0.15511274, "0.1551"), (255.0, "255"), (-3.0, "-3"), (1.5, "1.5"),
    (0.012345678, "0.01235"), (12345.678901, "12345.6789"), (1234567.891, "1234567.89"), (1e-20, "1.0000E-20"),
    (98.00000000000001, "98"), (3e9, "3.0000E9"), (0.00012344, "0.0001234"), (988.28125, "988.2812"),
    (0.00000123456, "1.2346E-6"),
])
def test_imagej_number_strings(x, text):
    # Interpreter.toString: IJ.d2s(x, 4, 9) less trailing zeros; integers as integers. Each text
    # is what ImageJ 1.53t's print("v=" + x) wrote (benchmarks/deepimagej_macros_check.py)
    assert dij.ij_str(x) == text


# ---- the numpy equivalents, by hand ----


def test_per_sample_scale_range_by_hand():
    # 8-bit 0..99, each once: values[i] = i; cumulative fraction (i+1)/100; the lower search
    # starts at bin 1: normCumHist[1] = 0.02 >= 0.01 -> mi = 1; the upper goes on to the first
    # bin with >= 0.998 -> bin 99; diff = 98 + 1e-20 passed as "98"
    x = np.arange(100, dtype=np.uint8).reshape(10, 10)
    out = _step("per_sample_scale_range.ijm").apply(x, "yx")
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, (x.astype(np.float32) + np.float32(-1)) * np.float32(1 / 98))


def test_per_sample_scale_range_edited_percentiles_by_hand():
    # min 5 % -> first bin from 1 with (i+1)/100 >= 0.05: bin 4; max 90 % -> bin 89
    text = _text("per_sample_scale_range.ijm").replace("min_percentile = 1;", "min_percentile = 5;")
    text = text.replace("max_percentile = 99.8;", "max_percentile = 90;")
    x = np.arange(100, dtype=np.uint8).reshape(1, 10, 10, 1)
    out = dij.step_from_text("p.ijm", "preprocess", text).apply(x, "byxc")
    np.testing.assert_array_equal(out, (x.astype(np.float32) + np.float32(-4)) * np.float32(1 / 85))


def test_per_sample_scale_range_ignores_the_rdf_kwargs_and_uses_bin_edges():
    # 32-bit: 256 bins over [0, 1000]; the bins' lower edges, not numpy's percentiles
    x = np.linspace(0, 1000, 2001, dtype=np.float32).reshape(1, 2001)
    out = _step("per_sample_scale_range.ijm").apply(x, "yx")
    inc = 1000 / 256
    edges = np.cumsum([0.0] + [inc] * 255)
    # 1 % of 2001 values lies in bin 2 (cum 24/2001); 99.8 % in bin 255
    mi, ma = edges[2], edges[255]
    expected = (x + np.float32(-float(dij.ij_str(mi)))) * np.float32(1 / float(dij.ij_str(ma - mi + 1e-20)))
    np.testing.assert_array_equal(out, expected)
    assert float(dij.ij_str(mi)) == 7.8125 and dij.ij_str(ma - mi) == "988.2812"  # ImageJ passes 4 decimals


def test_per_sample_scale_range_takes_the_first_slices_histogram_of_a_stack():
    # getDimensions' slices = 1 for a 3-channel image: only channel 1's histogram; applied to all
    x = np.stack([np.arange(100), np.arange(100) + 1000, np.arange(100) * 3]).astype(np.uint16).reshape(3, 10, 10)
    out = _step("per_sample_scale_range.ijm").apply(x, "cyx")
    alone = _step("per_sample_scale_range.ijm").apply(x[0], "yx")
    np.testing.assert_array_equal(out[0], alone)
    assert out[1].min() > 9  # channel 2 scaled with channel 1's range


def test_zero_mean_unit_variance_by_hand():
    x = np.array([[0, 1, 2, 3]], np.uint8)
    # mean 1.5; sample std sqrt(5/3) = 1.2909944 passed as "1.291"
    out = _step("zero_mean_unit_variance.ijm").apply(x, "yx")
    np.testing.assert_array_equal(out, (x.astype(np.float32) + np.float32(-1.5)) * np.float32(1 / 1.291))


def test_zero_mean_unit_variance_changes_only_the_first_slice_of_a_stack():
    # run("Subtract...") without "stack" in a (non-composite) stack: ImageJ changes slice 1 only
    x = np.arange(2 * 2 * 4, dtype=np.float32).reshape(2, 2, 4)
    out = _step("zero_mean_unit_variance.ijm").apply(x, "zyx")
    np.testing.assert_array_equal(out[1], x[1])
    np.testing.assert_array_equal(out[0], _step("zero_mean_unit_variance.ijm").apply(x[0], "yx"))
    # a composite image (composite=True) has every plane changed, with the first plane's numbers
    every = _step("zero_mean_unit_variance.ijm").apply(x, "cyx", composite=True)
    np.testing.assert_array_equal(every[1], (x[1] + np.float32(-3.5)) * np.float32(1 / 2.4495))


def test_fixed_zero_mean_unit_variance_uses_the_numbers_imagej_passes():
    x = RAMP
    out = _step("fixed_zero_mean_unit_variance.ijm").apply(x, "yx")
    np.testing.assert_array_equal(out, (x + np.float32(-0.2333)) * np.float32(1 / 0.1551))
    assert not np.array_equal(out, ((x - 0.23325787) / 0.15511274).astype(np.float32))


def test_scale_linear_edited():
    text = _text("scale_linear.ijm").replace("gain = 1;", "gain = 2.718281828;").replace("offset = 0;", "offset = -0.5;")
    out = dij.step_from_text("s.ijm", "preprocess", text).apply(RAMP, "yx")
    np.testing.assert_array_equal(out, RAMP * np.float32(2.7183) + np.float32(-0.5))


def test_binarize_by_hand():
    # threshold <= v <= the image's maximum (inclusive both ends), then / 255
    p = np.array([[0.2, 0.5, 0.49999997, 0.9], [1.3, 0.0, 0.75, 0.5000001]], np.float32)
    out = _step("binarize.ijm", "postprocess").apply(p, "yx")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 0, 1], [1, 0, 1, 1]])
    old = _step("history/binarize_9c65877.ijm", "postprocess").apply(p, "yx")
    np.testing.assert_array_equal(old, [[0, 255, 0, 255], [255, 0, 255, 255]])


def test_binarize_stack_uses_the_first_planes_maximum():
    p = np.array([[[0.6, 0.7]], [[0.65, 0.95]]], np.float32)  # plane 1's max is 0.7
    out = _step("binarize.ijm", "postprocess").apply(p, "zyx")
    # Convert to Mask on every plane, then Divide (no "stack") on plane 1 only
    np.testing.assert_array_equal(out, [[[1, 1]], [[255, 0]]])


# ---- against ImageJ's own numbers ----

# ImageJ 1.53t (Debian's imagej 1.53t-1) running the real macro files on RAMP, via
# benchmarks/deepimagej_macros_check.py's ImageJ helper (values as float32)
IMAGEJ_RAMP = {
    "zero_mean_unit_variance.ijm": [
        [-1.5254271030426025, -1.2480766773223877, -0.9707263708114624, -0.6933758854866028],
        [-0.4160255491733551, -0.13867518305778503, 0.13867518305778503, 0.4160255491733551],
        [0.6933758854866028, 0.9707262516021729, 1.2480766773223877, 1.525426983833313],
    ],
    "fixed_zero_mean_unit_variance.ijm": [
        [-0.7949709892272949, 8.038040161132812, 16.871049880981445, 25.704063415527344],
        [34.537071228027344, 43.37008285522461, 52.20309066772461, 61.036102294921875],
        [69.86911010742188, 78.70211791992188, 87.5351333618164, 96.3681411743164],
    ],
    "per_sample_scale_range.ijm": [
        [-0.003939193207770586, 0.08768550306558609, 0.17931018769741058, 0.27093490958213806],
        [0.36255958676338196, 0.45418429374694824, 0.5458090305328369, 0.6374337077140808],
        [0.7290583848953247, 0.8206830620765686, 0.9123077392578125, 1.0039324760437012],
    ],
    "MeanNormalization.ijm": [
        [-1.5041908025741577, -0.9180586934089661, -0.3319265842437744, 0.25420552492141724],
        [0.8403376340866089, 1.4264698028564453, 2.012601852416992, 2.598734140396118],
        [3.184866189956665, 3.7709977626800537, 4.35713005065918, 4.943262577056885],
    ],
    "PercentileNormalization.ijm": [
        [-0.09913451969623566, 0.0011788689298555255, 0.1014922484755516, 0.20180565118789673],
        [0.30211904644966125, 0.4024324119091034, 0.5027458071708679, 0.6030592322349548],
        [0.703372597694397, 0.8036859631538391, 0.903999388217926, 1.0043127536773682],
    ],
}


@pytest.mark.parametrize("name", sorted(IMAGEJ_RAMP))
def test_against_imagej_numbers(name):
    out = _step(name).apply(RAMP, "yx")
    np.testing.assert_array_equal(out, np.array(IMAGEJ_RAMP[name], np.float32))


def test_bicubic_upsampling_against_imagej():
    yy, xx = np.mgrid[:5, :6]
    s = np.stack([np.sin(yy * 0.9 + xx * 0.4), (yy - 2.0) ** 2 + xx, xx * 1.5 - yy, np.cos(xx * yy * 0.3)]).astype(np.float32)
    prob, dist = dij.stardist_inputs(s, 2.0)
    assert prob.shape == (10, 12) and dist.shape == (10, 12, 3)
    # ImageJ 1.53t, run("Scale...", "x=2 y=2 ... interpolation=Bicubic average process create")
    np.testing.assert_array_equal(prob, np.array(IMAGEJ_SCORES, np.float32))
    np.testing.assert_array_equal(dist[3, :, 0], np.array(IMAGEJ_DIST1_ROW3, np.float32))


# ImageJ 1.53t: the StarDist macro's "scores" window (all but its Fiji plugin call run)
IMAGEJ_SCORES = [
    [
        0.0, 0.09735458344221115, 0.29206374287605286, 0.47140276432037354,
        0.6353716254234314, 0.7710268497467041, 0.8783683180809021, 0.9489226937294006,
        0.9826899766921997, 0.9770045280456543, 0.931866466999054, 0.9093877077102661,
    ],
    [
        0.19583173096179962, 0.2801121175289154, 0.44867292046546936, 0.596198320388794,
        0.7226882576942444, 0.8181578516960144, 0.8826070427894592, 0.9109482765197754,
        0.9031815528869629, 0.8599200248718262, 0.7811635732650757, 0.7419428825378418,
    ],
    [
        0.5874952077865601, 0.6456272006034851, 0.76189124584198, 0.8457893133163452,
        0.8973215222358704, 0.9124199151992798, 0.8910844922065735, 0.8349994421005249,
        0.7441648244857788, 0.6257509589195251, 0.4797578752040863, 0.4070533514022827,
    ],
    [
        0.8309571146965027, 0.854416012763977, 0.9013338088989258, 0.990889847278595,
        0.9625413417816162, 0.8967612981796265, 0.7935495972633362, 0.6610537767410278,
        0.49927380681037903, 0.295344740152359, 0.1160966008901596, 0.026831023395061493,
    ],
    [
        0.9262174367904663, 0.9064785242080688, 0.8670007586479187, 0.8630077242851257,
        0.7474159598350525, 0.6046051979064941, 0.43457552790641785, 0.2507488429546356,
        0.05312517285346985, -0.13129863142967224, -0.3098202645778656, -0.3987240493297577,
    ],
    [
        0.8372306823730469, 0.7821148633956909, 0.6718832850456238, 0.583946168422699,
        0.41123348474502563, 0.2256980985403061, 0.027339965105056763, -0.16818271577358246,
        -0.3608699440956116, -0.49274155497550964, -0.6368299722671509, -0.7085860371589661,
    ],
    [
        0.5639967918395996, 0.4813250005245209, 0.3159814178943634, 0.15370513498783112,
        -0.04600601643323898, -0.23996007442474365, -0.4281570315361023, -0.5957408547401428,
        -0.7427115440368652, -0.7889840006828308, -0.8649325966835022, -0.9027550220489502,
    ],
    [
        0.20990478992462158, 0.11792481690645218, -0.06603514403104782, -0.24375833570957184,
        -0.4152447283267975, -0.566957414150238, -0.6988962888717651, -0.8006463646888733,
        -0.872207522392273, -0.907930850982666, -0.9078163504600525, -0.9077593088150024,
    ],
    [
        -0.2250453531742096, -0.30808570981025696, -0.4741663634777069, -0.6182543635368347,
        -0.7403497099876404, -0.8308143019676208, -0.8896480798721313, -0.9122068881988525,
        -0.8984906077384949, -0.8495820760726929, -0.7654812335968018, -0.7235990166664124,
    ],
    [
        -0.44165053963661194, -0.5202389359474182, -0.6774157285690308, -0.8047534227371216,
        -0.9022520184516907, -0.962215006351471, -0.984642505645752, -0.9677640199661255,
        -0.9115796089172363, -0.8205243945121765, -0.6945983171463013, -0.6318871378898621,
    ],
]
IMAGEJ_DIST1_ROW3 = [0.75, 1.0, 1.5, 1.8125, 2.3125, 2.8125, 3.3125, 3.8125, 4.3125, 5.0, 5.5, 5.749000072479248]


def _contour_output():
    yy, xx = np.mgrid[:24, :32].astype(np.float64)
    d1, d2, d3 = np.hypot(yy - 11, xx - 9), np.hypot(yy - 12, xx - 18.5), np.hypot(yy - 6, xx - 27)
    inside = (d1 < 6.5) | (d2 < 6) | (d3 < 3.5)
    edge = (np.abs(d1 - 6.5) < 0.8) | (np.abs(d2 - 6) < 0.8) | (np.abs(d3 - 3.5) < 0.8)
    fg = np.where(inside & ~edge, 0.9, 0.05)
    ct = np.where(edge, 0.7, 0.05)
    return np.stack([1 - fg - ct, fg, ct]).astype(np.float32)


def test_contours_to_instances_against_imagej():
    c = _contour_output()
    labels = _step("Contours2InstanceSegmentation.ijm", "postprocess").apply(c, "cyx")
    assert labels.dtype == np.int32 and labels.shape == (24, 32)
    sizes = sorted(np.bincount(labels.ravel())[1:].tolist())
    assert sizes == IMAGEJ_CONTOUR_SIZES  # ImageJ 1.53t + MorphoLibJ 1.6.1
    assert labels.max() == len(sizes)  # numbered 1..N


IMAGEJ_CONTOUR_SIZES = [21, 65, 86]  # ImageJ 1.53t + MorphoLibJ 1.6.1: object sizes


def test_contours_to_instances_axes_and_batch():
    c = _contour_output()
    x = np.stack([np.moveaxis(c, 0, -1), np.moveaxis(c, 0, -1)[:, ::-1]])  # byxc
    labels = _step("Contours2InstanceSegmentation.ijm", "postprocess").apply(x, "byxc")
    assert labels.shape == (2, 24, 32)
    one = _step("Contours2InstanceSegmentation.ijm", "postprocess").apply(c, "cyx")
    np.testing.assert_array_equal(labels[0], one)
    with pytest.raises(InputError, match="3 channels"):
        _step("Contours2InstanceSegmentation.ijm", "postprocess").apply(c[:2], "cyx")


def test_distance_transform_watershed_splits_two_touching_squares():
    fg = np.zeros((12, 22), bool)
    fg[2:10, 2:10] = True
    fg[2:10, 11:19] = True
    fg[5:7, 10] = True  # a thin bridge
    labels = dij.distance_transform_watershed(fg, 1, 4)
    assert len(np.unique(labels[labels > 0])) == 2
    assert labels[5, 5] != labels[5, 15]


def test_stardist_macro_without_stardist(monkeypatch):
    monkeypatch.setitem(sys.modules, "stardist", None)  # import stardist -> ImportError
    x = np.zeros((1, 8, 8, 5), np.float32)
    with pytest.raises(DLModelError, match=r"pip install 'dlmodel\[stardist\]'") as err:
        _step("StarDist2D_Post-processing.ijm", "postprocess").apply(x, "byxc")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("stardist") is None, reason="needs stardist")
def test_stardist_macro_with_stardist():
    yy, xx = np.mgrid[:20, :20] * 2.0
    prob = np.clip(1 - ((yy - 20) ** 2 + (xx - 20) ** 2) / 64.0, 0, 1)
    dist = np.full((20, 20, 16), 7.0) * (prob > 0)[..., None]
    x = np.concatenate([prob[..., None], dist], axis=-1)[None].astype(np.float32)
    labels = _step("StarDist2D_Post-processing.ijm", "postprocess").apply(x, "byxc")
    assert labels.shape == (1, 40, 40) and labels.dtype == np.int32
    assert labels.max() == 1


# ---- never mutate inputs ----


@pytest.mark.parametrize("name, stage, x, axes", [
    ("per_sample_scale_range.ijm", "preprocess", np.arange(60, dtype=np.uint16).reshape(3, 4, 5), "zyx"),
    ("per_sample_scale_range.ijm", "preprocess", RAMP, "yx"),
    ("zero_mean_unit_variance.ijm", "preprocess", RAMP[None], "cyx"),
    ("fixed_zero_mean_unit_variance.ijm", "preprocess", RAMP, "yx"),
    ("scale_linear.ijm", "preprocess", RAMP, "yx"),
    ("MeanNormalization.ijm", "preprocess", RAMP, "yx"),
    ("PercentileNormalization.ijm", "preprocess", RAMP, "yx"),
    ("binarize.ijm", "postprocess", RAMP / 20, "yx"),
    ("Contours2InstanceSegmentation.ijm", "postprocess", None, "cyx"),
])
def test_inputs_never_mutated(name, stage, x, axes):
    x = _contour_output() if x is None else np.array(x)
    before = x.copy()
    out = _step(name, stage).apply(x, axes)
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(out, x)


def test_bad_axes():
    with pytest.raises(InputError, match="axes"):
        _step("zero_mean_unit_variance.ijm").apply(RAMP, "yxc")
    with pytest.raises(InputError, match="axes"):
        _step("zero_mean_unit_variance.ijm").apply(RAMP, "ab")


def test_module_examples():
    import doctest

    assert doctest.testmod(dij).failed == 0
