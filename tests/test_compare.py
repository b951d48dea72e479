"""dlmodel compare (issue 26 point 4): several models on the same images, their objects compared.

Real models on real images: the default nuclei model, the StarDist nuclei model and the shared
zoo U-Net on DSB 2018 validation images; zoo ids are served by a real HTTP server on 127.0.0.1.
Every number is checked against a reference computed here the way benchmarks/accuracy.py does
(``dlmodel.load(m).labels(m.predict(image))``, then ``dlmodel.instances``)."""
from __future__ import annotations

import csv
import functools
import html
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

import dlmodel
import zoo
from conftest import DSB_VAL, NUCLEI_MODEL, ROOT
from dlmodel import cli
from dlmodel.comparison import bootstrap_f1, model_label
from dlmodel.instances import f1_at_iou, matched_ious, pooled_f1

DEFAULT = ROOT / "models" / "nuclei_default"
STARDIST = ROOT / "models" / "stardist_nuclei"
THREE_D = ROOT / "models" / "nuclei3d_demo"
CAREAMICS = ROOT / "tests" / "fixtures" / "careamics_n2v_tiny" / "careamics_n2v_tiny.zip"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference_labels(source, images):
    """Objects as benchmarks/accuracy.py makes them."""
    m = dlmodel.load(source)
    return [m.labels(m.predict(tifffile.imread(p))) for p in images]


def brute_force_matches(pred, truth):
    """Matches at IoU > 0.5 object by object, with masks (independent of dlmodel.instances)."""
    ious = []
    for t in np.unique(truth[truth > 0]):
        t_mask = truth == t
        for p in np.unique(pred[t_mask & (pred > 0)]):
            p_mask = pred == p
            iou = (t_mask & p_mask).sum() / (t_mask | p_mask).sum()
            if iou > 0.5:
                ious.append(iou)
    return ious


@pytest.fixture(scope="module")
def val8(tmp_path_factory):
    """The first 8 validation images and their labels (256x256), copied to a temporary folder."""
    if not (DSB_VAL / "images").is_dir():
        pytest.skip("../shared/data/dsb2018_nuclei_val is not there")
    folder = tmp_path_factory.mktemp("val8")
    names = sorted(p.name for p in (DSB_VAL / "images").glob("*.tif"))[:8]
    for sub in ("images", "labels"):
        (folder / sub).mkdir()
        for name in names:
            shutil.copy(DSB_VAL / sub / name, folder / sub / name)
    return folder


def run_cli(*args):
    """`dlmodel compare` as a user runs it: its own process."""
    return subprocess.run([sys.executable, "-m", "dlmodel.cli", "compare", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "100"})


# --- with labels: the same numbers as the accuracy benchmark's code path ------------------------

@pytest.fixture(scope="module")
def labelled(val8, tmp_path_factory):
    if importlib.util.find_spec("stardist") is None:
        pytest.skip("the StarDist model's step needs the stardist extra")
    out = tmp_path_factory.mktemp("compare") / "out"
    done = run_cli(DEFAULT, STARDIST, val8 / "images", "--labels", val8 / "labels", "-o", out)
    return done, out


def test_labelled_scores_are_the_accuracy_benchmarks(labelled, val8):
    done, out = labelled
    assert done.returncode == 0, done.stderr
    rows = {r["model"]: r for r in read_csv(out / "compare.csv")}
    assert list(rows) == ["nuclei_default", "stardist_nuclei"]
    images = sorted((val8 / "images").glob("*.tif"))
    truths = [tifffile.imread(val8 / "labels" / p.name) for p in images]
    for source in (DEFAULT, STARDIST):
        preds = reference_labels(source, images)
        f1, tp, fp, fn = pooled_f1(zip(preds, truths))
        row = rows[source.name]
        assert (int(row["tp"]), int(row["fp"]), int(row["fn"])) == (tp, fp, fn)
        assert float(row["f1"]) == round(f1, 4)
        assert float(row["precision"]) == round(tp / (tp + fp), 4)
        assert float(row["recall"]) == round(tp / (tp + fn), 4)
        ious = [iou for p, t in zip(preds, truths) for iou in brute_force_matches(p, t)]
        assert len(ious) == tp
        assert float(row["mean_iou"]) == pytest.approx(np.mean(ious), abs=6e-5)
        counts = [(len(np.unique(p)) - 1, len(np.unique(t)) - 1) for p, t in zip(preds, truths)]
        assert float(row["count_error"]) == pytest.approx(np.mean([abs(a - b) for a, b in counts]), abs=6e-3)
        assert float(row["count_bias"]) == pytest.approx(np.mean([a - b for a, b in counts]), abs=6e-3)
        assert row["images"] == "8" and row["failed"] == "0" and row["error"] == ""
        assert 0 < float(row["seconds_per_image"]) < 60 and float(row["load_seconds"]) > 0
        assert float(row["f1_low"]) <= float(row["f1"]) <= float(row["f1_high"])
    per_image = read_csv(out / "compare_images.csv")
    assert len(per_image) == 16 and {r["model"] for r in per_image} == set(rows)


def test_labelled_terminal_table_and_report(labelled, val8):
    done, out = labelled
    lines = done.stdout.splitlines()
    table = lines[:3]
    assert table[0].split()[:3] == ["model", "F1", "precision"]
    assert all(len(line) <= 100 for line in table)
    rows = {r["model"]: r for r in read_csv(out / "compare.csv")}
    for line in table[1:]:
        label, f1 = line.split()[:2]
        assert f1 == f"{float(rows[label]['f1']):.3f}"
    best = max(rows.values(), key=lambda r: float(r["f1"]))
    assert any(line.startswith(f"Best F1 at IoU 0.5: {best['model']}") for line in lines)
    assert any(line.startswith("agreement nuclei_default vs stardist_nuclei: F1 ") for line in lines)
    assert str(out / "compare.html") in lines[-1]
    page = (out / "compare.html").read_text()
    figures = re.findall(r'<figure id="([^"]+)"[^>]*>.*?<img src="([^"]+)"', page)
    assert sorted(name for name, _ in figures) == sorted(p.name for p in (val8 / "images").glob("*.tif"))
    for name, src in figures:  # each overlay is a relative link to a PNG: annotations + 2 models side by side
        png = iio.imread(out / html.unescape(src))
        assert src == f"overlays/{Path(name).stem}.png"
        assert png.shape[1] >= 3 * 512 and png.shape[0] < 600  # 256x256 images shown at 512 px
    assert "<b>%s</b>" % best["model"] in page


# --- models that cannot run are rows; the others still run -------------------------------------

def test_models_that_cannot_run_are_rows_with_their_reason(val8, tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for p in sorted((val8 / "images").glob("*.tif"))[:3]:
        shutil.copy(p, images), shutil.copy(val8 / "labels" / p.name, labels)
    bad = tmp_path / "bad_rdf"
    bad.mkdir()
    (bad / "rdf.yaml").write_text("type: model\nformat_version: 0.5.3\nname: [unclosed\n")
    missing = tmp_path / "no_such_model"
    models = [missing, bad, THREE_D, DEFAULT]
    if importlib.util.find_spec("careamics") is None:  # a package whose network library is not installed
        models.insert(2, CAREAMICS)
    out = tmp_path / "out"
    code = cli.main(["compare", *map(str, models), str(images), "--labels", str(labels), "-o", str(out),
                     "--no-progress"])
    said = capsys.readouterr()
    assert code == 1  # something failed: as dlmodel predict
    rows = {r["model"]: r for r in read_csv(out / "compare.csv")}
    assert list(rows) == [model_label(m) for m in models]
    assert "no such file" in rows["no_such_model"]["error"] and str(missing) in rows["no_such_model"]["error"]
    assert "cannot read rdf" in rows["bad_rdf"]["error"]
    if CAREAMICS in models:
        assert "careamics" in rows["careamics_n2v_tiny"]["error"] and "not installed" in rows["careamics_n2v_tiny"]["error"]
    # the 3D model loads, and fails on each 2D image with one line naming it
    assert rows["nuclei3d_demo"]["failed"] == "3" and rows["nuclei3d_demo"]["images"] == "0"
    per_image = [r for r in read_csv(out / "compare_images.csv") if r["model"] == "nuclei3d_demo"]
    assert len(per_image) == 3 and all(r["image"] in r["error"] and "3D" in r["error"] for r in per_image)
    for row in rows.values():
        assert "\n" not in row["error"]
    # the default model ran on every image, with the benchmark's numbers
    paths = sorted(images.glob("*.tif"))
    f1, tp, fp, fn = pooled_f1(zip(reference_labels(DEFAULT, paths), [tifffile.imread(labels / p.name) for p in paths]))
    assert rows["nuclei_default"]["error"] == "" and rows["nuclei_default"]["images"] == "3"
    assert (int(rows["nuclei_default"]["tp"]), int(rows["nuclei_default"]["fp"])) == (tp, fp)
    # the terminal says why, one line per model; no traceback
    for label in ("no_such_model", "bad_rdf"):
        assert sum(line.startswith(f"{label}: cannot run here: ") for line in said.out.splitlines()) == 1
    assert "nuclei3d_demo: failed on all 3 images: " in said.out
    assert "Traceback" not in said.out + said.err
    # and the report, without the failing models' panels
    page = (out / "compare.html").read_text()
    assert page.count("cannot run here:") == len(models) - 2
    assert "nuclei3d_demo</b> failed on every image" in page
    assert iio.imread(out / "overlays" / f"{paths[0].stem}.png").shape[1] < 2.2 * 512


# --- without labels: agreement between models, images sorted by disagreement -------------------

def test_without_labels_pairwise_agreement_and_images_sorted_by_disagreement(val8, nuclei_model, tmp_path):
    images = sorted((val8 / "images").glob("*.tif"))
    out = tmp_path / "out"
    result = dlmodel.compare([DEFAULT, nuclei_model.parent], val8 / "images", out=out, progress=False)
    a, b = reference_labels(DEFAULT, images), reference_labels(nuclei_model.parent, images)
    pairs = [f1_at_iou(x, y) for x, y in zip(a, b)]
    expected = {p.name: 1 - (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0) for p, (tp, fp, fn) in zip(images, pairs)}
    order = sorted(expected, key=lambda n: (-expected[n], n))
    # the result, the html and compare_images.csv: most disagreement first
    assert [r.path.name for r in result.images] == order
    for r in result.images:
        assert r.disagreement == pytest.approx(expected[r.path.name])
    page = (out / "compare.html").read_text()
    assert re.findall(r'<figure id="([^"]+)"', page) == order
    shown = [float(d) for d in re.findall(r'data-disagreement="([0-9.]+)"', page)]
    assert shown == sorted(shown, reverse=True) and shown[0] > shown[-1]
    listed = [Path(r["image"]).name for r in read_csv(out / "compare_images.csv")]
    assert listed[::2] == order
    # pooled agreement, the same in both rows of compare.csv
    tp, fp, fn = np.sum(pairs, axis=0)
    rows = {r["model"]: r for r in read_csv(out / "compare.csv")}
    unet = model_label(nuclei_model.parent)
    assert float(rows["nuclei_default"][f"agreement_{unet}"]) == round(2 * tp / (2 * tp + fp + fn), 4)
    assert rows[unet]["agreement_nuclei_default"] == rows["nuclei_default"][f"agreement_{unet}"]
    assert rows["nuclei_default"]["f1"] == "" and rows["nuclei_default"]["objects_per_image"] != ""
    assert float(rows["nuclei_default"]["objects_per_image"]) == pytest.approx(
        np.mean([len(np.unique(x)) - 1 for x in a]), abs=6e-3)
    assert result.best is None and "no right answer" in result.verdict()
    assert "Images, most disagreement between the models first" in page


def test_zoo_ids_are_downloaded_once(val8, tmp_path, monkeypatch):
    www = tmp_path / "www"
    zoo.copy_package(DEFAULT, www / "zoo" / "nuclei-default")
    server = _CountingServer(www)
    monkeypatch.setenv("DLMODEL_ZOO_URL", f"{server.url}/zoo/{{id}}/bioimageio.yaml")
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    try:
        one = sorted((val8 / "images").glob("*.tif"))[:2]
        first = dlmodel.compare(["nuclei-default"], one, progress=False)
        weights = [p for p in server.paths if p.endswith(".onnx")]
        assert first.models[0].ran and first.models[0].images == 2 and len(weights) == 1
        server.paths.clear()
        again = dlmodel.compare(["nuclei-default"], one, progress=False)
        assert again.models[0].images == 2 and not [p for p in server.paths if p.endswith(".onnx")]
        assert [r.outcomes["nuclei-default"].objects for r in again.images] == \
               [r.outcomes["nuclei-default"].objects for r in first.images]
    finally:
        server.stop()


# --- bad input: one line naming the path, before any model runs ---------------------------------

class _CountingServer:
    """A static file server on 127.0.0.1 that records every path asked for."""

    def __init__(self, root: Path):
        paths = self.paths = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                paths.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def watched_model(tmp_path, monkeypatch):
    """A zoo id served from 127.0.0.1: any attempt to load it shows in ``server.paths``."""
    www = tmp_path / "www"
    zoo.copy_package(DEFAULT, www / "zoo" / "watched-model")
    server = _CountingServer(www)
    monkeypatch.setenv("DLMODEL_ZOO_URL", f"{server.url}/zoo/{{id}}/bioimageio.yaml")
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    yield server
    server.stop()


def _one_line_error(capsys, code, *names):
    said = capsys.readouterr()
    assert code == 2 and said.out == ""
    lines = said.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlmodel: error: "), said.err
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def test_bad_input_is_one_line_naming_the_path_before_any_model_runs(val8, tmp_path, watched_model, capsys):
    out = tmp_path / "out"

    def compare(images, *extra):
        return cli.main(["compare", "watched-model", str(images), *map(str, extra), "-o", str(out), "--no-progress"])

    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, compare(empty), empty)
    _one_line_error(capsys, compare(tmp_path / "nowhere"), tmp_path / "nowhere")
    # labels that do not pair with the images: a missing one, a left-over one, one of another size
    images, labels = tmp_path / "images", tmp_path / "labels"
    shutil.copytree(val8 / "images", images), shutil.copytree(val8 / "labels", labels)
    first = sorted(labels.glob("*.tif"))[0]
    first.rename(tmp_path / first.name)
    _one_line_error(capsys, compare(images, "--labels", labels), images / first.name)
    (tmp_path / first.name).rename(first)
    shutil.copy(first, labels / "stray.tif")
    _one_line_error(capsys, compare(images, "--labels", labels), labels / "stray.tif")
    (labels / "stray.tif").unlink()
    tifffile.imwrite(first, np.ones((100, 80), np.uint16))
    assert "100x80" in _one_line_error(capsys, compare(images, "--labels", labels), first)
    tifffile.imwrite(first, np.ones((256, 256), np.float32))
    _one_line_error(capsys, compare(images, "--labels", labels), first)
    shutil.copy(val8 / "labels" / first.name, first)
    # -o is a file: named, and left as it was
    out.write_text("my notes")
    _one_line_error(capsys, compare(images, "--labels", labels), out)
    assert out.read_text() == "my notes"
    assert watched_model.paths == []  # no model was even fetched
    # the same model, with good input, is fetched and runs: the watch above could see it
    out.unlink()
    assert compare(images, "--labels", labels) == 0
    assert any(p.endswith("bioimageio.yaml") for p in watched_model.paths)
    capsys.readouterr()


def test_file_and_model_names_are_escaped_in_the_report(val8, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    hostile = "<img src=x onerror=alert(1)>.tif"
    shutil.copy(sorted((val8 / "images").glob("*.tif"))[0], images / hostile)
    model = zoo.copy_package(DEFAULT, tmp_path / "<script>alert(2)")
    result = dlmodel.compare([model], images, out=tmp_path / "out", progress=False)
    assert result.models[0].images == 1
    page = (tmp_path / "out" / "compare.html").read_text()
    assert "<img src=x" not in page and "<script>" not in page
    assert html.escape(hostile) in page and html.escape(model.name) in page
    src = re.findall(r'<img src="([^"]+)"', page)[0]
    assert (tmp_path / "out" / urllib.parse.unquote(html.unescape(src))).is_file()


# --- the pieces ---------------------------------------------------------------------------------

def test_matched_ious_agree_with_a_brute_force_match():
    rng = np.random.default_rng(3)
    for _ in range(5):
        truth = np.zeros((60, 60), np.int32)
        pred = np.zeros((60, 60), np.int32)
        for i in range(1, 9):
            y, x = rng.integers(5, 50, 2)
            truth[y:y + 8, x:x + 8] = i
            dy, dx = rng.integers(-3, 4, 2)
            pred[y + dy:y + dy + 8, x + dx:x + dx + 7] = i + 20
        expected = sorted(brute_force_matches(pred, truth))
        assert sorted(matched_ious(pred, truth)) == pytest.approx(expected)
        assert f1_at_iou(pred, truth)[0] == len(expected)


def test_bootstrap_f1_is_paired_and_bounded():
    # model a better than b on every image: every resampling says so
    a = np.array([[9, 1, 1]] * 6)
    b = np.array([[5, 5, 5]] * 6)
    sa, sb = bootstrap_f1(np.stack([a, b]))
    assert (sa > sb).all() and sa.shape == (2000,)
    mixed = np.array([[9, 0, 0], [0, 0, 9], [5, 2, 2], [8, 1, 0]])
    samples = bootstrap_f1(mixed)
    lo, hi = np.percentile(samples, (2.5, 97.5))
    assert 0 <= lo < 2 * 22 / (2 * 22 + 3 + 11) < hi <= 1  # the pooled F1 (22 TP, 3 FP, 11 FN) lies inside


def test_docstring_examples():
    import doctest

    from dlmodel import comparison, instances

    for module in (comparison, instances):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0


def test_overlays_never_overwrite_an_input(val8, tmp_path, capsys):
    # images kept in OUT/overlays (a folder named as compare's own): each overlay would replace its image
    out = tmp_path / "out"
    images = out / "overlays"
    images.mkdir(parents=True)
    source = sorted((val8 / "images").glob("*.tif"))[0]
    iio.imwrite(images / "cells.png", tifffile.imread(source))
    before = (images / "cells.png").read_bytes()
    code = cli.main(["compare", str(DEFAULT), str(images), "-o", str(out), "--no-progress"])
    line = _one_line_error(capsys, code, images / "cells.png")
    assert "would overwrite the input" in line
    assert (images / "cells.png").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["overlays"]
