"""Model sources: paths, folders, zips, URLs, zoo ids and DOIs, the cache, and integrity checks.

Remote sources are served by a real HTTP server on 127.0.0.1; nothing reaches the internet."""
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

import dlmodel
import zoo
from dlmodel import sources


class Server:
    """A static file server on 127.0.0.1 that can be stopped (to simulate going offline)."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(torch2d, tmp_path, monkeypatch):
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    www = tmp_path / "www"
    zoo.copy_package(torch2d.parent, www / "pkg")
    zoo.zip_folder(torch2d.parent, www / "pkg.zip")
    zoo.copy_package(torch2d.parent, www / "zoo" / "tiny-model")
    server = Server(www)
    yield server, www
    server.stop()


def _probe(model):
    return model.predict(np.arange(40 * 40, dtype=np.float32).reshape(40, 40))["prob"]


def test_folder_yaml_and_zip_give_the_same_model(torch2d, tmp_path):
    zipped = zoo.zip_folder(torch2d.parent, tmp_path / "pkg.zip")
    ref = _probe(dlmodel.load(torch2d))
    for src in (torch2d.parent, str(torch2d), zipped):
        assert np.array_equal(_probe(dlmodel.load(src)), ref)


def test_url_downloads_once_then_works_offline(served):
    server, _ = served
    url = f"{server.url}/pkg/bioimageio.yaml"
    first = dlmodel.load(url)
    assert not first.local and first.origin == url
    assert first.spec.root.is_relative_to(sources.cache_dir())
    server.stop()  # offline from here
    again = dlmodel.load(url)
    assert np.array_equal(_probe(first), _probe(again))


def test_a_corrupted_cache_entry_is_fetched_again(served):
    server, _ = served
    url = f"{server.url}/pkg/bioimageio.yaml"
    first = dlmodel.load(url)
    weights = first.spec.root / "weights.onnx"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])  # damaged on disk
    again = dlmodel.load(url)
    assert again.test().ok and (again.spec.root / "weights.onnx").read_bytes() == good
    (again.spec.root / "weights.onnx").write_bytes(good[:100])
    server.stop()  # offline: nothing to fetch again from, so the damage is reported
    with pytest.raises(dlmodel.SourceError, match="cannot download|sha256"):
        dlmodel.load(url)


def test_offline_without_cache_names_source_and_cache(served):
    server, _ = served
    url = f"{server.url}/pkg/bioimageio.yaml"
    server.stop()
    with pytest.raises(dlmodel.SourceError) as err:
        dlmodel.load(url)
    msg = str(err.value)
    assert "\n" not in msg and url in msg and str(sources.cache_dir()) in msg


def test_zip_url_zoo_id_and_zenodo_doi(served, monkeypatch):
    server, www = served
    assert _probe(dlmodel.load(f"{server.url}/pkg.zip")).shape == (40, 40)
    monkeypatch.setenv("DLMODEL_ZOO_URL", server.url + "/zoo/{id}/bioimageio.yaml")
    assert dlmodel.load("tiny-model").spec.name == "tiny torch 2d"
    # a Zenodo record whose files live at URLs unrelated to the rdf's
    record = www / "api" / "records"
    record.mkdir(parents=True)
    files = [{"key": p.name, "links": {"self": f"{server.url}/zfiles/{p.name}.bin"}} for p in (www / "pkg").iterdir()]
    (record / "1234").write_text(json.dumps({"files": files}))
    (www / "zfiles").mkdir()
    for p in (www / "pkg").iterdir():
        shutil.copy(p, www / "zfiles" / f"{p.name}.bin")
    monkeypatch.setenv("DLMODEL_ZENODO_API", server.url + "/api")
    model = dlmodel.load("https://doi.org/10.5281/zenodo.1234")
    assert model.spec.name == "tiny torch 2d" and model.test().ok


def test_remote_file_with_wrong_sha256_is_refused(served):
    server, www = served
    weights = www / "pkg" / "weights.onnx"
    weights.write_bytes(weights.read_bytes() + b"tampered")
    with pytest.raises(dlmodel.SourceError, match="sha256"):
        dlmodel.load(f"{server.url}/pkg/bioimageio.yaml")
    assert not any((sources.cache_dir() / "packages").glob("*/bioimageio.yaml"))


def test_two_processes_fill_one_cache(served):
    server, _ = served
    url = f"{server.url}/pkg/bioimageio.yaml"
    code = f"import dlmodel; m = dlmodel.load({url!r}); assert m.test().ok; print(m.spec.root)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ}) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    roots = {o[0].strip() for o in outs}
    assert len(roots) == 1
    assert len([p for p in (sources.cache_dir() / "packages").iterdir() if p.is_dir()]) == 1


# --- local integrity ---------------------------------------------------------------------------

def test_local_sha256_mismatch_names_file_and_both_hashes(torch2d, tmp_path):
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    (pkg / "weights.onnx").write_bytes((pkg / "weights.onnx").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(dlmodel.SourceError) as err:
        dlmodel.load(pkg)
    msg = str(err.value)
    assert "weights.onnx" in msg and zoo.sha256(pkg / "weights.onnx") in msg and zoo.sha256(torch2d.parent / "weights.onnx") in msg


def test_missing_weights_file(torch2d, tmp_path):
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    (pkg / "weights.torchscript.pt").unlink()
    with pytest.raises(dlmodel.SourceError, match="weights.torchscript.pt.*missing"):
        dlmodel.load(pkg)


def test_unreadable_file_name_in_the_rdf(torch2d, tmp_path):
    # found by the mutated-rdf property test: a source name too long for the filesystem
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    rdf = pkg / "bioimageio.yaml"
    rdf.write_text(rdf.read_text().replace("source: weights.onnx", "source: " + "x" * 300))
    with pytest.raises(dlmodel.DLModelError) as err:
        dlmodel.load(pkg)
    assert "\n" not in str(err.value)


def test_broken_yaml(torch2d, tmp_path):
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    (pkg / "bioimageio.yaml").write_text("name: [unclosed\n  inputs: {")
    with pytest.raises(dlmodel.SpecError, match="cannot read rdf"):
        dlmodel.load(pkg)


def test_invalid_rdf_names_the_field(nuclei_model, tmp_path):
    pkg = zoo.copy_package(nuclei_model.parent, tmp_path / "pkg")
    rdf = pkg / "bioimageio.yaml"
    rdf.write_text(rdf.read_text().replace("size: 512", "size: -3"))
    with pytest.raises(dlmodel.SpecError) as err:
        dlmodel.load(pkg)
    assert "invalid rdf" in str(err.value) and "inputs.0.axes" in str(err.value)


def test_unknown_source():
    with pytest.raises(dlmodel.SourceError, match="not a file, folder, URL, zoo id or DOI"):
        dlmodel.load("no/such/model.yaml")


# --- hostile archives --------------------------------------------------------------------------

def _zip(path: Path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "entries, message",
    [
        ([("../evil.txt", b"x", None)], "outside the package"),
        (([("/tmp/evil.txt", b"x", None)]), "outside the package"),
        ([("link", b"/etc/passwd", 0o120777)], "link or special file"),
        ([("a.txt", b"1", None), ("a.txt", b"2", None)], "twice"),
    ],
)
def test_hostile_zips_are_refused(tmp_path, entries, message):
    with pytest.warns(UserWarning) if entries[0][0] == "a.txt" else _nullcontext():
        bad = _zip(tmp_path / "bad.zip", entries)
    dest = tmp_path / "out"
    with pytest.raises(dlmodel.SourceError, match=message):
        sources.extract_zip(bad, dest)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_zip_bomb_and_truncated_zip(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (20 << 20))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(dlmodel.SourceError, match="limit"):
        sources.extract_zip(bomb, tmp_path / "out", max_bytes=10 << 20)
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(bomb.read_bytes()[: bomb.stat().st_size // 2])
    with pytest.raises(dlmodel.SourceError, match="not a readable zip|damaged"):
        sources.extract_zip(truncated, tmp_path / "out2")
