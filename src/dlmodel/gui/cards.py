"""The catalogue's cards as a window shows them, without the window (no wx here).

Pure pieces of RunDLModel's *Choose a model…* dialog and of its *Model information*: which
entries a search shows, a card as HTML (every word from a stranger's rdf escaped: a card never
carries the package's own markup or links), cover images made into small PNG thumbnails in the
cache (a zoo cover downloaded capped, a local one only from inside its package folder, neither
decoded past a pixel cap), and a package download that a Cancel button stops.

>>> from dlmodel.catalog import Entry
>>> [e.name for e in filter_entries([Entry("a", "Nuclei U-Net", "zoo", tags=("nuclei",), runs_here=True),
...                                  Entry("b", "Cell denoiser", "zoo", tags=("denoising",))], "nuclei")]
['Nuclei U-Net']
"""
from __future__ import annotations

import hashlib
import html
import importlib.util
import os
import re
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, List, Optional, Sequence, Tuple

from ..errors import SourceError, one_line

if TYPE_CHECKING:  # for the hints only: the catalogue is imported when first used
    from ..catalog import Entry

MAX_COVER_BYTES = 5 << 20  # a cover is a picture for a card: the zoo's are a few hundred kB
MAX_COVER_PIXELS = 40_000_000  # decoded, 160 MB of RGBA at most: a 5 MB PNG can claim any size
CARD_COVER = (400, 200)
INFO_COVER = (150, 100)
ORIGINS = {"zoo": "BioImage Model Zoo", "shipped": "models shipped with RunDLModel", "cache": "models downloaded here",
           "folder": "model folders in DLMODEL_MODEL_FOLDERS"}
# the same, short, for a list's column
SHORT_ORIGINS = {"zoo": "Model Zoo", "shipped": "RunDLModel", "cache": "downloaded", "folder": "your folders"}
_DOI = re.compile(r"^(?:doi:|https?://(?:dx\.)?doi\.org/)?(10\.\d{4,}/\S+)$", re.I)
_CITED_DOI = re.compile(r"\s*\(doi:([^()\s]+)\)$")


def unavailable() -> str:
    """'' when this Python can show the catalogue, else one line saying why not and what to do.

    The catalogue reads every model card with bioimageio.spec; CellProfiler 4.2.8's app has no
    bioimageio.spec in its Python (its models run in another environment)."""
    if importlib.util.find_spec("bioimageio") is None or importlib.util.find_spec("bioimageio.spec") is None:
        return (f"Choose a model… needs bioimageio.spec in CellProfiler's own Python, which this one ({sys.executable}) "
                "lacks (CellProfiler 4.2.8's app): type a zoo id, folder, zip or rdf in Model, or list the zoo's models "
                "with 'dlmodel search' in the model's environment")
    return ""


# --------------------------------------------------------------------------- searching
def filter_entries(entries: Iterable["Entry"], text: str = "", task: str = "", tag: str = "",
                   runs_here: bool = False) -> List["Entry"]:
    """The entries whose name, description, id or tags hold every word of ``text``, that carry
    ``task`` and ``tag`` (any case; '' for any), and that run here when ``runs_here``."""
    from ..catalog import matches

    found = []
    for e in entries:
        card = {"name": e.name, "description": e.description, "tags": e.tags, "id": e.id}
        if runs_here and not e.runs_here:
            continue
        if matches(card, text or None, [tag] if tag else [], task or None):
            found.append(e)
    return found


def common_tags(entries: Iterable["Entry"], limit: int = 40) -> List[str]:
    """The ``limit`` tags most entries carry (lower case, most frequent first, then A-Z)."""
    counts = Counter(t.lower() for e in entries for t in set(e.tags))
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def status_line(shown: int, total: int, note: str = "") -> str:
    """'5 of 12 models' and the catalogue's note (an old or missing zoo listing)."""
    return f"{shown} of {total} model{'s' if total != 1 else ''}" + (f" · {note}" if note else "")


# --------------------------------------------------------------------------- the card
def card_html(entry: "Entry", cover: Optional[Path] = None, cover_note: str = "",
              cover_size: Tuple[int, int] = CARD_COVER) -> str:
    """An entry's card as HTML for wx.html: cover, name, where it comes from, whether it runs
    here (or what it needs), description, task and tags, authors, licence, citations (DOI links),
    weight formats, inputs and outputs. Only links to doi.org and the citations' own http(s)
    pages; everything the rdf says is escaped."""
    e = _esc
    where = ORIGINS.get(entry.origin, entry.origin)
    ident = f"zoo id <b>{e(entry.id)}</b>" if entry.origin == "zoo" else e(entry.id)
    downloads = f" · {entry.downloads:,} download{'s' if entry.downloads != 1 else ''}" if entry.downloads else ""
    if entry.problem:
        verdict = f"<font color='#b00000'><b>Cannot be read:</b> {e(entry.problem)}</font>"
    elif entry.runs_here:
        verdict = "<font color='#107010'><b>Runs here</b></font> with the engines installed in CellProfiler's Python"
    else:
        verdict = f"<font color='#b05000'><b>Does not run here yet:</b> {e(entry.needs)}</font>"
    if cover:
        width, height = _fit(cover, cover_size)
        picture = f"<p><img src='{_file_url(cover)}' width={width} height={height}></p>"
    else:
        picture = f"<p><font color='#777777'>{e(cover_note)}</font></p>" if cover_note else ""
    top = (f"<font size='+1'><b>{e(entry.name)}</b></font><br><font color='#555555'>{ident} · from the {e(where)}"
           f"{downloads}</font><br>{verdict}{picture}")
    rows = [
        ("Task", e(entry.task or "not given") + (" · 3D" if entry.is_3d else " · 2D")),
        ("Tags", e(", ".join(entry.tags)) or "none"),
        ("Authors", e(", ".join(entry.authors)) or "not given"),
        ("Licence", e(entry.license) or "not given"),
        ("Cite", "<br>".join(_citation_html(c) for c in entry.citations) or "no citation given"),
        ("Weights", e(", ".join(entry.weight_formats)) or "none"),
        ("Inputs", "<br>".join(e(tensor_line(t)) for t in entry.inputs) or "none"),
        ("Outputs", "<br>".join(e(tensor_line(t)) for t in entry.outputs) or "none"),
    ]
    if entry.family != "plain":
        rows.append(("Objects", e(f"made by the {entry.family} family's own step")))
    table = "".join(f"<tr><td valign=top><b>{k}</b></td><td valign=top>{v}</td></tr>" for k, v in rows)
    description = f"<p>{e(entry.description)}</p>" if entry.description else ""
    return f"<html><body>{top}{description}<table cellspacing=0 cellpadding=3 width='100%'>{table}</table></body></html>"


def tensor_line(t: dict) -> str:
    """'raw: axes bcyx, 1 channel'."""
    channels = t.get("channels")
    return f"{t.get('id', '?')}: axes {t.get('axes', '?')}" + (
        f", {channels} channel{'s' if channels != 1 else ''}" if channels else "")


def doi_url(doi: str) -> Optional[str]:
    """https://doi.org/10.x/y for a DOI as rdfs write it (10.x/y, doi:10.x/y, a doi.org URL), else None."""
    m = _DOI.match(str(doi).strip())
    return "https://doi.org/" + urllib.parse.quote(m.group(1), safe="/:;()._-") if m else None


def cited_dois(cite_lines: Sequence[str]) -> List[Tuple[str, str]]:
    """(text, doi.org URL) for each one-line citation (``text (doi:...)``, as ModelSpec.cite and
    Entry.citation write them) that has a DOI."""
    found = []
    for line in cite_lines:
        m = _CITED_DOI.search(line)
        url = doi_url(m.group(1)) if m else None
        if url:
            found.append((line[:m.start()].strip(), url))
    return found


def _citation_html(c: dict) -> str:
    text = _esc(c.get("text", ""))
    link = doi_url(c.get("doi", "")) if c.get("doi") else None
    if link:
        return f"{text} <a href='{_esc(link)}'>doi:{_esc(link[len('https://doi.org/'):])}</a>"
    url = str(c.get("url") or "")
    if urllib.parse.urlparse(url).scheme in ("http", "https"):
        return f"{text} <a href='{_esc(url)}'>{_esc(url[:80])}</a>"
    return text


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _file_url(path: Path) -> str:
    return "file:" + urllib.request.pathname2url(str(Path(path).resolve()))


def _fit(path: Path, box: Tuple[int, int]) -> Tuple[int, int]:
    """The thumbnail's own size (it was made to fit ``box``)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return box


# --------------------------------------------------------------------------- covers
def cover_thumbnail(entry: "Entry", size: Tuple[int, int] = CARD_COVER) -> Optional[Path]:
    """A PNG thumbnail, at most ``size``, of an entry's first cover, made once in the cache
    (``DLMODEL_CACHE/covers``); None if it has none.

    A zoo cover is downloaded through :func:`dlmodel.sources.download` (http(s) only, at most
    ``MAX_COVER_BYTES``); a local one must lie inside its package folder. An image of more than
    ``MAX_COVER_PIXELS``, or that is not an image, is refused in one line (SourceError)."""
    if not entry.cover:
        return None
    from ..sources import cache_dir, download

    folder = cache_dir() / "covers"
    folder.mkdir(parents=True, exist_ok=True)
    if entry.origin == "zoo":
        thumb = folder / f"{_key(entry.cover, size)}.png"
        if not thumb.is_file():
            with tempfile.TemporaryDirectory(prefix="cover-", dir=folder) as tmp:
                try:
                    picture = download(entry.cover, Path(tmp) / "cover", max_bytes=MAX_COVER_BYTES)
                except SourceError:
                    raise
                except Exception as e:  # offline, refused: the card shows no cover, and says why
                    raise SourceError(f"cover {entry.cover} could not be downloaded: {one_line(e, 160)}") from e
                make_thumbnail(picture, thumb, size, entry.cover)
        return thumb
    picture = Path(entry.cover)
    root = Path(entry.id)
    if not picture.resolve().is_relative_to(root.resolve()):
        raise SourceError(f"the cover {entry.cover} of {entry.id} lies outside its package folder; not shown")
    try:
        stat = picture.stat()
    except OSError as e:
        raise SourceError(f"cover {picture} cannot be read: {one_line(e, 160)}") from e
    if stat.st_size > MAX_COVER_BYTES:
        raise SourceError(f"cover {picture} is {stat.st_size} bytes, more than {MAX_COVER_BYTES}; not shown")
    thumb = folder / f"{_key(f'{picture.resolve()}|{stat.st_mtime_ns}|{stat.st_size}', size)}.png"
    if not thumb.is_file():
        make_thumbnail(picture, thumb, size, str(picture))
    return thumb


def package_cover(rdf: Path, size: Tuple[int, int] = INFO_COVER) -> Optional[Path]:
    """The cover thumbnail of the package whose rdf is ``rdf`` (for *Model information*)."""
    from ..catalog import local_entry

    return cover_thumbnail(local_entry(Path(rdf).parent, "folder"), size)


def make_thumbnail(picture: Path, thumb: Path, size: Tuple[int, int], where: str) -> Path:
    """``picture`` scaled to fit ``size``, written as PNG to ``thumb`` (atomically); its pixel
    count is checked from the header before anything is decoded."""
    from PIL import Image

    tmp = thumb.with_name(f".{thumb.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        with Image.open(picture) as im:
            w, h = im.size
            if w * h > MAX_COVER_PIXELS:
                raise SourceError(f"cover {where} is {w}x{h} pixels, more than {MAX_COVER_PIXELS}; not shown")
            im.draft("RGB", size)  # JPEG: decode at a fraction of the size
            small = im.convert("RGBA")
            small.thumbnail(size)
            small.save(tmp, format="PNG")
        os.replace(tmp, thumb)
    except SourceError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SourceError(f"cover {where} is not an image that can be shown ({one_line(e, 120)})") from e
    finally:
        tmp.unlink(missing_ok=True)
    return thumb


def _key(text: str, size: Tuple[int, int]) -> str:
    return hashlib.sha256(f"{text}|{size[0]}x{size[1]}".encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- downloading
def fetch_package(source: str, progress: Callable[[str, int, Optional[int]], None],
                  cancelled: threading.Event) -> object:
    """Download and verify a package (:func:`dlmodel.package.open_spec`), telling ``progress``
    how each file advances; once ``cancelled`` is set, the next block stops the download and
    nothing of it stays in the cache (:class:`dlmodel.sources.DownloadCancelled`). The spec."""
    from .. import sources
    from ..package import open_spec

    def each(url: str, done: int, total: Optional[int]) -> None:
        if cancelled.is_set():
            raise sources.DownloadCancelled(f"the download of {source} was cancelled; nothing of it was kept")
        progress(url, done, total)

    with sources.reporting(each):
        spec, _ = open_spec(source)
    return spec


def progress_text(url: str, done: int, total: Optional[int]) -> str:
    """'weights.onnx: 1.2 of 7.5 MB' (or '1.2 MB' when the server gave no size)."""
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]) or url
    return f"{name}: {done / 1e6:.1f}" + (f" of {total / 1e6:.1f} MB" if total else " MB")

