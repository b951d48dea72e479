"""The catalogue (issue 26): a zoo listing in the service's own format, served from 127.0.0.1
with the packages' files, and the models on this machine."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ruyaml import YAML

from conftest import NUCLEI_MODEL, ROOT
from dlmodel import catalog
from dlmodel.errors import SourceError
from test_sources import Server

SPEC_EXAMPLES = ROOT / "tests" / "fixtures" / "spec_examples"


def _publish(www: Path, alias: str, package: Path, downloads: int, change=None) -> dict:
    """A package served as the zoo serves it (``<alias>/files/rdf.yaml`` and its files), and
    its listing item (``id``, ``type``, ``manifest``: the rdf)."""
    files = www / alias / "files"
    shutil.copytree(package, files)
    rdf = next(p for p in (files / "rdf.yaml", files / "bioimageio.yaml", *files.glob("*.yaml")) if p.exists())
    if rdf.name != "rdf.yaml":
        rdf.rename(files / "rdf.yaml")
    manifest = YAML(typ="safe", pure=True).load((files / "rdf.yaml").read_text())
    if change:
        change(manifest)
    return {"id": f"bioimage-io/{alias}", "type": "model", "manifest": manifest, "download_count": downloads}


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    www = tmp_path / "www"
    www.mkdir()
    items = [
        _publish(www, "affable-shark", NUCLEI_MODEL, 500),
        _publish(www, "default-nuclei", ROOT / "models" / "nuclei_default", 50),
        _publish(www, "fixed-unet", SPEC_EXAMPLES / "unet2d_fixed_shape", 5),
        # a model whose only weights are a TensorFlow SavedModel
        _publish(www, "tf-only", ROOT / "models" / "nuclei_default", 1, lambda m: m.update(weights={
            "tensorflow_saved_model_bundle": {"source": "weights.onnx", "tensorflow_version": "2.15.0"}})),
        _publish(www, "broken-rdf", ROOT / "models" / "nuclei_default", 2, lambda m: m.pop("inputs")),
        _publish(www, "climbs-out", ROOT / "models" / "nuclei_default", 3,
                 lambda m: m.update(covers=["../../affable-shark/files/cover0.png"])),
    ]
    items.append({"id": "bioimage-io/a-dataset", "type": "dataset", "manifest": {"name": "a dataset"}})
    (www / "children").write_text(json.dumps(items))
    server = Server(www)
    monkeypatch.setenv("DLMODEL_CATALOG_URL", f"{server.url}/children")
    monkeypatch.setenv("DLMODEL_ZOO_URL", f"{server.url}/{{id}}/files/rdf.yaml")
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    yield server, www
    server.stop()


def _by_id(found):
    return {e.id: e for e in found.entries}


def test_search_filters_and_cards(zoo):
    found = catalog.search(zoo=True, local=False)
    entries = _by_id(found)
    assert found.note == "" and "a-dataset" not in entries
    assert list(entries)[:2] == ["affable-shark", "default-nuclei"]  # by downloads
    shark = entries["affable-shark"]
    assert shark.runs_here and shark.name == "UNet 2D Nuclei Broad" and shark.license == "MIT"
    assert shark.cover.endswith("/affable-shark/files/cover0.png") and "U-net" in shark.citation
    assert shark.inputs[0]["axes"] == "bcyx" and not shark.is_3d and set(shark.weight_formats) == {"onnx", "torchscript"}
    assert entries["default-nuclei"].task == "instance-segmentation"
    assert entries["tf-only"].runs_here and entries["tf-only"].weight_formats == ("tensorflow_saved_model_bundle",)
    broken = entries["broken-rdf"]
    assert not broken.runs_here and "invalid rdf" in broken.problem and "inputs" in broken.problem
    climbs = entries["climbs-out"]
    assert not climbs.runs_here and "outside its own files; refused" in climbs.problem
    # words, tags, task, runs-here
    assert [e.id for e in catalog.search("broad nuclei", local=False).entries] == ["affable-shark"]
    assert {e.id for e in catalog.search(tags=["dsb2018"], local=False).entries} >= {"affable-shark", "default-nuclei"}
    assert all(e.runs_here for e in catalog.search(runs_here=True, local=False).entries)
    assert {"broken-rdf", "climbs-out"} <= {e.id for e in catalog.search(runs_here=False, local=False).entries}


def test_runs_here_says_what_a_model_needs(zoo, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if TensorFlow were not installed here
    tf_only = _by_id(catalog.search(local=False))["tf-only"]
    assert not tf_only.runs_here and tf_only.needs == "needs TensorFlow: dlmodel env create ENV --engines tensorflow"
    monkeypatch.setitem(sys.modules, "stardist", None)
    shipped = {e.name: e for e in catalog.search(zoo=False).entries}
    assert shipped["RunDLModel StarDist nuclei"].needs.startswith("needs TensorFlow")
    monkeypatch.delitem(sys.modules, "tensorflow")
    assert "pip install 'dlmodel[stardist]'" in {e.name: e for e in catalog.search(zoo=False).entries}[
        "RunDLModel StarDist nuclei"].needs


def test_the_listing_is_cached_and_used_offline_with_its_age(zoo, monkeypatch):
    server, www = zoo
    assert catalog.search(local=False).note == ""
    server.stop()
    monkeypatch.setenv(catalog.MAX_AGE_ENV, "0")  # too old: fetched again, which fails
    listing = catalog._listing_cache()
    data = json.loads(listing.read_text())
    data["fetched"] = time.time() - 3 * 86400
    listing.write_text(json.dumps(data))
    found = catalog.search(local=False)
    assert found.note.startswith("zoo listing from 3 days ago (not refreshed:") and "affable-shark" in _by_id(found)
    listing.unlink()
    found = catalog.search(local=True)
    assert "could not be fetched and none is cached" in found.note and "showing the models on this machine only" in found.note
    assert {e.origin for e in found.entries} == {"shipped"}


def test_a_malformed_or_huge_listing_is_one_line(zoo, monkeypatch):
    server, www = zoo
    (www / "children").write_text("{not json")
    with pytest.raises(SourceError, match="is not JSON"):
        catalog.fetch_listing(refresh=True)
    (www / "children").write_text(json.dumps({"items": "nope"}))
    with pytest.raises(SourceError, match="not a list of entries"):
        catalog.fetch_listing(refresh=True)
    (www / "children").write_bytes(b"[" + b" " * (3 << 20) + b"]")
    monkeypatch.setenv(catalog.MAX_BYTES_ENV, str(1 << 20))
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match="more than the limit of 1048576"):
        catalog.fetch_listing(refresh=True)
    assert time.perf_counter() - t0 < 10


def test_the_command_line_searches_and_fetches(zoo, tmp_path):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "dlmodel.cli", "search", "nuclei", "--runs-here"], capture_output=True,
                       text=True, timeout=300, env={**env, "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "name", "task"] and all(len(line) <= 100 for line in lines)
    assert any(line.startswith("affable-shark") for line in lines) and not any("broken-rdf" in line for line in lines)
    assert any(line.startswith("models/nuclei_default") for line in lines)
    r = subprocess.run([sys.executable, "-m", "dlmodel.cli", "search", "--local", "--json"], capture_output=True,
                       text=True, timeout=300)
    assert {e["origin"] for e in json.loads(r.stdout)} == {"shipped"}
    r = subprocess.run([sys.executable, "-m", "dlmodel.cli", "fetch", "affable-shark"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "every file verified" in r.stdout, r.stderr
    # now in the cache: listed as such, and runs
    cached = [e for e in catalog.search(local=True, zoo=False).entries if e.origin == "cache"]
    assert [e.name for e in cached] == ["UNet 2D Nuclei Broad"] and cached[0].runs_here
    r = subprocess.run([sys.executable, "-m", "dlmodel.cli", "info", "affable-shark"], capture_output=True, text=True,
                       timeout=300)
    assert "cite: Ronneberger" in r.stdout and "(doi:" in r.stdout, r.stdout


def test_a_cancelled_download_leaves_nothing_in_the_cache(zoo):
    from dlmodel import sources
    from dlmodel.package import open_spec

    seen = []

    def cancel_after_the_rdf(url, done, total):
        seen.append(url)
        if not url.endswith("rdf.yaml"):  # the user presses Cancel during the first weights file
            raise sources.DownloadCancelled("cancelled")

    with sources.reporting(cancel_after_the_rdf), pytest.raises(sources.DownloadCancelled):
        open_spec("affable-shark")
    assert any(u.endswith("rdf.yaml") for u in seen)
    packages = sources.cache_dir() / "packages"
    # no entry, no staging folder, no part file: only the package's (empty) lock file
    assert [p.suffix for p in packages.iterdir()] == [".lock"], list(packages.iterdir())
    spec, _ = open_spec("affable-shark")  # the next try downloads it whole
    assert spec.name == "UNet 2D Nuclei Broad"
