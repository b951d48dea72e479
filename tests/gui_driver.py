"""Drive the real CellProfiler window, as a user would, for tests/test_gui.py.

Run under a virtual display by the test (or by hand: ``DISPLAY=:99 python tests/gui_driver.py ...``).
CellProfiler starts exactly as ``cellprofiler -p PIPELINE -i IMAGES -o OUT --plugins-directory
plugins`` does; a second thread then plays the user through wx's own event loop
(``wx.CallAfter``): it opens the Add-module dialog on RunDLModel's category, selects the module in
the pipeline to show its settings, runs it in test mode with its display window open, and then
presses Analyze Images with the number of workers given. Last, it presses *Choose a model…*:
types "nuclei" in the search box, ticks "Runs here", picks a zoo model, presses *Use this model*
(downloaded with its progress dialog), and reads what *Check model* then says. Screenshots are
taken from the X display (ImageMagick's ``import``), so they show what a user would see.

Prints one JSON line at the end: what it saw (``{"ok": true, ...}``), or the first failure.
``--write-preferences`` only writes CellProfiler's preferences for a fresh HOME (no telemetry
prompt, no welcome screen, no "analysis complete" box, the number of workers, Bio-Formats off
as on an offline machine) and exits.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

MODULE = "RunDLModel"


def write_preferences(workers: int) -> None:
    import wx

    app = wx.App(0)  # CellProfiler's preferences live in a wx.Config file under HOME
    from cellprofiler_core import preferences as p

    p.set_telemetry_prompt(False)
    p.set_telemetry(False)
    p.set_startup_blurb(False)
    p.set_show_analysis_complete_dlg(False)
    p.set_show_exiting_test_mode_dlg(False)
    p.set_max_workers(workers)
    # Offline: Bio-Formats would fetch Java jars from Maven before reading the first TIFF. The
    # GUI's File > Preferences > Configure Readers does this; the workers get it from the GUI.
    p.config_write_typed("Reader.Bio-Formats.enabled", False, bool)
    p.get_config().Flush()
    app.Destroy()


class Driver:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.shots = Path(args.shots)
        self.shots.mkdir(parents=True, exist_ok=True)
        self.report: dict = {"ok": False, "screenshots": {}}

    # -- helpers -------------------------------------------------------------------------
    def gui(self, fn: Callable[[], Any], timeout: float = 600) -> Any:
        """Run ``fn`` in the GUI thread and return its result (exceptions come back here)."""
        import wx

        done = threading.Event()
        box: dict = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the driver thread
                box["error"] = e
            finally:
                done.set()

        wx.CallAfter(call)
        if not done.wait(timeout):
            raise TimeoutError(f"the GUI did not answer within {timeout} s")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 300, every: float = 0.5,
             dialogs: bool = False) -> Any:
        """Poll ``check`` in the GUI thread until it is true; a modal dialog fails the wait
        unless ``dialogs`` (the step itself opened one)."""
        print(f"GUI-DRIVER waiting for {what}", file=sys.stderr, flush=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            value, dialog = self.gui(lambda: (check(), "" if dialogs else _modal_dialog()))
            if dialog:  # an error box instead of what we wait for: report it, do not hang
                raise AssertionError(f"while waiting for {what}, a dialog appeared: {dialog}")
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"waited {timeout} s for {what}")

    def shot(self, name: str, window: Any, raise_window: bool = True) -> None:
        """Screenshot of one window's part of the X display (raised first, unless a dialog that
        is not a wx window, such as GTK's message box, must stay on top of it)."""
        import wx

        def rect() -> tuple:
            if raise_window:
                window.Raise()
            window.Refresh()
            wx.Window.Update(window)  # (a ProgressDialog's own Update sets its value)
            r = window.GetScreenRect()
            return r.x, r.y, r.width, r.height

        self.gui(rect)
        time.sleep(1.5)  # let GTK finish painting
        x, y, w, h = self.gui(rect)
        path = self.shots / f"{name}.png"
        subprocess.run(["import", "-window", "root", "-crop", f"{w}x{h}+{max(x, 0)}+{max(y, 0)}", "+repage", str(path)],
                       check=True, capture_output=True)
        self.report["screenshots"][name] = str(path)

    # -- the user's session ----------------------------------------------------------------
    def run(self) -> None:
        import wx

        try:
            # CellProfiler's preferences may make a throw-away wx.App before the real one:
            # wait for the App that owns the main window before posting anything to it
            t0 = time.time()
            while getattr(wx.GetApp(), "frame", None) is None:
                if time.time() - t0 > 300:
                    raise TimeoutError("CellProfiler did not start its window within 300 s")
                time.sleep(0.5)
            frame = self.wait("the main window", lambda: getattr(wx.GetApp(), "frame", None)
                              and wx.GetApp().frame.IsShown() and wx.GetApp().frame)
            # a user would give the window the screen (1600x1000 here)
            self.gui(lambda: (frame.SetPosition((0, 0)), frame.SetSize((1580, 960))))
            plc = frame.pipeline_controller
            pipeline = self.wait("the pipeline", lambda: plc._PipelineController__pipeline.modules() and
                                 plc._PipelineController__pipeline)
            module = next(m for m in pipeline.modules() if m.module_name == MODULE)
            self.wait("the image files", lambda: len(plc._PipelineController__workspace.file_list.get_filelist())
                      >= self.args.min_files, timeout=120)
            self.add_module_dialog(plc)
            self.settings_panel(frame, module)
            self.test_mode(frame, plc, pipeline, module)
            self.analyze(plc)
            if self.args.choose:
                self.choose_model(frame, module)
            self.report["ok"] = True
        except BaseException as e:  # noqa: BLE001 - reported to the test, then the app ends
            self.report["error"] = f"{type(e).__name__}: {e}"
            self.report["traceback"] = traceback.format_exc()[-4000:]
            path = self.shots / "failure.png"  # what the screen showed when it went wrong
            subprocess.run(["import", "-window", "root", str(path)], capture_output=True)
            self.report["screenshots"]["failure"] = str(path)
        finally:
            print("GUI-DRIVER " + json.dumps(self.report), flush=True)
            self.quit()

    def add_module_dialog(self, plc: Any) -> None:
        """Edit > Add module: the dialog opens; choose RunDLModel's category, then the module."""
        import wx

        def open_and_choose() -> Any:
            plc.open_add_modules()
            dlg = plc._PipelineController__add_module_frame
            boxes = [w for w in _descendants(dlg) if isinstance(w, wx.ListBox)]
            categories, modules = boxes[0], boxes[1]
            idx = categories.FindString(self.args.category)
            if idx == wx.NOT_FOUND:
                raise AssertionError(f"no category {self.args.category!r} in the Add-module dialog: {categories.GetItems()}")
            categories.SetSelection(idx)
            evt = wx.CommandEvent(wx.wxEVT_LISTBOX, categories.GetId())
            evt.SetInt(idx)
            evt.SetEventObject(categories)
            categories.GetEventHandler().ProcessEvent(evt)
            # plugins are listed with a puzzle-piece mark: "\N{JIGSAW PUZZLE PIECE} RunDLModel"
            found = next((i for i, item in enumerate(modules.GetItems()) if item.split()[-1] == MODULE), wx.NOT_FOUND)
            if found == wx.NOT_FOUND:
                raise AssertionError(f"{MODULE} is not listed under {self.args.category!r}: {modules.GetItems()}")
            modules.SetSelection(found)
            modules.EnsureVisible(found)
            self.report["add_module_list"] = modules.GetItems()
            return dlg

        dlg = self.gui(open_and_choose)
        self.shot("add_module_dialog", dlg)
        self.gui(lambda: dlg.Hide())

    def settings_panel(self, frame: Any, module: Any) -> None:
        """Click RunDLModel in the pipeline: its settings, with the model's information."""
        import wx

        def select() -> Any:
            frame._CPFrame__pipeline_list_view.select_one_module(module.module_num)
            panel = frame._CPFrame__module_view.module_panel
            texts = [w.GetLabel() for w in _descendants(panel) if isinstance(w, wx.StaticText)]
            html = [w.ToText() for w in _descendants(panel) if hasattr(w, "ToText")]
            return texts, html

        texts, html = self.gui(select)
        self.report["settings_labels"] = texts
        self.report["settings_html"] = html
        self.shot("settings_panel", frame)

    def test_mode(self, frame: Any, plc: Any, pipeline: Any, module: Any) -> None:
        """Start Test Mode, step through the modules up to RunDLModel with its window shown."""
        module.show_window = True
        self.gui(lambda: plc.on_debug_start(None))
        self.wait("test mode", plc.is_in_debug_mode)
        t0 = time.time()
        while True:
            current = self.gui(plc.current_debug_module)
            if current is None:
                raise AssertionError("test mode ended before RunDLModel ran")
            ok = self.gui(lambda: plc.do_step(current))
            if not ok:
                raise AssertionError(f"test mode: module {current.module_name} #{current.module_num} failed")
            self.gui(plc.next_debug_module)
            if current is module:
                break
        self.report["test_mode_seconds"] = round(time.time() - t0, 2)
        measurements = plc._PipelineController__debug_measurements
        self.report["test_mode_count"] = self.gui(
            lambda: int(measurements.get_current_image_measurement(f"Count_{self.args.objects}")))
        fig = self.wait("RunDLModel's display window", lambda: _figure_of(module))
        self.gui(lambda: fig.SetSize((1200, 560)))  # as a user would, to see the three panels
        self.shot("display_window", fig)
        self.gui(lambda: fig.Close())
        self.gui(plc.stop_debugging)

    def analyze(self, plc: Any) -> None:
        """Analyze Images; wait until the run has finished."""
        t0 = time.time()
        self.gui(lambda: plc.do_analyze_images())
        self.wait("the analysis to start", plc.is_running, timeout=120)
        self.wait("the analysis to finish", lambda: not plc.is_running(), timeout=self.args.timeout, every=2)
        self.report["analysis_seconds"] = round(time.time() - t0, 1)

    def choose_model(self, frame: Any, module: Any) -> None:
        """Choose a model…: search "nuclei", tick Runs here, pick the zoo model ``--choose``, Use
        this model (downloaded with a progress dialog); the Model setting then holds it and Check
        model runs, its answer in a message box that a user closes with Return."""
        import wx

        checked = _Caught("Check model (")
        logging.getLogger().addHandler(checked)

        def press() -> None:
            frame._CPFrame__pipeline_list_view.select_one_module(module.module_num)
            panel = frame._CPFrame__module_view.module_panel
            button = next(w for w in _descendants(panel) if isinstance(w, wx.Button) and w.GetLabel() == "Choose a model…")
            evt = wx.CommandEvent(wx.wxEVT_BUTTON, button.GetId())
            evt.SetEventObject(button)
            # posted, not waited for: the dialog is modal, this call returns when it closes
            wx.CallAfter(button.GetEventHandler().ProcessEvent, evt)

        self.gui(press)
        dlg = self.wait("the Choose a model dialog and its catalogue", lambda: (
            _chooser() is not None and _chooser().loading is not None and _chooser().loading.done() and _chooser()),
            timeout=300, dialogs=True)
        self.report["chooser_all"] = self.gui(lambda: [e.id for e in dlg.entries])

        def search_and_filter() -> list:
            dlg.search.SetValue("nuclei")  # as typed: the list follows each keystroke (EVT_TEXT)
            dlg.runs_here.SetValue(True)
            evt = wx.CommandEvent(wx.wxEVT_CHECKBOX, dlg.runs_here.GetId())
            evt.SetInt(1)
            evt.SetEventObject(dlg.runs_here)
            dlg.runs_here.GetEventHandler().ProcessEvent(evt)
            return [(e.id, e.runs_here) for e in dlg.shown]

        self.report["chooser_shown"] = self.gui(search_and_filter)

        def pick(model: str) -> str:
            index = next((i for i, e in enumerate(dlg.shown) if e.id == model), None)
            if index is None:
                raise AssertionError(f"{model} is not listed: {[e.id for e in dlg.shown]}")
            dlg.models.Select(index)  # a click on the row (EVT_LIST_ITEM_SELECTED shows its card)
            dlg.models.Focus(index)
            return dlg.selected.id if dlg.selected else ""

        def use() -> None:
            wx.CallAfter(_click, dlg.use)  # posted: the download's progress dialog is modal

        self.report["chooser_selected"] = self.gui(lambda: pick(self.args.choose))
        self.wait("the model's card with its cover", lambda: "Loading the cover" not in dlg.card.ToText(), timeout=120,
                  dialogs=True)
        self.report["chooser_card"] = self.gui(dlg.card.ToText)
        self.shot("choose_model_dialog", dlg)
        if self.args.cancel:  # first a download the user cancels: the dialog stays, the cache keeps nothing
            self.gui(lambda: pick(self.args.cancel))
            self.gui(use)
            progress = self.wait("the download's progress dialog, with a first block", lambda: (
                (p := _shown_titled("RunDLModel: downloading the model")) and " MB" in _texts(p) and p), timeout=120,
                dialogs=True)
            self.report["download_progress"] = self.gui(lambda: _texts(progress))
            self.shot("choose_model_download", progress)
            self.gui(lambda: _click(next(b for b in _descendants(progress) if isinstance(b, wx.Button)
                                         and b.GetId() == wx.ID_CANCEL)))
            self.wait("the download to stop", lambda: _shown_titled("RunDLModel: downloading the model") is None
                      and "cancelled" in dlg.status.GetLabel(), timeout=120, dialogs=True)
            self.report["chooser_status_after_cancel"] = self.gui(dlg.status.GetLabel)
            self.gui(lambda: pick(self.args.choose))
        self.gui(use)
        self.wait("the download, and the dialog to close", lambda: _chooser() is None, timeout=600, dialogs=True)
        self.wait("Check model's answer", lambda: checked.messages, timeout=600, dialogs=True)
        self.report["chosen_model"] = self.gui(lambda: module.model_source.value)
        self.report["check_message"] = checked.messages[0]
        time.sleep(1.5)  # the message box is native (GTK): a screenshot, then Return as a user would
        self.shot("choose_model_checked", frame, raise_window=False)
        subprocess.run(["xdotool", "key", "Return"], check=True, capture_output=True)
        self.wait("the message box to close", lambda: not _native_dialog("RunDLModel: check model"), timeout=60,
                  dialogs=True)

        def settings() -> list:
            frame._CPFrame__pipeline_list_view.select_one_module(module.module_num)
            panel = frame._CPFrame__module_view.module_panel
            return [w.ToText() for w in _descendants(panel) if hasattr(w, "ToText")]

        self.report["settings_html_chosen"] = self.gui(settings)
        logging.getLogger().removeHandler(checked)

    def quit(self) -> None:
        import wx

        try:
            from cellprofiler_core.analysis._runner import Runner

            Runner.stop_workers()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
        sys.stdout.flush()
        code = 0 if self.report["ok"] else 3
        if wx.GetApp() is None:
            os._exit(code)
        wx.CallAfter(lambda: os._exit(code))


def _descendants(window: Any) -> list:
    out = []
    for child in window.GetChildren():
        out.append(child)
        out.extend(_descendants(child))
    return out


def _modal_dialog() -> str:
    """Title and text of a modal dialog on screen, or ''."""
    import wx

    for w in wx.GetTopLevelWindows():
        if isinstance(w, wx.Dialog) and w.IsShown() and w.IsModal():
            texts = [c.GetLabel() for c in _descendants(w) if isinstance(c, wx.StaticText)]
            return f"{w.GetTitle()!r}: {' | '.join(t for t in texts if t)}"
    return ""


class _Caught(logging.Handler):
    """The log messages that start with ``prefix`` (what Check model said)."""

    def __init__(self, prefix: str):
        super().__init__(logging.INFO)
        self.prefix, self.messages = prefix, []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.prefix):
            self.messages.append(message)


def _click(button: Any) -> None:
    """A click on a wx button, as its own event."""
    import wx

    evt = wx.CommandEvent(wx.wxEVT_BUTTON, button.GetId())
    evt.SetEventObject(button)
    button.GetEventHandler().ProcessEvent(evt)


def _shown_titled(title: str) -> Any:
    import wx

    return next((w for w in wx.GetTopLevelWindows() if w.IsShown() and w.GetTitle() == title), None)


def _texts(window: Any) -> str:
    import wx

    return " | ".join(c.GetLabel() for c in _descendants(window) if isinstance(c, wx.StaticText) and c.GetLabel())


def _chooser() -> Any:
    """RunDLModel's Choose a model dialog, if shown."""
    import wx

    from dlmodel.gui.chooser import ChooserDialog

    return next((w for w in wx.GetTopLevelWindows() if isinstance(w, ChooserDialog) and w.IsShown()), None)


def _native_dialog(title: str) -> bool:
    """Whether a window titled ``title`` is mapped on the display (GTK's message boxes are not wx windows)."""
    found = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", title], capture_output=True, text=True)
    return bool(found.stdout.strip())


def _figure_of(module: Any) -> Any:
    import wx

    for w in wx.GetTopLevelWindows():
        if w.IsShown() and f"#{module.module_num}" in w.GetTitle() and module.module_name in w.GetTitle():
            return w
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline")
    ap.add_argument("--images")
    ap.add_argument("--out")
    ap.add_argument("--plugins")
    ap.add_argument("--shots")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--category", default="Object Processing")
    ap.add_argument("--objects", default="Nuclei")
    ap.add_argument("--min-files", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--choose", default="", help="the zoo id to pick in Choose a model… (last step; none: skipped)")
    ap.add_argument("--cancel", default="", help="a zoo id whose download is started, then cancelled, before that")
    ap.add_argument("--write-preferences", action="store_true")
    args = ap.parse_args()
    if args.write_preferences:
        write_preferences(args.workers)
        return 0
    threading.Thread(target=Driver(args).run, daemon=True).start()
    from cellprofiler.__main__ import main as cellprofiler_main

    # exactly the command line a user types (CellProfiler parses sys.argv itself)
    sys.argv = ["cellprofiler", "-p", args.pipeline, "-i", args.images, "-o", args.out, "--plugins-directory", args.plugins,
                # offline: CellProfiler's Bio-Formats reader would fetch Java jars from Maven first
                "--enable-readers", "imageio_reader", "imageio_reader_v3", "-L", "INFO"]
    return cellprofiler_main(sys.argv) or 0


if __name__ == "__main__":
    sys.exit(main())
