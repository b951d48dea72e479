"""A package's ``import_from`` architecture is package code (issue 25, point 1).

A ``pytorch_state_dict`` architecture given as ``import_from`` + ``callable`` + ``kwargs`` names
what is called, with what: ``subprocess.run`` with ``shell: true``, ``shutil.rmtree``,
``builtins.open``. Each hostile package is built here from the tiny torch package, with only that
weight format (so every engine choice lands on it), and served from 127.0.0.1."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from ruyaml import YAML

import dlmodel
import zoo
from dlmodel.trust import FOLDER, ZIP, Gate, TrustError
from test_sources import Server


def _hostile(torch2d: Path, folder: Path, module: str, name: str, kwargs: dict) -> Path:
    """A copy of the tiny torch package whose state dict's architecture is ``module.name(**kwargs)``."""
    pkg = zoo.copy_package(torch2d.parent, folder)
    rdf = pkg / "bioimageio.yaml"
    yaml = YAML(typ="safe", pure=True)
    data = yaml.load(rdf.read_text())
    weights = data["weights"]
    state = weights["pytorch_state_dict"]
    state["architecture"] = {"callable": name, "import_from": module, "kwargs": kwargs}
    data["weights"] = {"pytorch_state_dict": state}
    with open(rdf, "w") as f:
        yaml.dump(data, f)
    return rdf


ATTACKS = {
    "subprocess.run": lambda victim: ("subprocess", "run", {"args": f"touch {victim}", "shell": True}),
    "builtins.open": lambda victim: ("builtins", "open", {"file": str(victim), "mode": "w"}),
    "shutil.rmtree": lambda victim: ("shutil", "rmtree", {"path": str(victim)}),
}


def _attack(kind: str, tmp_path: Path):
    """The victim path, how to tell the attack worked, and the (module, callable, kwargs)."""
    victim = tmp_path / f"victim-{kind}"
    if kind == "shutil.rmtree":
        victim.mkdir()
        (victim / "precious.txt").write_text("data\n")
        worked = lambda: not victim.exists()  # noqa: E731
    else:
        worked = victim.exists
    return victim, worked, ATTACKS[kind](victim)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dlmodel.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def www(tmp_path):
    server = Server(tmp_path / "www")
    (tmp_path / "www").mkdir(exist_ok=True)
    yield server, tmp_path / "www"
    server.stop()


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_a_downloaded_import_from_runs_nothing_without_trust(kind, torch2d, tmp_path, www, monkeypatch):
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    server, root = www
    victim, worked, (module, name, kwargs) = _attack(kind, tmp_path)
    _hostile(torch2d, root / "pkg", module, name, kwargs)
    url = f"{server.url}/pkg/bioimageio.yaml"
    with pytest.raises(TrustError) as err:
        dlmodel.load(url)
    assert f"{module}.{name}" in str(err.value) and "trust" in str(err.value) and "\n" not in str(err.value)
    assert not worked()
    # the one-line refusal also from the command line; nothing ran
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.random.default_rng(0).normal(10, 3, (32, 32)).astype(np.float32))
    r = cli("predict", url, images, "-o", tmp_path / "out")
    assert r.returncode != 0 and "Traceback" not in r.stderr and f"{module}.{name}" in r.stderr, r.stderr
    r = cli("test", url)
    assert f"{module}.{name}" in r.stdout + r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert not worked()


def test_a_zip_or_untrusted_folder_runs_nothing_and_trust_is_consent(torch2d, tmp_path):
    victim, worked, (module, name, kwargs) = _attack("subprocess.run", tmp_path)
    rdf = _hostile(torch2d, tmp_path / "pkg", module, name, kwargs)
    archive = zoo.zip_folder(rdf.parent, tmp_path / "pkg.zip")
    for source, trust in ((archive, None), (archive, False), (rdf.parent, False)):
        with pytest.raises(TrustError, match="subprocess.run"):
            dlmodel.load(source, trust=trust)
        assert not worked()
    # consent: the package's call is made as it says (and then fails to be a network)
    with pytest.raises(Exception):
        dlmodel.load(archive, trust=True)
    assert worked()


def test_finetune_from_a_downloaded_parent_runs_nothing(torch2d, tmp_path, www, monkeypatch):
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    server, root = www
    victim, worked, (module, name, kwargs) = _attack("builtins.open", tmp_path)
    _hostile(torch2d, root / "pkg", module, name, kwargs)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        tifffile.imwrite(images / f"{i}.tif", rng.normal(10, 3, (32, 32)).astype(np.float32))
        lab = np.zeros((32, 32), np.uint16)
        lab[4:12, 4:12] = 1
        tifffile.imwrite(labels / f"{i}.tif", lab)
    r = cli("finetune", f"{server.url}/pkg/bioimageio.yaml", images, labels, "-o", tmp_path / "new", "--epochs", 1,
            "--no-progress")
    assert r.returncode != 0 and "builtins.open" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not worked() and not (tmp_path / "new").exists()


def test_the_allowlist_takes_only_network_classes_of_model_libraries(tmp_path):
    pytest.importorskip("cellpose")  # the model library it imports (an extra: not in .venv-np2)
    gate = Gate.decide("m", tmp_path, "k", ZIP, None)
    cpnet = gate.library_class("cellpose.resnet_torch", "CPnet")  # a model library's network: no trust needed
    import torch

    assert issubclass(cpnet, torch.nn.Module)
    refused = [
        ("subprocess", "run"), ("builtins", "open"), ("shutil", "rmtree"), ("os", "system"),
        ("cellpose.resnet_torch", "torch"),  # a module imported by the library, not a class of it
        ("cellpose.resnet_torch", "nn"),
        ("cellpose.resnet_torch", "batchconv"),  # a function of the library, not a network class
        ("torch.nn", "Conv2d"),  # torch itself is not a model library
        ("cellpose.resnet_torch", "_private"),
        ("cellpose.resnet_torch.__builtins__", "eval"),
        ("antigravity", "Anything"),  # never imported: importing a module runs it
    ]
    for module, name in refused:
        with pytest.raises(TrustError) as err:
            gate.library_class(module, name)
        assert f"{module}.{name}" in str(err.value) and "trust=True" in str(err.value), (module, name)
    assert "antigravity" not in sys.modules
    # a folder the user made is trusted, as for architecture files
    assert Gate.decide("m", tmp_path, "k", FOLDER, None).library_class("subprocess", "run") is subprocess.run
