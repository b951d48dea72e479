"""--overwrite and -o never delete or overwrite the user's data (issue 25, point 2): each case as
the red team ran it, with real files, through the command line."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import dlmodel
from conftest import ROOT
from dlmodel import outputs, packaging

DEFAULT_MODEL = ROOT / "models" / "nuclei_default"


def cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "dlmodel.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _pairs(folder: Path, n: int = 2) -> tuple:
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True), labels.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        tifffile.imwrite(images / f"{i}.tif", rng.normal(10, 3, (48, 48)).astype(np.float32))
        lab = np.zeros((48, 48), np.uint16)
        lab[4:14, 4:14] = 1
        tifffile.imwrite(labels / f"{i}.tif", lab)
    (images / "notes.txt").write_text("my notes\n")
    return images, labels


def _torchscript_file(folder: Path) -> Path:
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Sigmoid())
    path = folder / "net.pt"
    torch.jit.script(net).save(str(path))
    np.save(folder / "sample.npy", np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32))
    return path


def _package_cmd(folder: Path, out) -> list:
    return ["package", folder / "net.pt", "--sample", folder / "sample.npy", "-o", out, "--name", "my model",
            "--description", "a test", "--author", "Me", "--size", "16,8", "--overwrite"]


def test_finetune_into_its_own_images_folder_deletes_nothing(torch2d, tmp_path):
    images, labels = _pairs(tmp_path)
    before = _snapshot(tmp_path)
    r = cli("finetune", torch2d.parent, images, labels, "-o", images, "--overwrite", "--epochs", "1", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{images} is an input of this command: --overwrite never replaces it" in r.stderr
    r = cli("finetune", torch2d.parent, images, labels, "-o", tmp_path, "--overwrite", "--epochs", "1", "--no-progress")
    assert r.returncode == 2 and "holds" in r.stderr and "an input of this command" in r.stderr, r.stderr
    assert _snapshot(tmp_path) == before


def test_package_into_the_current_folder_or_a_foreign_one_deletes_nothing(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _torchscript_file(work)
    (work / "thesis.docx").write_text("three years\n")
    before = _snapshot(work)
    r = cli(*_package_cmd(work, "."), cwd=work)
    assert r.returncode == 2 and "is the current folder: --overwrite never replaces it" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and _snapshot(work) == before
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "table.csv").write_text("a,b\n")
    r = cli(*_package_cmd(work, foreign))
    assert r.returncode == 2 and "is not a package dlmodel wrote" in r.stderr and (foreign / "table.csv").exists()
    home = cli(*_package_cmd(work, Path.home()))
    assert home.returncode == 2 and "your home folder" in home.stderr


def test_overwrite_replaces_only_a_package_dlmodel_wrote_and_never_through_a_link(tmp_path):
    _torchscript_file(tmp_path)
    first = cli(*_package_cmd(tmp_path, tmp_path / "pkg"))
    assert first.returncode == 0, first.stderr
    assert outputs.is_own_package(tmp_path / "pkg") and dlmodel.load(tmp_path / "pkg").test().ok
    (tmp_path / "pkg" / "scratch.txt").write_text("made inside the old package\n")
    again = cli(*_package_cmd(tmp_path, tmp_path / "pkg"))  # our own package: replaced whole
    assert again.returncode == 0 and not (tmp_path / "pkg" / "scratch.txt").exists(), again.stderr
    assert not list(tmp_path.glob(".pkg.*"))  # nothing moved aside is left behind
    (tmp_path / "link").symlink_to(tmp_path / "pkg")
    r = cli(*_package_cmd(tmp_path, tmp_path / "link"))
    assert r.returncode == 2 and "is a symbolic link" in r.stderr and (tmp_path / "pkg" / "bioimageio.yaml").exists()
    # a zip dlmodel wrote carries the marker too
    z = cli(*_package_cmd(tmp_path, tmp_path / "pkg.zip"))
    assert z.returncode == 0 and outputs.is_own_package(tmp_path / "pkg.zip"), z.stderr
    assert cli(*_package_cmd(tmp_path, tmp_path / "pkg.zip")).returncode == 0


def test_predict_into_the_input_folder_never_overwrites_an_input(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(2)
    tifffile.imwrite(folder / "a.tif", (rng.random((64, 64)) * 4000).astype(np.uint16))
    truth = np.zeros((64, 64), np.uint16)
    truth[10:20, 10:20] = 1
    tifffile.imwrite(folder / "a_labels.tif", truth)  # the user's own annotation
    tifffile.imwrite(folder / "a_prediction.tif", truth)  # an input named like an output
    before = _snapshot(folder)
    r = cli("predict", DEFAULT_MODEL, folder, "-o", folder, "--labels")
    assert r.returncode == 2 and "would overwrite the input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _snapshot(folder) == before


def test_heatmap_never_replaces_its_own_table(tmp_path):
    table = tmp_path / "Image.csv"
    table.write_text("Metadata_Row,Metadata_Column,Count_Nuclei\nA,1,5\nA,2,7\n")
    r = cli("heatmap", table, "-o", table, "--measure", "Count_Nuclei")
    assert r.returncode == 2 and "would overwrite the input" in r.stderr
    assert table.read_text().startswith("Metadata_Row")


def test_check_replaceable_refuses_every_place_a_command_must_not_delete(tmp_path, monkeypatch):
    inp = tmp_path / "in" / "x.tif"
    inp.parent.mkdir()
    inp.write_bytes(b"1")
    own = tmp_path / "own"
    own.mkdir()
    (own / outputs.PACKAGE_MARKER).write_text(outputs.marker_text("test"))
    outputs.check_replaceable(own, [inp])  # ours, and holds no input: fine
    monkeypatch.chdir(own)
    for out, inputs, message in ((own, [], "the current folder"), (Path("/"), [], "a filesystem root"),
                                 (inp, [inp], "an input of this command"), (tmp_path, [inp], "holds")):
        with pytest.raises(dlmodel.InputError, match=message):
            outputs.check_replaceable(out, inputs)
    outputs.check_replaceable(tmp_path / "absent", [inp])  # nothing there: nothing to refuse
