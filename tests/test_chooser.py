"""RunDLModel's *Choose a model…* (issue 26 point 3) without the window: what the dialog lists,
the card it shows, the covers it fetches and the download it can cancel (dlmodel.gui.cards),
and the module's button, model information and citations in a real headless CellProfiler.
The dialog itself is driven in the real CellProfiler window by tests/test_gui.py."""
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from dlmodel import catalog, sources
from dlmodel.catalog import Entry
from dlmodel.errors import SourceError
from dlmodel.gui import cards
from test_catalog import _publish, zoo  # noqa: F401  (the zoo fixture: a listing served from 127.0.0.1)
from test_sources import Server

CELLPROFILER = Path(sys.executable).parent / "cellprofiler"


def _by_id(entries):
    return {e.id: e for e in entries}


# --------------------------------------------------------------------------- searching
def test_search_box_and_filters_pick_from_the_catalogue(zoo):  # noqa: F811
    entries = catalog.search().entries
    shown = _by_id(cards.filter_entries(entries, "nuclei", runs_here=True))
    assert {"affable-shark", "default-nuclei"} <= set(shown)
    assert not {"broken-rdf", "climbs-out"} & set(shown)  # cannot be read: never "runs here"
    assert str(ROOT / "models" / "nuclei_default") in shown  # this computer's too
    assert all(e.runs_here for e in shown.values())
    assert set(_by_id(cards.filter_entries(entries, "BROAD  nuclei"))) == {"affable-shark"}  # words, any case
    assert all(e.task == "instance-segmentation" for e in cards.filter_entries(entries, task="instance-segmentation"))
    assert "affable-shark" in _by_id(cards.filter_entries(entries, tag="DSB2018"))
    assert cards.filter_entries(entries, "no such words anywhere") == []
    tags = cards.common_tags(entries)
    assert tags[0] in ("nuclei", "segmentation", "dsb2018") and len(tags) == len(set(tags))
    assert cards.status_line(3, 7, "zoo listing from 3 days ago") == "3 of 7 models · zoo listing from 3 days ago"


def test_the_card_says_everything_a_biologist_needs(zoo):  # noqa: F811
    shark = _by_id(catalog.search(local=False).entries)["affable-shark"]
    thumb = cards.cover_thumbnail(shark)
    page = cards.card_html(shark, cover=thumb)
    for words in ("UNet 2D Nuclei Broad", "zoo id <b>affable-shark</b>", "500 downloads", "Runs here", "MIT",
                  "Constantin Pape", "Ronneberger", "href='https://doi.org/10.1007/978-3-319-24574-4_28'",
                  "onnx, torchscript", "raw: axes bcyx, 1 channel", "probability: axes bcyx", " · 2D"):
        assert words in page, words
    assert f"src='file:{thumb}" in page or "src='file:" in page
    tf_only = _by_id(catalog.search(local=False).entries)["broken-rdf"]
    assert "Cannot be read:" in cards.card_html(tf_only) and "inputs" in cards.card_html(tf_only)


def test_a_card_shows_a_strangers_rdf_as_text_never_as_markup(zoo):  # noqa: F811
    """Attack: zoo entries whose name, description, authors and citations carry HTML: an image
    of a local file, a link to file://, a script, a URL that closes its link's quote. The card
    shows the words; its only links are doi.org and the citations' own http(s) pages."""
    server, www = zoo
    hostile = "<img src='/etc/passwd'><a href='file:///home'>click</a><script>alert(1)</script>"

    def poison(m):
        m.update(description=hostile, authors=[{"name": "<font size=7>Eve"}])  # names may not hold a slash
        # (bioimageio.spec takes only http(s) URLs: one that tries to close the link's quote)
        m["cite"] = [{"text": hostile, "url": "https://example.org/a?b='><script>alert(1)</script>"},
                     {"text": "ok", "doi": "10.1038/s41592-019-0612-7"}]

    items = json.loads((www / "children").read_text())
    items.append(_publish(www, "html-card", ROOT / "models" / "nuclei_default", 9, poison))
    # a name bioimageio.spec refuses: listed as "cannot be read", its name and the reason quoting it
    items.append(_publish(www, "html-name", ROOT / "models" / "nuclei_default", 8, lambda m: m.update(name=hostile)))
    (www / "children").write_text(json.dumps(items))
    entries = _by_id(catalog.search(local=False, refresh=True).entries)
    assert entries["html-card"].runs_here, entries["html-card"].problem  # a valid rdf: the words are the attack
    assert hostile in entries["html-name"].name and hostile in entries["html-name"].problem
    for entry in (entries["html-card"], entries["html-name"]):
        page = cards.card_html(entry)
        assert "<img" not in page and "<script" not in page and "<a href='file:" not in page
        assert "&lt;img src=&#x27;/etc/passwd&#x27;&gt;" in page  # shown, as text
        assert "<font size=7>" not in page and ("&lt;font size=7&gt;Eve" in page or not entry.runs_here)
        links = [part.split("'")[0] for part in page.split("href='")[1:]]
        assert links == (["https://example.org/a?b=%27%3E%3Cscript%3Ealert(1)%3C/script%3E",  # as the spec reads it
                          "https://doi.org/10.1038/s41592-019-0612-7"] if entry.runs_here else []), links

# --------------------------------------------------------------------------- covers
def test_a_zoo_cover_is_downloaded_once_as_a_small_thumbnail(zoo):  # noqa: F811
    from PIL import Image

    server, _ = zoo
    shark = _by_id(catalog.search(local=False).entries)["affable-shark"]
    thumb = cards.cover_thumbnail(shark, (200, 120))
    with Image.open(thumb) as im:
        assert im.format == "PNG" and im.size[0] <= 200 and im.size[1] <= 120 and max(im.size) >= 120
    assert thumb.parent == sources.cache_dir() / "covers"
    server.stop()  # made once: offline it is still there
    assert cards.cover_thumbnail(shark, (200, 120)) == thumb
    assert [p.name for p in thumb.parent.iterdir()] == [thumb.name]  # no temporary file left


def test_covers_that_are_too_big_or_not_images_are_refused_in_one_line(zoo, tmp_path):  # noqa: F811
    """Attacks: a zoo cover of 6 MB (the card caps covers at 5 MB), a 70 kB PNG of 8000 x 8000
    pixels (under Pillow's own bomb limit; decoded, 256 MB of RGBA), and a 'cover' that is an
    HTML page."""
    server, www = zoo
    (www / "big.png").write_bytes(b"\x89PNG" + b"\0" * (6 << 20))
    _png_bomb(www / "bomb.png", 8000, 8000)
    (www / "page.png").write_text("<html>not a picture</html>")
    reasons = {}
    for name in ("big.png", "bomb.png", "page.png"):
        entry = Entry(id=name, name=name, origin="zoo", cover=f"{server.url}/{name}")
        t0 = time.perf_counter()
        with pytest.raises(SourceError) as e:
            cards.cover_thumbnail(entry)
        assert time.perf_counter() - t0 < 10 and "\n" not in str(e.value)
        reasons[name] = str(e.value)
    assert "more than the limit of 5242880" in reasons["big.png"]
    assert "8000x8000 pixels, more than 40000000" in reasons["bomb.png"]
    assert "is not an image that can be shown" in reasons["page.png"]
    assert not list((sources.cache_dir() / "covers").iterdir())  # nothing half-made kept


def test_a_local_cover_must_lie_in_its_package_folder(tmp_path):
    """Attack: a package on this computer whose cover is a link to a file outside it."""
    outside = tmp_path / "private"
    outside.mkdir()
    shutil.copy(ROOT / "models" / "nuclei_default" / "cover.png", outside / "holiday.png")
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "models" / "nuclei_default", pkg)
    entry = catalog.local_entry(pkg, "folder")
    assert cards.cover_thumbnail(entry, (90, 60)).is_file()  # its own cover: shown
    (pkg / "cover.png").unlink()
    (pkg / "cover.png").symlink_to(outside / "holiday.png")
    with pytest.raises(SourceError, match="lies outside its package folder; not shown"):
        cards.cover_thumbnail(catalog.local_entry(pkg, "folder"), (90, 60))


def test_model_information_gets_the_packages_cover():
    thumb = cards.package_cover(ROOT / "models" / "nuclei_default" / "bioimageio.yaml")
    from PIL import Image

    with Image.open(thumb) as im:
        assert im.size[0] <= cards.INFO_COVER[0] and im.size[1] <= cards.INFO_COVER[1]
    assert cards.package_cover(ROOT / "models" / "nuclei3d_demo" / "bioimageio.yaml") is None  # it has none


def _png_bomb(path, width, height):
    """A valid 8-bit grey PNG of ``width`` x ``height`` zeros, a few kB on disk, written without
    ever holding the image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- downloading
def test_use_this_model_downloads_with_progress_and_cancel_keeps_nothing(zoo):  # noqa: F811
    cancelled = threading.Event()
    seen = []

    def press_cancel_during_the_weights(url, done, total):
        seen.append((url.rsplit("/", 1)[-1], done, total))
        if not url.endswith("rdf.yaml"):
            cancelled.set()  # the Cancel button (the next block stops the download)

    with pytest.raises(sources.DownloadCancelled, match="affable-shark was cancelled; nothing of it was kept"):
        cards.fetch_package("affable-shark", press_cancel_during_the_weights, cancelled)
    packages = sources.cache_dir() / "packages"
    assert [p.suffix for p in packages.iterdir()] == [".lock"], list(packages.iterdir())
    assert not [e for e in catalog.search(zoo=False).entries if e.origin == "cache"]
    seen.clear()
    spec = cards.fetch_package("affable-shark", lambda *a: seen.append(a), threading.Event())
    assert spec.name == "UNet 2D Nuclei Broad"
    names = {url.rsplit("/", 1)[-1] for url, _, _ in seen}
    assert {"rdf.yaml", "weights.onnx"} <= names
    assert all(total is None or done <= total for _, done, total in seen)
    assert cards.progress_text("http://x/files/weights.onnx", 1_200_000, 7_500_000) == "weights.onnx: 1.2 of 7.5 MB"
    # now on this computer: listed as downloaded, and runs
    cached = [e for e in catalog.search(zoo=False).entries if e.origin == "cache"]
    assert [e.name for e in cached] == ["UNet 2D Nuclei Broad"] and cached[0].runs_here


def test_citations_with_a_doi():
    lines = ["Caicedo et al. (doi:10.1038/s41592-019-0612-7)", "Star-convex (doi:https://doi.org/10.1109/WACV.2020.1)",
             "no doi here", "a URL only (doi:not-a-doi)"]
    assert cards.cited_dois(lines) == [("Caicedo et al.", "https://doi.org/10.1038/s41592-019-0612-7"),
                                       ("Star-convex", "https://doi.org/10.1109/WACV.2020.1")]


def test_the_dialog_module_needs_wx_only_when_it_opens():
    code = ("import sys, dlmodel, dlmodel.gui, dlmodel.gui.cards; "
            "print(sorted(m for m in ('wx', 'bioimageio.spec', 'PIL') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr


# --------------------------------------------------------------------------- the module, headless
@pytest.fixture(scope="module")
def module(cellprofiler_modules):
    if not CELLPROFILER.exists():
        pytest.skip("cellprofiler is not installed in this venv")
    return lambda: cellprofiler_modules("RunDLModel")


def test_the_button_is_shown_under_model_and_never_saved(module):
    m = module()
    shown = m.visible_settings()
    assert shown[:2] == [m.model_source, m.choose_model_button] and m.choose_model_button.label == "Choose a model…"
    assert m.choose_model_button not in m.settings()  # pipelines are as before: nothing to upgrade
    assert m.do_choose_model() == ""  # headless: nothing to open; this Python can read the catalogue


def test_model_information_and_the_citation_list_name_the_models_citation(module):
    m = module()
    m.model_source.value = "models/nuclei_default"
    m.visible_settings()
    assert "Cite: Caicedo et al. Nucleus segmentation" in m.model_info.content
    assert "(doi:10.1038/s41592-019-0612-7)" in m.model_info.content
    # CellProfiler 5's File > Export > Citation list fetches each of these from doi.org
    assert m.doi == {"BioImage Model Zoo": "https://doi.org/10.1101/2022.06.07.495102",
                     "Model 'RunDLModel default nuclei' (models/nuclei_default):":
                         "https://doi.org/10.1038/s41592-019-0612-7"}
    m.model_source.value = "models/stardist_nuclei"
    assert set(m.doi.values()) == {"https://doi.org/10.1101/2022.06.07.495102",
                                   "https://doi.org/10.1007/978-3-030-00934-2_30",
                                   "https://doi.org/10.1109/WACV45572.2020.9093435"}
    m.model_source.value = "no/such/model"
    assert list(m.doi) == ["BioImage Model Zoo"]  # unreadable: the zoo's paper only, no error
