"""Numbers a package or a user's files supply, checked before they size memory or decide objects
(issue 25, point 5): finetune labels read exactly, a linear macro tokenizer with a size cap,
macro histogram bins, StarDist and Cellpose thresholds."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from ruyaml import YAML

import dlmodel
from conftest import ROOT
from dlmodel.errors import SpecError
from dlmodel.families import deepimagej
from dlmodel.training import read_pair

FIXTURES = ROOT / "tests" / "fixtures"
MACROS = FIXTURES / "deepimagej_macros"


def test_finetune_labels_are_read_exactly(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((8, 8), np.float32))
    lab = np.zeros((8, 8), np.int64)
    lab[0:3, 0:3] = 1
    lab[5:8, 5:8] = 2**32 + 1  # wraps to 1 in a 32-bit cast: the two objects would become one
    lab[0:3, 5:8] = 2**40  # 0 in a 32-bit cast: an object would vanish into background
    np.save(tmp_path / "lab.npy", lab)
    pair = read_pair(tmp_path / "img.tif", tmp_path / "lab.npy", 1)
    assert pair.labels.dtype == np.int32 and len(np.unique(pair.labels)) == 4
    assert (pair.labels[5:8, 5:8] != pair.labels[0:3, 0:3]).all() and (pair.labels[0:3, 5:8] > 0).all()
    np.save(tmp_path / "neg.npy", -lab)
    with pytest.raises(dlmodel.InputError, match="neg.npy have negative numbers"):
        read_pair(tmp_path / "img.tif", tmp_path / "neg.npy", 1)


def test_the_macro_tokenizer_is_linear_and_macros_are_capped(tmp_path, monkeypatch):
    times = []
    for n in (50_000, 350_000):  # 150 KB took 80 s on main, 1 MB would take half an hour
        text = "/* " * n
        t0 = time.perf_counter()
        assert deepimagej.recognise(text) == (None, {})
        times.append(time.perf_counter() - t0)
    assert times[1] < 2.0, times
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "big.ijm").write_text("// x\n" * 300_000)
    with pytest.raises(SpecError, match=r"deepImageJ macro big.ijm is 1500000 bytes, more than the limit of 1048576"):
        deepimagej.read_macro(pkg, "big.ijm")
    monkeypatch.setenv("DLMODEL_MAX_MACRO_BYTES", str(2 << 20))
    assert deepimagej.read_macro(pkg, "big.ijm").startswith("// x")


@pytest.mark.parametrize("old, new, message", [
    ("nBins = 256", "nBins = 2e7", "the macro's bins is 20000000.0; it must be a whole number from 2 to 65536"),
    ("nBins = 256", "nBins = 1e999", "the macro's bins is inf"),
    ("nBins = 256", "nBins = 1", "the macro's bins is 1.0"),
])
def test_macro_numbers_are_range_checked(old, new, message):
    text = (MACROS / "PercentileNormalization.ijm").read_text()
    assert old in text and deepimagej.recognise(text)[0] == "percentile_normalization"
    with pytest.raises(SpecError) as err:
        deepimagej.step_from_text("PercentileNormalization.ijm", "preprocessing", text.replace(old, new))
    assert str(err.value).startswith("deepImageJ macro PercentileNormalization.ijm: ") and message in str(err.value)


def _stardist_with(tmp_path: Path, thresholds: dict) -> Path:
    pkg = tmp_path / "pkg"
    with __import__("zipfile").ZipFile(FIXTURES / "stardist2d_tiny" / "stardist2d_tiny.zip") as z:
        z.extractall(pkg)
    rdf = next(p for p in (pkg / "rdf.yaml", pkg / "bioimageio.yaml") if p.exists())
    yaml = YAML(typ="safe", pure=True)
    data = yaml.load(rdf.read_text())
    data["config"]["stardist"]["thresholds"] = thresholds
    with open(rdf, "w") as f:
        yaml.dump(data, f)
    return pkg


@pytest.mark.parametrize("thresholds, message", [
    ({"prob": -1, "nms": 0.3}, "config.stardist.thresholds.prob is -1; it must be a number from 0 to 1"),
    ({"prob": 0.5, "nms": 2}, "config.stardist.thresholds.nms is 2; it must be a number from 0 to 1"),
    ({"prob": "high", "nms": 0.3}, "config.stardist.thresholds.prob is 'high'"),
    ({"nms": 0.3}, "config.stardist.thresholds.prob is None"),
])
def test_stardist_thresholds_from_a_package_are_checked(tmp_path, thresholds, message):
    pkg = _stardist_with(tmp_path, thresholds)
    with pytest.raises(SpecError) as err:
        dlmodel.load(pkg)
    assert message in str(err.value) and "\n" not in str(err.value)
    r = subprocess.run([sys.executable, "-m", "dlmodel.cli", "info", pkg], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_family_thresholds_given_by_hand_are_checked():
    from dlmodel.families import cellpose, stardist

    prob = np.zeros((16, 16), np.float32)
    dist = np.ones((16, 16, 8), np.float32)
    with pytest.raises(SpecError, match="the StarDist overlap \\(NMS\\) threshold is 2"):
        stardist._labels(prob, dist, {"prob_threshold": 0.5, "nms_threshold": 2})
    flows = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(SpecError, match="the Cellpose flow threshold is 'x'"):
        cellpose._masks(flows, prob, {"flow_threshold": "x"})
    with pytest.raises(SpecError, match="the Cellpose cell probability threshold is nan"):
        cellpose._masks(flows, prob, {"cellprob_threshold": float("nan")})
