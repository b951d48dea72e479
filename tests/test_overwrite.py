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
    kept = cli(*_package_cmd(tmp_path, tmp_path / "pkg"))  # a file the user added: not ours to delete
    assert kept.returncode == 2 and (tmp_path / "pkg" / "scratch.txt").exists(), kept.stderr
    (tmp_path / "pkg" / "scratch.txt").unlink()
    (tmp_path / "pkg" / "cover.png").unlink()  # one of ours gone: still ours, replaced whole
    again = cli(*_package_cmd(tmp_path, tmp_path / "pkg"))
    assert again.returncode == 0 and (tmp_path / "pkg" / "cover.png").exists(), again.stderr
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


# --- red-team review of the rule above: each hole as it was found ------------------------------

def _own_package(folder: Path, out: Path) -> Path:
    _torchscript_file(folder)
    r = cli(*_package_cmd(folder, out))
    assert r.returncode == 0, r.stderr
    return out


def test_package_never_deletes_its_sample_from_the_package_it_replaces(tmp_path):
    pkg = _own_package(tmp_path, tmp_path / "pkg")
    np.save(pkg / "my_sample.npy", np.load(tmp_path / "sample.npy"))  # the sample kept inside the old package
    cmd = _package_cmd(tmp_path, pkg)
    cmd[cmd.index("--sample") + 1] = pkg / "my_sample.npy"
    r = cli(*cmd)
    assert r.returncode == 2 and "an input of this command" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (pkg / "my_sample.npy").exists()


def test_overwrite_never_deletes_what_the_user_put_into_a_package(tmp_path):
    pkg = _own_package(tmp_path, tmp_path / "pkg")
    (pkg / "results").mkdir()
    (pkg / "results" / "a_prediction.tif").write_bytes(b"a week of predictions")  # predict ... -o pkg/results
    r = cli(*_package_cmd(tmp_path, pkg))
    assert r.returncode == 2 and "results/a_prediction.tif" in r.stderr and "did not write" in r.stderr, r.stderr
    assert (pkg / "results" / "a_prediction.tif").read_bytes() == b"a week of predictions"
    (pkg / "results" / "a_prediction.tif").unlink()
    (pkg / "README.md").write_text("my own documentation\n")  # a file dlmodel wrote, changed since
    r = cli(*_package_cmd(tmp_path, pkg))
    assert r.returncode == 2 and "README.md" in r.stderr, r.stderr
    assert (pkg / "README.md").read_text() == "my own documentation\n"
    # a package unzipped into the user's own folder carries the marker: the folder is still not ours
    z = _own_package(tmp_path, tmp_path / "pkg.zip")
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "thesis.docx").write_text("three years\n")
    import zipfile

    zipfile.ZipFile(z).extractall(mine)
    r = cli(*_package_cmd(tmp_path, mine))
    assert r.returncode == 2 and "thesis.docx" in r.stderr and (mine / "thesis.docx").exists(), r.stderr
    # nor a zip the user added a file to
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("notes.txt", "my notes\n")
    r = cli(*_package_cmd(tmp_path, z))
    assert r.returncode == 2 and "notes.txt" in r.stderr and "notes.txt" in zipfile.ZipFile(z).namelist(), r.stderr
    # what only the system or Python put there is not the user's: the package is replaced
    (pkg / "README.md").unlink()
    (pkg / ".DS_Store").write_bytes(b"finder")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "arch.cpython-311.pyc").write_bytes(b"bytecode")
    r = cli(*_package_cmd(tmp_path, pkg))
    assert r.returncode == 0 and (pkg / "README.md").exists() and not (pkg / ".DS_Store").exists(), r.stderr


def test_overwrite_never_deletes_the_folder_the_user_is_in(tmp_path):
    pkg = _own_package(tmp_path, tmp_path / "pkg")
    inside = pkg / "analysis"
    inside.mkdir()
    r = cli(*_package_cmd(tmp_path, pkg), cwd=inside)  # absolute -o, run from inside the package
    assert r.returncode == 2 and "holds the current folder" in r.stderr and inside.is_dir(), r.stderr
    inside.rmdir()
    inside.mkdir()
    r = cli(*_package_cmd(tmp_path, inside / ".."))  # '..': one line, never a traceback
    assert r.returncode == 2 and "Traceback" not in r.stderr and inside.is_dir(), r.stderr


def test_predict_never_overwrites_a_file_beside_its_input(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(3)
    tifffile.imwrite(folder / "a.tif", (rng.random((64, 64)) * 4000).astype(np.uint16))
    truth = np.zeros((64, 64), np.uint16)
    truth[10:20, 10:20] = 1
    tifffile.imwrite(folder / "a_labels.tif", truth)  # the user's annotation, not given to predict
    before = _snapshot(folder)
    r = cli("predict", DEFAULT_MODEL, folder / "a.tif", "-o", folder, "--labels")
    assert r.returncode == 2 and "a_labels.tif" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert _snapshot(folder) == before
    # into a folder of its own it writes, and --resume into the input folder still skips what is done
    (folder / "a_labels.tif").unlink()
    assert cli("predict", DEFAULT_MODEL, folder / "a.tif", "-o", folder, "--labels").returncode == 0
    again = cli("predict", DEFAULT_MODEL, folder / "a.tif", "-o", folder, "--labels", "--resume")
    assert again.returncode == 0 and "1 already done" in again.stdout, again.stderr


def test_heatmap_never_replaces_a_table_with_a_picture(tmp_path):
    table = tmp_path / "Image.csv"
    table.write_text("Metadata_Row,Metadata_Column,Count_Nuclei\nA,1,5\nA,2,7\n")
    objects = tmp_path / "Objects.csv"
    objects.write_text("ObjectNumber,Area\n1,30\n")
    r = cli("heatmap", table, "-o", objects, "--measure", "Count_Nuclei")
    assert r.returncode == 2 and ".png" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert objects.read_text() == "ObjectNumber,Area\n1,30\n"
    assert cli("heatmap", table, "-o", tmp_path / "plate.PNG", "--measure", "Count_Nuclei").returncode == 0


def _plate_images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for n, (row, col) in enumerate((("A", 1), ("A", 2)), 1):
        for c in (1, 2):
            tifffile.imwrite(folder / f"Channel{c}-{n:02d}-{row}-{col:02d}.tif", (rng.random((64, 64)) * 255).astype(np.uint8))
    return folder


def test_plate_never_overwrites_its_metadata_or_a_file_beside_its_images(tmp_path):
    images = _plate_images(tmp_path / "images")
    out = tmp_path / "out"
    out.mkdir()
    metadata = out / "screen.csv"  # the user's screen metadata, where --report writes its statistics
    metadata.write_text("Row,Column,Dose\nA,1,0\nA,2,1\n")
    r = cli("plate", DEFAULT_MODEL, images, "-o", out, "--metadata", metadata, "--report")
    assert r.returncode == 2 and "would overwrite the input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert metadata.read_text() == "Row,Column,Dose\nA,1,0\nA,2,1\n"
    (images / "wells.csv").write_text("Row,Column,Compound\nA,1,DMSO\n")  # the user's, beside the images
    r = cli("plate", DEFAULT_MODEL, images, "-o", images)
    assert r.returncode == 2 and "wells.csv" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (images / "wells.csv").read_text() == "Row,Column,Compound\nA,1,DMSO\n"


def test_resume_removes_only_part_files_of_its_own_outputs(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", (np.random.default_rng(5).random((64, 64)) * 4000).astype(np.uint16))
    out = tmp_path / "Downloads"
    out.mkdir()
    theirs = out / ".film.mp4.part"  # another program's download, paused two hours ago
    theirs.write_bytes(b"half a film")
    old = os.path.getmtime(theirs) - 2 * 3600
    os.utime(theirs, (old, old))
    ours = out / ".a_prediction.tif.node17-124.abcd1234.part"  # a killed cluster job's, as old
    ours.write_bytes(b"partial")
    os.utime(ours, (old, old))
    r = cli("predict", DEFAULT_MODEL, folder, "-o", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert theirs.read_bytes() == b"half a film" and not ours.exists()


def _bind_mount(source: Path, target: Path) -> bool:
    target.mkdir()
    return os.geteuid() == 0 and subprocess.run(["mount", "--bind", str(source), str(target)],
                                                capture_output=True).returncode == 0


def test_the_same_folder_by_another_name_is_still_an_input(tmp_path):
    """A case-insensitive disk (macOS, Windows) names one folder 'Data' and 'data'; a bind mount
    does the same on Linux: the rule compares folders, not spellings."""
    data = tmp_path / "data"
    images, labels = _pairs(data)
    alias = tmp_path / "Data"
    if not _bind_mount(data, alias):
        pytest.skip("needs root to bind-mount a folder under a second name")
    try:
        pkg = _own_package(tmp_path, data / "pkg")
        cmd = _package_cmd(tmp_path, alias / "pkg")
        cmd[1] = pkg / "weights.torchscript.pt"  # an input inside the package, named through the other spelling
        r = cli(*cmd)
        assert r.returncode == 2 and "an input of this command" in r.stderr, r.stderr
        assert (pkg / "weights.torchscript.pt").exists()
        tifffile.imwrite(images / "0_prediction.tif", np.zeros((48, 48), np.float32))  # the user's, given as input
        r = cli("predict", DEFAULT_MODEL, alias / "images" / "0.tif", alias / "images" / "0_prediction.tif",
                "-o", images)
        assert r.returncode == 2 and "would overwrite the input" in r.stderr, r.stderr
    finally:
        subprocess.run(["umount", str(alias)], check=True)


def test_a_package_dlmodel_converted_stays_replaceable(tmp_path):
    pkg = _own_package(tmp_path, tmp_path / "pkg")
    r = cli("convert", pkg, "--to", "onnx")
    assert r.returncode == 0, r.stderr
    assert outputs.not_written(pkg) == []  # convert's weights and rdf are dlmodel's, as the rest
    r = cli(*_package_cmd(tmp_path, pkg))
    assert r.returncode == 0 and not (pkg / "weights.onnx").exists(), r.stderr


def test_an_output_under_a_file_is_one_line(tmp_path):
    _torchscript_file(tmp_path)
    r = cli(*_package_cmd(tmp_path, tmp_path / "net.pt" / "pkg"))  # -o under the weights file: a slip of the tab key
    assert r.returncode == 2 and "Traceback" not in r.stderr and "net.pt" in r.stderr, r.stderr
    assert (tmp_path / "net.pt").is_file()
