"""Hostile packages, careless inputs and broken disks (issue 15): each hostile input is built here.

Remote packages are served by real HTTP servers on 127.0.0.1; write failures come from real
file systems (a read-only or a full tmpfs mounted in a private user namespace)."""
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

import dlmodel
import zoo
from dlmodel import io, sources
from dlmodel.runs import output_stems
from test_sources import Server

RNG = np.random.default_rng(15)


def cli(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "dlmodel.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def _with_attachment(pkg: Path, source: str, sha256: str) -> Path:
    """Add an attachment entry naming ``source`` to a package's rdf (the hostile part)."""
    rdf = pkg / "bioimageio.yaml"
    text = rdf.read_text()
    assert "attachments:" not in text
    rdf.write_text(text + f"attachments:\n- source: {source}\n  sha256: '{sha256}'\n")
    return rdf


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- 1. a downloaded rdf never writes (or reads) outside its cache folder -------------------------

def test_a_remote_rdf_naming_a_file_outside_its_folder_is_refused(torch2d, tmp_path, cache):
    victim = tmp_path / "victim.txt"  # cache/packages/.<key>.<tmp>/../../../victim.txt
    victim.write_text("precious\n")
    www = tmp_path / "www"
    pkg = zoo.copy_package(torch2d.parent, www / "a" / "b" / "pkg")
    payload = www / "victim.txt"  # what the hostile server sends for ../../../victim.txt
    payload.write_text("echo pwned\n")
    _with_attachment(pkg, "../../../victim.txt", zoo.sha256(payload))
    server = Server(www)
    try:
        url = f"{server.url}/a/b/pkg/bioimageio.yaml"
        with pytest.raises(dlmodel.SourceError) as err:
            dlmodel.load(url)
        assert "\n" not in str(err.value) and "outside the package folder" in str(err.value)
        res = cli("info", url)  # dlmodel info downloads too
        assert res.returncode == 2 and "outside the package folder" in res.stderr and "Traceback" not in res.stderr
    finally:
        server.stop()
    assert victim.read_text() == "precious\n"
    assert not any(cache.rglob("rdf.yaml")), "a refused package must not be cached"


def test_a_remote_rdf_naming_a_file_url_is_refused(torch2d, tmp_path, cache):
    secret = tmp_path / "secret.txt"
    secret.write_text("the user's private key\n")
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "www" / "pkg")
    _with_attachment(pkg, f"file://{secret}", zoo.sha256(secret))
    server = Server(tmp_path / "www")
    try:
        with pytest.raises(dlmodel.SourceError, match="file: URL"):
            dlmodel.load(f"{server.url}/pkg/bioimageio.yaml")
    finally:
        server.stop()
    copied = [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == secret.read_bytes()]
    assert not copied, f"a local file was copied into the cache: {copied}"


@pytest.mark.parametrize("name, why", [
    ("../x.onnx", "outside the package folder"),
    ("sub/../../x.onnx", "outside the package folder"),
    ("/etc/passwd", "absolute path"),
    ("C:/Windows/x.dll", "absolute path"),
    ("file:/etc/passwd", "file: URL"),
    ("ftp://host/x", "ftp: URL"),
])
def test_confined_path_refuses_every_way_out(tmp_path, name, why):
    with pytest.raises(dlmodel.SourceError, match=why):
        sources.confined_path(tmp_path, name, "test")
    assert sources.confined_path(tmp_path, "sub/./w.onnx", "test") == tmp_path / "sub/./w.onnx"


def test_a_zip_whose_rdf_names_a_file_beside_it_is_refused(torch2d, tmp_path, cache):
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not the package's")
    _with_attachment(pkg, "../outside.bin", zoo.sha256(outside))
    zipped = zoo.zip_folder(pkg, tmp_path / "pkg.zip")
    with pytest.raises(dlmodel.SourceError, match="outside the package folder"):
        dlmodel.load(zipped)


# --- 2. a TensorFlow graph that reaches files needs consent --------------------------------------

def _evil_saved_model(folder: Path, target: Path) -> Path:
    """A SavedModel whose serving function writes ``target`` (tf.io.write_file) as it predicts."""
    import tensorflow as tf
    from conftest import _v, channel, space_in, space_out

    v = _v()
    kernel = RNG.normal(size=(3, 3, 1, 2)).astype(np.float32)

    class Evil(tf.Module):
        def __init__(self):
            super().__init__()
            self.k = tf.Variable(kernel)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="raw")])
        def serve(self, raw):
            tf.io.write_file(str(target), "written by the model's graph")
            return {"out": tf.nn.conv2d(raw, self.k, 1, "SAME")}

    module = Evil()
    folder.mkdir(parents=True)
    tf.saved_model.save(module, str(folder / "saved_model"), signatures={"serving_default": module.serve})
    zoo.zip_folder(folder / "saved_model", folder / "saved_model.zip")
    shutil.rmtree(folder / "saved_model")
    x = RNG.normal(size=(1, 32, 24, 1)).astype(np.float32)
    expected = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()  # computed here, not by the graph
    from bioimageio.spec import ValidationContext

    with ValidationContext(root=folder, perform_io_checks=False):
        weights = {"tensorflow_saved_model_bundle": v.TensorflowSavedModelBundleWeightsDescr(
            source="saved_model.zip", sha256=zoo.sha256(folder / "saved_model.zip"),
            tensorflow_version=v.Version(tf.__version__))}

    def inputs(tf_):
        return [v.InputTensorDescr(id=v.TensorId("raw"), axes=[v.BatchAxis(), *space_in("yx"), channel(["c0"])],
                                   test_tensor=tf_("raw"))]

    def outputs(tf_):
        return [v.OutputTensorDescr(id=v.TensorId("out"), axes=[v.BatchAxis(), *space_out("raw", "yx", halo=1),
                                    channel(["o0", "o1"])], test_tensor=tf_("out"))]

    return zoo.build(folder, "graph writes a file", inputs, outputs, weights, {"raw": x},
                     reference=lambda _: {"out": expected})


def test_a_downloaded_savedmodel_that_writes_files_needs_trust(tmp_path, cache, tf_saved_model):
    from dlmodel.engines import saved_model_risky_ops

    target = tmp_path / "written.txt"
    rdf = _evil_saved_model(tmp_path / "www" / "evil", target)
    assert not target.exists()
    server = Server(tmp_path / "www")
    try:
        url = f"{server.url}/evil/bioimageio.yaml"
        with pytest.raises(dlmodel.TrustError) as err:
            dlmodel.load(url).predict(RNG.normal(size=(32, 32)).astype(np.float32), axes="yx")
        assert "WriteFile" in str(err.value) and "was downloaded" in str(err.value) and "\n" not in str(err.value)
        assert not target.exists()
        res = cli("predict", url, _tif(tmp_path / "in.tif"), "-o", tmp_path / "out")
        assert res.returncode == 2 and "WriteFile" in res.stderr and not target.exists()
        assert dlmodel.load(url, trust=True).test().ok  # with consent it runs, and writes
        assert target.exists()
    finally:
        server.stop()
    # an ordinary exported Keras SavedModel holds none of these operations: it needs no consent
    assert saved_model_risky_ops(sources.unpack_to_cache(tf_saved_model.parent / "saved_model.zip")) == set()
    assert "WriteFile" in saved_model_risky_ops(sources.unpack_to_cache(rdf.parent / "saved_model.zip"))


def _tif(path: Path, shape=(32, 32)) -> Path:
    tifffile.imwrite(path, RNG.integers(0, 255, shape, dtype=np.uint8))
    return path


# --- 3. inputs that share a name never overwrite each other's outputs ----------------------------

def test_inputs_with_the_same_name_in_two_folders_keep_their_folder(torch2d, tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    a, b = _tif(tmp_path / "A" / "cell.tif"), _tif(tmp_path / "B" / "cell.tif", (40, 40))
    c = _tif(tmp_path / "B" / "other.tif")
    out = tmp_path / "out"
    res = cli("predict", torch2d, tmp_path / "A", tmp_path / "B", "-o", out, "--engine", "onnx")
    assert res.returncode == 0, res.stderr
    assert "predicted 3 of 3 images" in res.stdout and "3 files written" in res.stdout
    model = dlmodel.load(torch2d, engine="onnx")
    for src, written in ((a, out / "A" / "cell_prob.tif"), (b, out / "B" / "cell_prob.tif"), (c, out / "B" / "other_prob.tif")):
        np.testing.assert_array_equal(tifffile.imread(written), model.predict(tifffile.imread(src))["prob"])
    again = cli("predict", torch2d, tmp_path / "A", tmp_path / "B", "-o", out, "--engine", "onnx", "--resume")
    assert again.returncode == 0 and "predicted 0 of 3 images" in again.stdout and "(3 already done)" in again.stdout


def test_inputs_that_would_write_the_same_outputs_are_refused_up_front(torch2d, tmp_path):
    a = _tif(tmp_path / "cell.tif")
    np.save(tmp_path / "cell.npy", np.ones((32, 32), np.float32))
    res = cli("predict", torch2d, a, tmp_path / "cell.npy", "-o", tmp_path / "out")
    assert res.returncode == 2 and "cell.tif" in res.stderr and "cell.npy" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert output_stems([Path("x/a.tif"), Path("x/b.tif")]) == {Path("x/a.tif"): "a", Path("x/b.tif"): "b"}


# --- 4. write failures: one line each, the other images go on ------------------------------------

def test_output_that_is_a_file_is_one_line(torch2d, tmp_path):
    (tmp_path / "taken").write_text("a file")
    res = cli("predict", torch2d, _tif(tmp_path / "x.tif"), "-o", tmp_path / "taken")
    assert res.returncode == 2 and "is a file" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "taken").read_text() == "a file"


def _namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


needs_namespaces = pytest.mark.skipif(not _namespaces_work(), reason="no user namespaces here (unshare -Urm)")


def _in_tmpfs(out: Path, options: str, command: list) -> subprocess.CompletedProcess:
    """Run ``command`` with a fresh tmpfs (mount ``options``) at ``out``, in a private mount
    namespace, and list what it left there afterwards."""
    out.mkdir(exist_ok=True)
    quoted = " ".join(f"'{c}'" for c in map(str, command))
    script = f"mount -t tmpfs -o {options} tmpfs '{out}' && {quoted}; rc=$?; echo '--- left:'; ls -A '{out}'; exit $rc"
    return subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=300)


@needs_namespaces
def test_a_read_only_output_folder_is_one_line_before_any_image(torch2d, tmp_path):
    cmd = [sys.executable, "-m", "dlmodel.cli", "predict", torch2d, _tif(tmp_path / "x.tif"), "-o", tmp_path / "ro"]
    res = _in_tmpfs(tmp_path / "ro", "ro,size=1m", cmd)
    assert res.returncode == 2, res.stderr
    assert "cannot write to output folder" in res.stderr and "Read-only" in res.stderr and "Traceback" not in res.stderr


@needs_namespaces
def test_a_full_disk_fails_the_images_that_do_not_fit_and_the_others_go_on(torch2d, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    _tif(images / "a_big.tif", (400, 400))  # 640 KB of float32 output: does not fit in 256 KB
    for name in ("b.tif", "c.tif", "d.tif"):
        _tif(images / name, (32, 32))
    cmd = [sys.executable, "-m", "dlmodel.cli", "predict", torch2d, images, "-o", tmp_path / "full", "--engine", "onnx"]
    res = _in_tmpfs(tmp_path / "full", "size=256k", cmd)
    assert res.returncode == 1, res.stderr
    failed = [line for line in res.stderr.splitlines() if "a_big" in line]
    # ENOSPC, or tifffile's own words for the short write it saw
    assert failed and all("cannot write" in line and "a_big_prob.tif" in line for line in failed), res.stderr
    assert "Traceback" not in res.stderr
    assert "predicted 3 of 4 images" in res.stdout and "1 failed" in res.stdout
    left = res.stdout.split("--- left:")[1].split()
    assert sorted(left) == ["b_prob.tif", "c_prob.tif", "d_prob.tif"]  # nothing half-written, no .part


def test_resume_removes_only_provably_stale_part_files(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = io._HOST
    try:
        parts = {
            "in_flight": tmp_path / f".a_prob.tif.{host}-{alive.pid}.abcd1234.part",
            "killed": tmp_path / f".b_prob.tif.{host}-{dead.pid}.abcd1234.part",
            "other_host_fresh": tmp_path / ".c_prob.tif.node17-123.abcd1234.part",
            "other_host_old": tmp_path / ".d_prob.tif.node17-124.abcd1234.part",
        }
        for p in parts.values():
            p.write_bytes(b"partial")
        old = time.time() - 2 * 3600
        os.utime(parts["other_host_old"], (old, old))
        assert io.remove_stale_parts(tmp_path) == 2
        assert sorted(k for k, p in parts.items() if p.exists()) == ["in_flight", "other_host_fresh"]
    finally:
        alive.kill()
        alive.wait()


# --- 5. rdfs that would cost GBs to parse ----------------------------------------------------------

def test_yaml_alias_bombs_and_huge_rdfs_are_refused_before_parsing(torch2d, tmp_path):
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    rdf = pkg / "bioimageio.yaml"
    original = rdf.read_text()
    lines = ['lol0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    rdf.write_text(original + "\n".join(lines) + "\nbomb: *a9\n")
    assert rdf.stat().st_size < 10_000
    with pytest.raises(dlmodel.SpecError, match="expands to more than .* YAML nodes") as err:
        dlmodel.load(pkg)
    assert "\n" not in str(err.value)
    rdf.write_text(original + "padding: '" + "x" * (5 << 20) + "'\n")
    with pytest.raises(dlmodel.SpecError, match="more than the limit"):
        dlmodel.load(pkg)
    rdf.write_text(original + "harmless: &h [1, 2]\nalso: *h\n")  # a few aliases are fine
    from dlmodel.spec import check_yaml_size

    assert 0 < check_yaml_size(rdf, "test") < 1000


# --- 6. the umask decides permissions, as for any other file --------------------------------------

def test_outputs_and_cache_folders_honour_the_umask(torch2d, tmp_path, cache):
    old = os.umask(0o002)
    try:
        written = io.write_image(tmp_path / "o" / "x.tif", np.zeros((4, 4), np.float32))
        assert written.stat().st_mode & 0o777 == 0o664
        zipped = zoo.zip_folder(torch2d.parent, tmp_path / "pkg.zip")
        unpacked = sources.unpack_to_cache(zipped)
        assert unpacked.stat().st_mode & 0o777 == 0o775
        os.umask(0o077)
        assert io.write_image(tmp_path / "o" / "y.tif", np.zeros((4, 4), np.float32)).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# --- 7. downloads, leftovers, memory, arguments, pipes --------------------------------------------

class _Stream(http.server.BaseHTTPRequestHandler):
    """/endless: bytes without end (bounded at 64 MB); /trickle: a byte every 0.2 s (at most 30 s)."""

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            if self.path == "/endless":
                block = b"a: b\n" * 20_000
                for _ in range((64 << 20) // len(block)):
                    self.wfile.write(block)
            else:
                for _ in range(150):
                    self.wfile.write(b"#")
                    self.wfile.flush()
                    time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def streams():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stream)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_downloads_have_a_size_cap_and_a_deadline(streams, cache, monkeypatch):
    with pytest.raises(dlmodel.SourceError, match="more than the limit"):
        dlmodel.load(f"{streams}/endless")
    monkeypatch.setenv("DLMODEL_HTTP_TIMEOUT", "10")  # each byte arrives well within this
    monkeypatch.setenv("DLMODEL_DOWNLOAD_DEADLINE", "2")
    t0 = time.monotonic()
    with pytest.raises(dlmodel.SourceError, match="still downloading after 2 s"):
        dlmodel.load(f"{streams}/trickle")
    assert time.monotonic() - t0 < 20
    assert not [p for p in (cache / "packages").iterdir() if p.name.startswith(".")]  # no leftovers


def test_staging_folders_of_killed_downloads_are_swept(served_pkg, cache):
    from filelock import FileLock

    url, _ = served_pkg
    packages = cache / "packages"
    packages.mkdir(parents=True)
    killed = packages / ".0123456789abcdef.k1ll3d"
    killed.mkdir()
    (killed / "rdf.yaml").write_text("half")
    busy = packages / ".fedcba9876543210.busy00"
    busy.mkdir()
    holder = FileLock(str(packages / "fedcba9876543210") + ".lock")
    code = f"from filelock import FileLock; import time; l = FileLock({holder.lock_file!r}); l.acquire(); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert dlmodel.load(url).test().ok
        assert not killed.exists()  # its lock was free: abandoned
        assert busy.exists()  # its lock is held by a live process: in use
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def served_pkg(torch2d, tmp_path):
    zoo.copy_package(torch2d.parent, tmp_path / "www" / "pkg")
    server = Server(tmp_path / "www")
    yield f"{server.url}/pkg/bioimageio.yaml", tmp_path / "www" / "pkg"
    server.stop()


def test_memory_is_checked_from_the_file_header_before_reading(torch2d, tmp_path, monkeypatch):
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, np.zeros((3000, 3000), np.uint8))
    with open(big, "r+b") as f:  # header intact, pixels cut off: reading it would fail
        f.truncate(big.stat().st_size // 2)
    monkeypatch.setenv("DLMODEL_MEMORY_LIMIT", str(20 << 20))
    res = cli("predict", torch2d, big, "-o", tmp_path / "out", env={**os.environ})
    assert res.returncode == 1 and "big.tif: its outputs alone need" in res.stderr, res.stderr
    monkeypatch.delenv("DLMODEL_MEMORY_LIMIT")
    res = cli("predict", torch2d, big, "-o", tmp_path / "out")
    assert res.returncode == 1 and "not a readable image" in res.stderr  # so it was not read above


def test_nonsense_arguments_are_one_line_errors(torch2d):
    model = dlmodel.load(torch2d, engine="onnx")
    x = np.ones((20, 20), np.float32)
    for kwargs, match in [
        ({"tile": 0}, "tile=0"), ({"tile": -5}, "tile=-5"), ({"tile": "abc"}, "tile='abc'"),
        ({"tile": [16, 0]}, "tile="), ({"tile": {"y": 0}}, "tile="), ({"batch_size": 0}, "batch_size=0"),
        ({"pad_mode": "bogus"}, "pad_mode='bogus'"), ({"axes": 123}, "axes=123"),
        ({"axes": {"nope": "yx"}}, "axes names input 'nope'"), ({"axes": {"raw": 5}}, "give the axes as letters"),
    ]:
        with pytest.raises(dlmodel.InputError, match=match) as err:
            model.predict(x, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(dlmodel.EngineError, match="threads=0"):
        dlmodel.load(torch2d, threads=0)
    for flag in (["--tile", "0"], ["--batch-size", "0"], ["--threads", "-1"], ["--workers", "0"]):
        res = cli("predict", torch2d, "x.tif", "-o", "out", *flag)
        assert res.returncode == 2 and ">= 1" in res.stderr and "Traceback" not in res.stderr


def test_memory_advice_names_a_tile_that_fits_or_none(nuclei_model, torch2d, monkeypatch):
    model = dlmodel.load(torch2d, engine="onnx")
    x = RNG.normal(size=(1500, 1500)).astype(np.float32)
    monkeypatch.setenv("DLMODEL_MEMORY_LIMIT", str(80 << 20))
    import re

    with pytest.raises(dlmodel.InputError, match=r"tile=(\d+)") as err:
        model.predict(x, tile=1024)
    tile = int(re.search(r"tile=(\d+)", str(err.value)).group(1))
    assert model.predict(x, tile=tile)["prob"].shape == x.shape  # the advice can be followed at once
    fixed = dlmodel.load(nuclei_model, engine="onnx")  # fixed 512x512 tiles: no smaller tile exists
    monkeypatch.setenv("DLMODEL_MEMORY_LIMIT", str(40 << 20))
    with pytest.raises(dlmodel.InputError, match="even the smallest tile the model takes does not fit") as err:
        fixed.predict(RNG.normal(size=(600, 600)).astype(np.float32))
    assert "tile=" not in str(err.value)


def test_info_into_a_closed_pipe_prints_no_traceback(torch2d):
    r, w = os.pipe()
    os.close(r)  # the reader (head) is gone before dlmodel writes
    proc = subprocess.run([sys.executable, "-m", "dlmodel.cli", "info", str(torch2d)], stdout=w,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


# --- 8. trust by origin, not by place ----------------------------------------------------------------

def test_trust_follows_where_a_package_came_from(torch2d, tmp_path, cache):
    assert dlmodel.load(torch2d, engine="pytorch").test().ok  # a folder the user made: theirs
    with pytest.raises(dlmodel.TrustError, match="set not to be trusted"):
        dlmodel.load(torch2d, engine="pytorch", trust=False)  # "No" means no, for a folder too
    zipped = zoo.zip_folder(torch2d.parent, tmp_path / "from_the_web.zip")
    with pytest.raises(dlmodel.TrustError, match="comes from a zip archive.*tiny_arch.py.*trust=True"):
        dlmodel.load(zipped, engine="pytorch")
    assert dlmodel.load(zipped, engine="pytorch", trust=True).test().ok
    assert dlmodel.load(zipped, engine="onnx").test().ok  # ONNX runs no package code
    # the unpacked folder (or a copy of it) still says where it came from
    unpacked = sources.unpack_to_cache(zipped)
    copy = shutil.copytree(unpacked, tmp_path / "copied")
    for folder in (unpacked, copy):
        with pytest.raises(dlmodel.TrustError, match="comes from a zip archive"):
            dlmodel.load(folder, engine="pytorch")


def test_module_names_of_package_code_are_unique_per_package(torch2d, tmp_path):
    """Two packages that both ship ``tiny_arch.py`` (different code) each get their own module."""
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "other")
    arch = pkg / "tiny_arch.py"
    arch.write_text(arch.read_text().replace("return self.up(y) if self.up is not None else y",
                                             "return -(self.up(y) if self.up is not None else y)"))
    rdf = pkg / "bioimageio.yaml"
    rdf.write_text(rdf.read_text().replace(zoo.sha256(torch2d.parent / "tiny_arch.py"), zoo.sha256(arch)))
    x = RNG.normal(size=(32, 32)).astype(np.float32)
    a = dlmodel.load(torch2d, engine="pytorch").predict(x)["prob"]
    b = dlmodel.load(pkg, engine="pytorch").predict(x)["prob"]
    assert not np.allclose(a, b)
