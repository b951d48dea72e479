"""RunDLModel in the real CellProfiler window, on a virtual display (``make gui-test``).

A real Xvfb server, the real CellProfiler 5 GUI (Debian's wxPython) with the plugins folder,
driven by tests/gui_driver.py as a user would: Add-module dialog, the module's settings, test mode
with the display window, then Analyze Images with two worker processes. The exported CSVs must
equal those of a headless run of the same pipeline. Last, *Choose a model…* (issue 26): search,
filter, pick a model of a zoo listing served from 127.0.0.1, use it (downloaded), and Check model
says it reproduces its test outputs. Screenshots go to $DLMODEL_GUI_SHOTS (default: the test's
temporary folder); ``make gui-test`` copies them into docs/images/.
"""
import csv
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DSB_VAL, NUCLEI_MODEL, ROOT

pytestmark = pytest.mark.gui

CELLPROFILER = Path(sys.executable).parent / "cellprofiler"
DRIVER = ROOT / "tests" / "gui_driver.py"
PIPELINE = ROOT / "example_pipelines" / "nuclei.cppipe"
CHOSEN = "affable-shark"  # the zoo model Choose a model… picks: UNet 2D Nuclei Broad, served from 127.0.0.1
CANCELLED = "slow-shark"  # the same package, its files served slowly: its download is cancelled in the window
# Columns that differ between any two runs: timings, and where the files were written.
VOLATILE = ("ExecutionTime_", "DLModel_InferenceSeconds_", "PathName_", "URL_", "ModuleError_")


def _missing() -> str:
    try:
        import wx  # noqa: F401
    except ImportError:
        return "wxPython is not importable: run `make gui-test` (a venv with Debian's python3-wxgtk4.0)"
    for tool in ("Xvfb", "import", "xdotool"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run `make gui-test` (it installs xvfb, imagemagick and xdotool)"
    if not CELLPROFILER.exists():
        return "cellprofiler is not installed in this venv"
    return ""


@pytest.fixture(scope="module")
def display():
    why = _missing()
    if why:
        pytest.skip(why)
    # -displayfd: Xvfb picks a free display and writes its number once it accepts clients (its
    # socket file appears earlier, and a client that connects then can fail: seen in CI)
    read, write = os.pipe()
    # -noreset: by default Xvfb resets itself when its last client leaves, and a client that
    # connects during the reset fails ("unable to initialize wxWidgets"): seen after the
    # connection check below, and after the preferences process
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1600x1000x24", "-nolisten", "tcp",
                             "-noreset"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    while not number.endswith(b"\n"):
        if not select.select([read], [], [], 30)[0]:
            proc.kill()
            pytest.fail("Xvfb did not start in 30 s")
        chunk = os.read(read, 16)
        if not chunk:
            pytest.fail(f"Xvfb exited ({proc.wait()}) before it accepted clients")
        number += chunk
    os.close(read)
    display = f":{int(number)}"
    # and a real client must get in before CellProfiler tries: one fresh-clone CI run saw wx fail
    # to open the display it had just been given
    deadline = time.time() + 30
    while subprocess.run(["xdotool", "getdisplaygeometry"], env={**os.environ, "DISPLAY": display},
                         capture_output=True).returncode != 0:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"no X client could connect to Xvfb on {display} (Xvfb exit status: {proc.poll()})")
        time.sleep(0.2)
    yield display
    proc.terminate()
    proc.wait(10)


class _SlowServer:
    """A static file server on 127.0.0.1 that sends the files of ``slow-*`` packages (all but
    their rdf) 32 kB at a time, 10 times a second: a download a user has time to cancel."""

    def __init__(self, root: Path):
        import functools
        import http.server
        import threading

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def copyfile(self, source, outputfile):
                if "/slow-" not in self.path or self.path.endswith(".yaml"):
                    return super().copyfile(source, outputfile)
                try:
                    while True:
                        block = source.read(32 << 10)
                        if not block:
                            return
                        outputfile.write(block)
                        time.sleep(0.1)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the download was cancelled

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def zoo_listing(tmp_path_factory):
    """The zoo's listing and packages, in the service's own format, served from 127.0.0.1: three
    models that run here (one of them slow to download), one that needs TensorFlow, one whose
    rdf is invalid."""
    from test_catalog import _publish

    www = tmp_path_factory.mktemp("zoo")
    items = [
        _publish(www, CHOSEN, NUCLEI_MODEL, 500),
        _publish(www, CANCELLED, NUCLEI_MODEL, 7, lambda m: m.update(name="Nuclei U-Net on a slow server")),
        _publish(www, "fixed-unet", ROOT / "tests" / "fixtures" / "spec_examples" / "unet2d_fixed_shape", 5),
        _publish(www, "tf-nuclei", ROOT / "models" / "nuclei_default", 3, lambda m: m.update(name="TF-only nuclei", weights={
            "tensorflow_saved_model_bundle": {"source": "weights.onnx", "tensorflow_version": "2.15.0"}})),
        _publish(www, "broken-nuclei", ROOT / "models" / "nuclei_default", 2, lambda m: m.pop("inputs")),
    ]
    (www / "children").write_text(json.dumps(items))
    server = _SlowServer(www)
    yield {"DLMODEL_CATALOG_URL": f"{server.url}/children", "DLMODEL_ZOO_URL": f"{server.url}/{{id}}/files/rdf.yaml"}
    server.stop()


@pytest.fixture(scope="module")
def gui_run(display, zoo_listing, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")  # fresh CellProfiler preferences
    out = tmp_path_factory.mktemp("gui_out")
    cache = tmp_path_factory.mktemp("gui_cache")  # what Choose a model… downloads
    shots = Path(os.environ.get("DLMODEL_GUI_SHOTS") or tmp_path_factory.mktemp("shots"))
    env = {**os.environ, "DISPLAY": display, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "NO_AT_BRIDGE": "1", "DLMODEL_CACHE": str(cache), **zoo_listing}
    prefs = subprocess.run([sys.executable, str(DRIVER), "--write-preferences", "--workers", "2"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert prefs.returncode == 0, prefs.stderr[-2000:]
    t0 = time.time()
    res = subprocess.run(
        [sys.executable, str(DRIVER), "--pipeline", str(PIPELINE), "--images", str(DSB_VAL / "images"),
         "--out", str(out), "--plugins", str(ROOT / "plugins"), "--shots", str(shots), "--workers", "2",
         "--min-files", "32", "--choose", CHOSEN, "--cancel", CANCELLED],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("GUI-DRIVER {")), None)
    assert line, f"the driver reported nothing (exit {res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    report = json.loads(line[len("GUI-DRIVER "):])
    report["seconds"] = time.time() - t0
    report["log"] = res.stderr
    report["cache"] = cache
    return report, out, shots


@pytest.fixture(scope="module")
def headless_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("headless_out")
    cmd = [str(CELLPROFILER), "-c", "-r", "-p", str(PIPELINE), "--plugins-directory", str(ROOT / "plugins"),
           "-i", str(DSB_VAL / "images"), "-o", str(out), "--enable-readers", "imageio_reader", "imageio_reader_v3"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_the_user_session_runs_through(gui_run):
    report, _, _ = gui_run
    assert report["ok"], f"{report.get('error')}\n{report.get('traceback', '')}"


def test_add_module_dialog_lists_rundlmodel_with_the_object_modules(gui_run):
    report, _, shots = gui_run
    names = [n.split()[-1] for n in report["add_module_list"]]
    assert "RunDLModel" in names and "IdentifyPrimaryObjects" in names
    _looks_like_a_window(shots / "add_module_dialog.png")


def test_settings_panel_shows_the_model(gui_run):
    report, _, shots = gui_run
    info = " ".join(report["settings_html"])
    assert "RunDLModel StarDist-style nuclei" in info and "Licence: MIT" in info and "input raw" in info, info
    assert "Cite: Schmidt, Weigert, Broaddus, Myers. Cell Detection with Star-convex Polygons" in info, info
    assert "Cite: Caicedo et al. Nucleus segmentation" in info and "(doi:10.1038/s41592-019-0612-7)" in info, info
    labels = " ".join(report["settings_labels"])
    for setting in ("Model", "Model information", "Input image", "Name the objects"):
        assert setting in labels, labels
    _looks_like_a_window(shots / "settings_panel.png")


def test_display_window_after_a_test_mode_step(gui_run):
    report, _, shots = gui_run
    assert report["test_mode_count"] > 0  # nuclei found on the first image set
    _looks_like_a_window(shots / "display_window.png")


def test_workers_share_the_cores(gui_run):
    """Each of the 2 analysis workers loads the model once, with cores / 2 engine threads."""
    report, _, _ = gui_run
    loads = [ln for ln in report["log"].splitlines() if "dlmodel: loaded model" in ln]
    threads = max(1, (os.cpu_count() or 1) // 2)
    workers = [ln for ln in loads if f"{threads} engine threads" in ln]
    assert len(workers) >= 2, loads


def test_analyze_images_with_two_workers_exports_what_a_headless_run_does(gui_run, headless_run):
    _, gui_out, _ = gui_run
    for table, key in (("Image.csv", ("ImageNumber",)), ("Nuclei.csv", ("ImageNumber", "ObjectNumber"))):
        gui_rows, head_rows = _rows(gui_out / table, key), _rows(headless_run / table, key)
        assert len(gui_rows) == len(head_rows) > 0, table
        columns = [c for c in head_rows[0] if not c.startswith(VOLATILE)]
        assert set(columns) <= set(gui_rows[0]), sorted(set(columns) - set(gui_rows[0]))
        for g, h in zip(gui_rows, head_rows):
            for c in columns:
                if g[c] != h[c]:
                    assert _close(g[c], h[c]), f"{table} row {[h[k] for k in key]}, {c}: GUI {g[c]!r} vs headless {h[c]!r}"


def _rows(path: Path, key: tuple) -> list:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda r: tuple(int(r[k]) for k in key))


def _close(a: str, b: str) -> bool:
    if {a.lower(), b.lower()} <= {"", "nan"}:  # a missing plane index: the GUI writes nan, headless nothing
        return True
    try:
        return bool(np.isclose(float(a), float(b), rtol=1e-6, atol=1e-9))
    except ValueError:
        return False


def _looks_like_a_window(png: Path) -> None:
    """A real capture: a sizeable picture with many colours, not a black or empty frame."""
    from PIL import Image

    assert png.exists(), png
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[0] > 150 and img.shape[1] > 200, img.shape
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50, f"{png} is nearly blank"


def test_choose_a_model_searches_filters_and_shows_the_card(gui_run):
    report, _, shots = gui_run
    everything = set(report["chooser_all"])
    assert {CHOSEN, CANCELLED, "fixed-unet", "tf-nuclei", "broken-nuclei"} <= everything  # the zoo's
    assert str(ROOT / "models" / "nuclei_default") in everything  # and this computer's
    shown = dict(report["chooser_shown"])  # after typing "nuclei" and ticking Runs here
    assert CHOSEN in shown and CANCELLED in shown and all(shown.values()) and "broken-nuclei" not in shown and "fixed-unet" not in shown
    assert report["chooser_selected"] == CHOSEN
    card = report["chooser_card"]
    for words in ("UNet 2D Nuclei Broad", "zoo id affable-shark", "Runs here", "MIT", "Constantin Pape",
                  "Ronneberger", "doi:10.1007/978-3-319-24574-4_28", "onnx, torchscript", "raw: axes bcyx, 1 channel"):
        assert words in card, (words, card)
    assert "No cover" not in card, card
    _looks_like_a_window(shots / "choose_model_dialog.png")


def test_a_download_cancelled_in_the_window_keeps_nothing(gui_run):
    report, _, shots = gui_run
    progress = report["download_progress"]  # what the progress dialog said before Cancel was pressed
    assert "Nuclei U-Net on a slow server" in progress and " MB" in progress, progress
    assert report["chooser_status_after_cancel"] == (
        f"The download of {CANCELLED} was cancelled; nothing of it was kept"), report["chooser_status_after_cancel"]
    packages = report["cache"] / "packages"
    folders = [p for p in packages.iterdir() if p.is_dir()]
    # only the model used afterwards, complete: no staging folder, no part file, nothing of the cancelled one
    assert len(folders) == 1 and (folders[0] / ".dlmodel-complete").is_file(), list(packages.iterdir())
    assert not list(packages.rglob("*.part-*")), list(packages.rglob("*"))
    _looks_like_a_window(shots / "choose_model_download.png")


def test_use_this_model_downloads_fills_the_setting_and_checks_the_model(gui_run):
    report, _, shots = gui_run
    assert report["chosen_model"] == CHOSEN
    # downloaded and verified into the cache the CellProfiler process was given
    assert any((p / ".dlmodel-complete").is_file() for p in (report["cache"] / "packages").iterdir()), list(
        (report["cache"] / "packages").iterdir())
    assert report["check_message"].startswith(f"Check model ({CHOSEN}):"), report["check_message"]
    assert report["check_message"].endswith("The model reproduces its test outputs."), report["check_message"]
    info = " ".join(report["settings_html_chosen"])
    assert "UNet 2D Nuclei Broad" in info and "Cite: Ronneberger" in info, info
    # cover thumbnails: the card's and each model information's
    assert len(list((report["cache"] / "covers").glob("*.png"))) >= 3
    _looks_like_a_window(shots / "choose_model_checked.png")
