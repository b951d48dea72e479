"""RunDLModel's *Choose a model…* dialog (wx): the catalogue, searched and filtered, each model's
card, and *Use this model*, which downloads it with a progress dialog that can be cancelled.

Imported only by the button that opens it (it imports wx). Everything slow (reading the zoo's
listing and every card, covers, downloads) runs on one background thread; the window is never
blocked by the network.

>>> from dlmodel.gui.chooser import choose_model     # doctest: +SKIP
>>> choose_model(parent_window, current="models/nuclei_default")  # doctest: +SKIP
'affable-shark'
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, List, Optional

import wx
import wx.html

from .. import catalog
from ..errors import DLModelError, one_line
from . import cards

TITLE = "RunDLModel: choose a model"
ANY_TASK = "Any task"
ANY_TAG = "Any tag"
_POOL: List[ThreadPoolExecutor] = []
# the zoo's entries (and its note), read once per CellProfiler session: the listing is cached
# on disk for a day anyway; *Refresh* reads it again
_ZOO: dict = {}


def choose_model(parent: Optional[wx.Window], current: str = "") -> Optional[str]:
    """Show the dialog; the new value of the Model setting (a zoo id, ``models/NAME``, a folder,
    a zip or an rdf), or None when the user cancels."""
    with ChooserDialog(parent, current) as dlg:
        return dlg.chosen if dlg.ShowModal() == wx.ID_OK else None


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="RunDLModel-chooser"))
    return _POOL[0]


def _read_catalog(refresh: bool) -> catalog.Catalog:
    """This machine's models (read each time: a download adds one), then the zoo's."""
    local = catalog.search(zoo=False, local=True)
    if refresh or "entries" not in _ZOO:
        zoo = catalog.search(zoo=True, local=False, refresh=refresh)
        _ZOO.update(entries=zoo.entries, note=zoo.note)
    return catalog.Catalog(local.entries + list(_ZOO["entries"]), _ZOO["note"])


class ModelList(wx.ListCtrl):
    """The models listed: a virtual list (the zoo has over a thousand; each keystroke lists them
    again without making a row each), greyed where they do not run here."""

    COLUMNS = (("Model", 240), ("Task", 160), ("From", 100), ("Runs here", 110))

    def __init__(self, parent: wx.Window):
        super().__init__(parent, style=wx.LC_REPORT | wx.LC_SINGLE_SEL | wx.LC_VIRTUAL, name="models")
        for i, (label, width) in enumerate(self.COLUMNS):
            self.InsertColumn(i, label, width=width)
        self.rows: List[catalog.Entry] = []
        self.grey = wx.ItemAttr()
        self.grey.SetTextColour(wx.Colour(120, 120, 120))

    def show(self, entries: List[catalog.Entry]) -> None:
        selected = self.GetFirstSelected()
        if selected != -1:
            self.Select(selected, False)
        self.rows = entries
        self.SetItemCount(len(entries))
        self.Refresh()

    def OnGetItemText(self, item: int, column: int) -> str:
        e = self.rows[item]
        runs = "cannot be read" if e.problem else "yes" if e.runs_here else "no"
        return (e.name, e.task or "—", cards.SHORT_ORIGINS.get(e.origin, e.origin), runs)[column]

    def OnGetItemAttr(self, item: int) -> Optional[wx.ItemAttr]:
        e = self.rows[item]
        return self.grey if e.problem or not e.runs_here else None


class ChooserDialog(wx.Dialog):
    """Search box, task / tag / runs-here filters, the list, the selected model's card;
    *Browse…*, *Cancel*, *Use this model*. ``chosen`` holds the answer once it closes with OK."""

    def __init__(self, parent: Optional[wx.Window], current: str = ""):
        super().__init__(parent, title=TITLE, size=(1180, 740), style=wx.DEFAULT_DIALOG_STYLE | wx.RESIZE_BORDER)
        self.current = current.strip()
        self.chosen: Optional[str] = None
        self.entries: List[catalog.Entry] = []
        self.shown: List[catalog.Entry] = []
        self.selected: Optional[catalog.Entry] = None
        self.note = ""
        self.loading: Optional[Future] = None

        self.search = wx.SearchCtrl(self, size=(320, -1), name="search")
        self.search.ShowCancelButton(True)
        self.search.SetDescriptiveText("Search names, descriptions, tags")
        self.task = wx.Choice(self, choices=[ANY_TASK, *catalog.TASKS], name="task")
        self.task.SetSelection(0)
        self.tag = wx.Choice(self, choices=[ANY_TAG], name="tag")
        self.tag.SetSelection(0)
        self.runs_here = wx.CheckBox(self, label="Runs here", name="runs_here")
        self.runs_here.SetToolTip("Only models that run with the engines installed in CellProfiler's Python")
        self.refresh = wx.Button(self, label="Refresh")
        self.refresh.SetToolTip("Fetch the BioImage Model Zoo's list of models again")
        self.models = ModelList(self)
        self.card = wx.html.HtmlWindow(self, name="card", style=wx.html.HW_SCROLLBAR_AUTO | wx.BORDER_THEME)
        self.status = wx.StaticText(self, label="Reading the catalogue (the BioImage Model Zoo and this computer)…",
                                    style=wx.ST_ELLIPSIZE_END)
        self.browse = wx.Button(self, label="Browse…")
        self.browse.SetToolTip("Use a model package from this computer: its folder, its .zip, or its rdf file")
        self.cancel = wx.Button(self, wx.ID_CANCEL, "Cancel")
        self.use = wx.Button(self, label="Use this model", name="use")
        self.use.SetDefault()
        self.use.Disable()
        self._layout()
        self._bind()
        self._show_hint("Reading the catalogue…")
        self.start_loading(refresh=False)
        self.CentreOnParent()

    # ------------------------------------------------------------------ layout and events
    def _layout(self) -> None:
        pad = 6
        filters = wx.BoxSizer(wx.HORIZONTAL)
        filters.Add(self.search, 0, wx.ALIGN_CENTER_VERTICAL | wx.RIGHT, 2 * pad)
        for label, control in (("Task", self.task), ("Tag", self.tag)):
            filters.Add(wx.StaticText(self, label=label), 0, wx.ALIGN_CENTER_VERTICAL | wx.RIGHT, pad)
            filters.Add(control, 0, wx.ALIGN_CENTER_VERTICAL | wx.RIGHT, 2 * pad)
        filters.Add(self.runs_here, 0, wx.ALIGN_CENTER_VERTICAL | wx.RIGHT, 2 * pad)
        filters.AddStretchSpacer()
        filters.Add(self.refresh, 0, wx.ALIGN_CENTER_VERTICAL)
        middle = wx.BoxSizer(wx.HORIZONTAL)
        middle.Add(self.models, 1, wx.EXPAND | wx.RIGHT, pad)
        middle.Add(self.card, 1, wx.EXPAND)
        buttons = wx.BoxSizer(wx.HORIZONTAL)
        buttons.Add(self.browse, 0)
        buttons.AddStretchSpacer()
        buttons.Add(self.cancel, 0, wx.RIGHT, pad)
        buttons.Add(self.use, 0)
        outer = wx.BoxSizer(wx.VERTICAL)
        outer.Add(filters, 0, wx.EXPAND | wx.ALL, 2 * pad)
        outer.Add(middle, 1, wx.EXPAND | wx.LEFT | wx.RIGHT, 2 * pad)
        outer.Add(self.status, 0, wx.EXPAND | wx.ALL, 2 * pad)
        outer.Add(buttons, 0, wx.EXPAND | wx.LEFT | wx.RIGHT | wx.BOTTOM, 2 * pad)
        self.SetSizer(outer)
        self.SetMinSize((900, 560))

    def _bind(self) -> None:
        self.search.Bind(wx.EVT_TEXT, lambda evt: self.apply_filters())
        self.search.Bind(wx.EVT_SEARCHCTRL_CANCEL_BTN, lambda evt: self.search.SetValue(""))
        self.task.Bind(wx.EVT_CHOICE, lambda evt: self.apply_filters())
        self.tag.Bind(wx.EVT_CHOICE, lambda evt: self.apply_filters())
        self.runs_here.Bind(wx.EVT_CHECKBOX, lambda evt: self.apply_filters())
        self.refresh.Bind(wx.EVT_BUTTON, lambda evt: self.start_loading(refresh=True))
        self.models.Bind(wx.EVT_LIST_ITEM_SELECTED, lambda evt: self.select(evt.GetIndex()))
        self.models.Bind(wx.EVT_LIST_ITEM_ACTIVATED, lambda evt: self.on_use())
        self.card.Bind(wx.html.EVT_HTML_LINK_CLICKED, self._on_link)
        self.browse.Bind(wx.EVT_BUTTON, self._on_browse)
        self.use.Bind(wx.EVT_BUTTON, lambda evt: self.on_use())

    def _later(self, future: Future, then: Callable[[Future], None]) -> None:
        """``then(future)`` in the GUI thread once the background job is done, if the dialog is still open."""
        def back(f: Future) -> None:
            wx.CallAfter(lambda: then(f) if self else None)

        future.add_done_callback(back)

    # ------------------------------------------------------------------ the catalogue
    def start_loading(self, refresh: bool) -> None:
        self.refresh.Disable()
        self.status.SetLabel("Reading the catalogue (the BioImage Model Zoo and this computer)…")
        self.loading = _pool().submit(_read_catalog, refresh)
        self._later(self.loading, self._loaded)

    def _loaded(self, future: Future) -> None:
        self.refresh.Enable()
        try:
            found = future.result()
        except Exception as e:  # the listing and each card fail in one line inside the catalogue; anything else here
            self.status.SetLabel(f"Cannot read the catalogue: {one_line(e)}")
            self._show_hint(f"Cannot read the catalogue: {one_line(e)}")
            return
        self.entries, self.note = found.entries, found.note
        tags = cards.common_tags(self.entries)
        chosen_tag = self.tag.GetStringSelection()
        self.tag.Set([ANY_TAG, *tags])
        self.tag.SetStringSelection(chosen_tag if chosen_tag in tags else ANY_TAG)
        self.apply_filters()
        self.Layout()

    def apply_filters(self) -> None:
        """Show the entries the search box and the filters let through; keep the selection if it is among them."""
        task = self.task.GetStringSelection()
        tag = self.tag.GetStringSelection()
        self.shown = cards.filter_entries(self.entries, self.search.GetValue().strip(), "" if task == ANY_TASK else task,
                                          "" if tag == ANY_TAG else tag, self.runs_here.GetValue())
        self.models.show(self.shown)
        loading = self.loading is not None and not self.loading.done()
        self.status.SetForegroundColour(wx.NullColour)
        self.status.SetLabel(cards.status_line(len(self.shown), len(self.entries), self.note) if not loading else
                             self.status.GetLabel())
        keep = self.selected or next((e for e in self.shown if catalog.display_id(e) == self.current), None)
        index = next((i for i, e in enumerate(self.shown) if keep is not None and e.id == keep.id
                      and e.origin == keep.origin), None)
        if index is None:
            self.selected = None
            self.use.Disable()
            self._show_hint("No model matches the search and filters." if self.entries and not self.shown else
                            "Pick a model in the list to see its card.")
        else:
            self.models.Select(index)
            self.models.EnsureVisible(index)
            self.select(index)

    def select(self, index: int) -> None:
        """Show the card of the ``index``-th model listed; its cover follows from the background thread."""
        if not 0 <= index < len(self.shown):
            return
        entry = self.selected = self.shown[index]
        self.use.Enable(not entry.problem)
        self.card.SetPage(cards.card_html(entry, cover_note="Loading the cover…" if entry.cover else ""))
        if entry.cover:
            self._later(_pool().submit(cards.cover_thumbnail, entry), lambda f: self._cover_ready(entry, f))

    def _cover_ready(self, entry: catalog.Entry, future: Future) -> None:
        if self.selected is not entry:
            return  # the user has moved on
        try:
            thumb, note = future.result(), ""
        except Exception as e:  # one line in the card: no cover is no reason to stop
            thumb, note = None, f"No cover: {one_line(e, 160)}"
        self.card.SetPage(cards.card_html(entry, cover=thumb, cover_note=note))

    def _show_hint(self, text: str) -> None:
        self.card.SetPage(f"<html><body><br><br><center><font color='#555555'>{cards._esc(text)}</font></center>"
                          "</body></html>")

    def _on_link(self, evt: wx.html.HtmlLinkEvent) -> None:
        href = evt.GetLinkInfo().GetHref()
        if href.startswith(("https://", "http://")):  # the card's only links: doi.org and citations' pages
            wx.LaunchDefaultBrowser(href)

    # ------------------------------------------------------------------ choosing
    def on_use(self) -> None:
        """Use the selected model: a zoo model is downloaded first (progress, Cancel); then the dialog closes."""
        entry = self.selected
        if entry is None or entry.problem:
            return
        if entry.origin != "zoo":
            self._close_with(catalog.display_id(entry))
            return
        try:
            self.download(entry)
        except DLModelError as e:  # cancelled, or the download failed: the dialog stays, and says so
            from ..sources import DownloadCancelled

            if isinstance(e, DownloadCancelled):
                self.status.SetForegroundColour(wx.NullColour)
                self.status.SetLabel(str(e)[:1].upper() + str(e)[1:])
            else:
                self.status.SetForegroundColour(wx.Colour(176, 0, 0))
                self.status.SetLabel(f"Cannot download {entry.id}: {one_line(e)}")
            return
        self._close_with(entry.id)

    def download(self, entry: catalog.Entry) -> None:
        """Download and verify ``entry``'s package in the background while a progress dialog
        shows each file; its Cancel stops the download (nothing stays in the cache)."""
        state = {"text": "Connecting…", "percent": None}
        cancelled = threading.Event()

        def progress(url: str, done: int, total: Optional[int]) -> None:  # on the background thread
            state["text"] = cards.progress_text(url, done, total)
            state["percent"] = min(99, int(100 * done / total)) if total else None

        job = _pool().submit(cards.fetch_package, entry.id, progress, cancelled)
        dlg = wx.ProgressDialog(
            "RunDLModel: downloading the model",
            f"Downloading {entry.name} ({entry.id}) from the BioImage Model Zoo;\nevery file is checked against its sha256."
            f"\n{state['text']:<60}", maximum=100, parent=self,
            style=wx.PD_APP_MODAL | wx.PD_CAN_ABORT | wx.PD_ELAPSED_TIME | wx.PD_SMOOTH)
        try:
            while not job.done():
                text = (f"Downloading {entry.name} ({entry.id}) from the BioImage Model Zoo;\nevery file is checked "
                        f"against its sha256.\n{'Cancelling…' if cancelled.is_set() else state['text']}")
                if state["percent"] is None:
                    going = dlg.Pulse(text)[0]
                else:
                    going = dlg.Update(state["percent"], text)[0]
                if not going:
                    cancelled.set()
                # Update yields to user input only: let the rest of the window's events run too
                # (repaints, timers, calls posted from other threads)
                wx.YieldIfNeeded()
                wx.MilliSleep(100)
        finally:
            dlg.Destroy()
        job.result()  # raises DownloadCancelled or the download's error

    def _close_with(self, value: str) -> None:
        self.chosen = value
        self.EndModal(wx.ID_OK)

    def _on_browse(self, evt: wx.CommandEvent) -> None:
        """A package on this computer: a folder, or a .zip / rdf file."""
        menu = wx.Menu()
        folder = menu.Append(wx.ID_ANY, "A package folder…")
        file = menu.Append(wx.ID_ANY, "A package .zip, or its rdf (bioimageio.yaml, rdf.yaml)…")
        picked = self.browse.GetPopupMenuSelectionFromUser(menu, (0, self.browse.GetSize().height))
        menu.Destroy()
        path = None
        if picked == folder.GetId():
            with wx.DirDialog(self, "Choose a model package folder", style=wx.DD_DIR_MUST_EXIST) as d:
                path = d.GetPath() if d.ShowModal() == wx.ID_OK else None
        elif picked == file.GetId():
            with wx.FileDialog(self, "Choose a model package", wildcard="Model packages (*.zip, *.yaml)|*.zip;*.yaml;*.yml",
                               style=wx.FD_OPEN | wx.FD_FILE_MUST_EXIST) as d:
                path = d.GetPath() if d.ShowModal() == wx.ID_OK else None
        if path:
            self._close_with(str(Path(path)))
