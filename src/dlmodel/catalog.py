"""The catalogue: every model a user can pick, from the BioImage Model Zoo and from this machine.

Sources:

- the zoo's live listing, from the service zoo ids resolve through (the bioimage.io Hypha
  artifact manager: ``GET .../artifacts/bioimage.io/children``, one JSON object per resource
  with its rdf as ``manifest``); ``DLMODEL_CATALOG_URL`` points elsewhere (a mirror, a test
  server). The listing is kept in the cache with its fetch time and used again for
  ``DLMODEL_CATALOG_MAX_AGE`` seconds (a day); offline, the last listing is used and the
  catalogue says how old it is, in one line.
- models on this machine: the shipped ``models/``, the download cache, and the folders in
  ``DLMODEL_MODEL_FOLDERS`` (separated like PATH).

Each :class:`Entry` is read by bioimageio.spec (a zoo entry without network access, a local one
from its rdf) and says whether it **runs here** with the engines and model families installed,
or what it needs. An entry whose rdf is invalid, or that names a file outside its own files, is
listed as not runnable, with the reason.

>>> from dlmodel.catalog import matches
>>> matches({"name": "Nuclei U-Net", "tags": ["nuclei"]}, "unet", tags=["nuclei"])
True
"""
from __future__ import annotations

import json
import os
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import SourceError, one_line

DEFAULT_CATALOG_URL = "https://hypha.aicell.io/bioimage-io/artifacts/bioimage.io/children?limit=10000"
CATALOG_URL_ENV = "DLMODEL_CATALOG_URL"
MAX_AGE_ENV = "DLMODEL_CATALOG_MAX_AGE"
MAX_BYTES_ENV = "DLMODEL_MAX_CATALOG_BYTES"
MAX_ENTRIES = 100_000
PROJECT = Path(__file__).resolve().parents[2]
# tags that name what a model does, most specific first
TASKS = ("instance-segmentation", "semantic-segmentation", "segmentation", "denoising", "restoration",
         "deconvolution", "super-resolution", "classification", "detection", "registration")
FAMILY_LIBRARY = {"stardist": "stardist", "cellpose": "cellpose"}


@dataclass(frozen=True)
class Entry:
    """One model of the catalogue: its card, and whether it runs here."""

    id: str  # what dlmodel.load takes: a zoo id, or a local folder
    name: str
    origin: str  # "zoo", "shipped", "cache" or "folder"
    description: str = ""
    tags: Tuple[str, ...] = ()
    task: str = ""
    authors: Tuple[str, ...] = ()
    license: str = ""
    citations: Tuple[Dict[str, str], ...] = ()  # {"text", "doi", "url"}
    cover: str = ""  # a URL or a local path
    weight_formats: Tuple[str, ...] = ()
    inputs: Tuple[Dict[str, Any], ...] = ()  # {"id", "axes", "channels"}
    outputs: Tuple[Dict[str, Any], ...] = ()
    is_3d: bool = False
    family: str = "plain"  # "stardist", "cellpose", "deepimagej" or "plain"
    size: Optional[int] = None  # bytes, where known
    runs_here: bool = False
    needs: str = ""  # what it needs to run here, one line ("" when it runs)
    problem: str = ""  # why it cannot be read at all, one line
    downloads: Optional[int] = None

    @property
    def citation(self) -> str:
        """The citations as one line: text (DOI)."""
        return "; ".join(c["text"] + (f" (doi:{c['doi']})" if c.get("doi") else "") for c in self.citations)

    def as_dict(self) -> Dict[str, Any]:
        import dataclasses

        return {**dataclasses.asdict(self), "citation": self.citation}


@dataclass
class Catalog:
    """The entries found, and one line on the zoo listing's freshness when it was not fetched now."""

    entries: List[Entry] = field(default_factory=list)
    note: str = ""


# --------------------------------------------------------------------------- the zoo's listing
def max_bytes() -> int:
    """The largest listing read (``DLMODEL_MAX_CATALOG_BYTES``, 64 MiB: the zoo's is a few MB)."""
    return int(os.environ.get(MAX_BYTES_ENV, 64 << 20))


def listing_url() -> str:
    return os.environ.get(CATALOG_URL_ENV, DEFAULT_CATALOG_URL)


def _listing_cache() -> Path:
    from .sources import cache_dir

    return cache_dir() / "catalog" / "listing.json"


def fetch_listing(refresh: bool = False, url: Optional[str] = None) -> Tuple[List[Dict[str, Any]], str]:
    """The zoo's listing (its entries as the service gives them) and a note on its age.

    A listing fetched less than ``DLMODEL_CATALOG_MAX_AGE`` seconds ago is used as it is unless
    ``refresh``; otherwise it is fetched again, and when that fails the last one is used with a
    note saying how old it is. With no listing at all, the error says why, in one line."""
    url = url or listing_url()
    cached = _read_cached_listing(url)
    max_age = float(os.environ.get(MAX_AGE_ENV, 86400))
    if cached is not None and not refresh and time.time() - cached[1] < max_age:
        return cached[0], ""
    try:
        items = _download_listing(url)
    except SourceError as e:
        if cached is None:
            raise SourceError(f"the zoo's model listing could not be fetched and none is cached: {e}") from e
        age = _age(time.time() - cached[1])
        return cached[0], f"zoo listing from {age} ago (not refreshed: {one_line(e, 160)})"
    _write_cached_listing(url, items)
    return items, ""


def _download_listing(url: str) -> List[Dict[str, Any]]:
    import tempfile

    from . import sources

    with tempfile.TemporaryDirectory(prefix="dlmodel-listing-") as tmp:
        target = Path(tmp) / "listing.json"
        try:
            sources.download(url, target, max_bytes=max_bytes())
        except sources._NetworkError as e:  # offline, refused, timed out
            raise SourceError(str(e)) from e
        return parse_listing(target.read_bytes(), url)


def parse_listing(data: bytes, where: str) -> List[Dict[str, Any]]:
    """The entries of a listing (a JSON list, or an object with ``items``), checked: a size cap,
    JSON, objects with an ``id``; anything else is one line naming ``where``."""
    if len(data) > max_bytes():
        raise SourceError(f"the model listing {where} is {len(data)} bytes, more than {max_bytes()} ({MAX_BYTES_ENV})")
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise SourceError(f"the model listing {where} is not JSON ({one_line(e, 120)})") from e
    items = parsed.get("items") if isinstance(parsed, dict) else parsed
    if not isinstance(items, list):
        raise SourceError(f"the model listing {where} is not a list of entries")
    if len(items) > MAX_ENTRIES:
        raise SourceError(f"the model listing {where} has {len(items)} entries, more than {MAX_ENTRIES}")
    return [i for i in items if isinstance(i, dict) and isinstance(i.get("id"), str) and isinstance(i.get("manifest"), dict)]


def _read_cached_listing(url: str) -> Optional[Tuple[List[Dict[str, Any]], float]]:
    path = _listing_cache()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("url") == url:
            return parse_listing(json.dumps(data["items"]).encode(), str(path)), float(data["fetched"])
    except (OSError, ValueError, KeyError, TypeError, SourceError):
        pass  # no usable cached listing: as if none
    return None


def _write_cached_listing(url: str, items: List[Dict[str, Any]]) -> None:
    import tempfile

    path = _listing_cache()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".listing.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"url": url, "fetched": time.time(), "items": items}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _age(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} seconds"


# --------------------------------------------------------------------------- entries
def zoo_entry(item: Mapping[str, Any]) -> Entry:
    """A listing item as an entry: its manifest (the rdf) read by bioimageio.spec, no network."""
    alias = str(item["id"]).split("/")[-1]
    manifest = item["manifest"]
    name = str(manifest.get("name") or alias)
    base = os.environ.get("DLMODEL_ZOO_URL", "https://hypha.aicell.io/bioimage-io/artifacts/{id}/files/rdf.yaml")
    rdf_url = base.format(id=alias)
    extra = {"downloads": item.get("download_count") if isinstance(item.get("download_count"), int) else None}
    try:
        for name_ in _file_names(manifest):
            _inside(name_, alias)
        descr = _build(manifest, rdf_url)
    except SourceError as e:
        return Entry(id=alias, name=name, origin="zoo", problem=str(e), needs="cannot be read", **extra)
    covers = _covers(descr)
    cover = urllib.parse.urljoin(rdf_url, covers[0]) if covers else ""
    return _entry(descr, alias, "zoo", cover=cover, **extra)


def _file_names(manifest: Mapping[str, Any]) -> Iterable[str]:
    """The relative file names a manifest's card uses (covers, documentation)."""
    for c in manifest.get("covers") or []:
        yield str(c)
    if manifest.get("documentation"):
        yield str(manifest["documentation"])


def _inside(name: str, alias: str) -> None:
    """A file of a zoo entry must be one of its own files: no ``..``, no absolute path, no other scheme."""
    parsed = urllib.parse.urlparse(name)
    if parsed.scheme in ("http", "https"):
        return  # a full URL is fetched as any download (http(s) only, capped)
    parts = Path(parsed.path).parts
    if parsed.scheme or name.startswith(("/", "\\")) or ".." in parts:
        raise SourceError(f"zoo entry {alias!r} names the file {name[:120]!r}, outside its own files; refused")


def _build(manifest: Mapping[str, Any], where: str) -> Any:
    from bioimageio.spec import ValidationContext, build_description
    from bioimageio.spec.common import InvalidDescr

    from .spec import _first_error, _quiet_loguru

    _quiet_loguru()
    try:
        with ValidationContext(perform_io_checks=False):
            descr = build_description(dict(manifest), format_version="latest")
    except Exception as e:  # anything bioimageio.spec raises on a stranger's manifest
        raise SourceError(f"invalid rdf {where}: {one_line(e)}") from e
    if isinstance(descr, InvalidDescr):
        raise SourceError(f"invalid rdf {where}: {_first_error(descr)}")
    if getattr(descr, "type", None) != "model":
        raise SourceError(f"{where} describes a {getattr(descr, 'type', '?')}, not a model")
    return descr


def local_entry(folder: Path, origin: str) -> Entry:
    """A package folder on this machine as an entry."""
    from .sources import RDF_NAMES

    rdf = next((folder / n for n in RDF_NAMES if (folder / n).is_file()), None) or \
        next(iter(sorted(folder.glob("*.bioimageio.yaml"))), None)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    if rdf is None:
        return Entry(id=str(folder), name=folder.name, origin=origin, problem=f"{folder} holds no rdf", needs="cannot be read")
    from .errors import DLModelError
    from .spec import read_description

    try:
        descr = read_description(rdf)
    except DLModelError as e:
        return Entry(id=str(folder), name=folder.name, origin=origin, problem=str(e), needs="cannot be read", size=size)
    covers = _covers(descr)
    return _entry(descr, str(folder), origin, cover=str(folder / covers[0]) if covers else "", size=size)


def _covers(descr: Any) -> List[str]:
    """The cover images' names (format 0.5 wraps each in a file description)."""
    return [str(getattr(c, "source", c)) for c in (getattr(descr, "covers", None) or [])]


def _entry(descr: Any, source: str, origin: str, **extra: Any) -> Entry:
    from .engines import ENGINE_EXTRA

    formats = tuple(f for f in ENGINE_EXTRA if getattr(descr.weights, f, None) is not None)
    others = tuple(f for f, w in _weights(descr) if w is not None and f not in ENGINE_EXTRA)
    tags = tuple(str(t) for t in descr.tags)
    family = _family(descr, tags)
    runs, needs = _runs_here(descr, formats + others, family)
    return Entry(
        id=source, name=str(descr.name), origin=origin, description=str(descr.description or ""), tags=tags,
        task=next((t for t in TASKS if t in {x.lower() for x in tags}), ""),
        authors=tuple(str(a.name) for a in descr.authors), license=str(descr.license or ""),
        citations=tuple({"text": str(c.text), "doi": str(c.doi or ""), "url": str(c.url or "")} for c in descr.cite),
        weight_formats=formats + others, inputs=tuple(_tensor(t) for t in descr.inputs),
        outputs=tuple(_tensor(t) for t in descr.outputs), is_3d=any("z" in _tensor(t)["axes"] for t in descr.inputs),
        family=family, runs_here=runs, needs=needs, **extra)


def _weights(descr: Any) -> List[Tuple[str, Any]]:
    w = descr.weights
    return [(f, getattr(w, f, None)) for f in type(w).model_fields]


def _tensor(t: Any) -> Dict[str, Any]:
    axes = t.axes
    if isinstance(axes, str):  # format 0.4: "bcyx"
        letters = axes
        channels = None
    else:
        letters = "".join(_letter(a) for a in axes)
        channel = next((a for a in axes if str(getattr(a, "type", "")) == "channel"), None)
        channels = len(channel.channel_names) if channel is not None else None
    return {"id": str(getattr(t, "id", None) or getattr(t, "name", "")), "axes": letters, "channels": channels}


def _letter(axis: Any) -> str:
    kind = str(getattr(axis, "type", ""))
    return {"batch": "b", "channel": "c", "index": "i", "time": "t"}.get(kind, str(getattr(axis, "id", "?"))[:1])


def _family(descr: Any, tags: Sequence[str]) -> str:
    from . import families

    ops = {op: name for name, module in families.registry().items() for op in module.LABEL_OPS}
    for t in list(descr.outputs):
        for op in getattr(t, "postprocessing", None) or []:
            if getattr(op, "id", None) in ops:
                return ops[op.id]
    config = getattr(descr, "config", None)
    keys = set(config) if isinstance(config, Mapping) else {
        *(getattr(config, "model_extra", None) or {}),
        *(k for k in type(config).model_fields if getattr(config, k, None) is not None)} if config is not None else set()
    lowered = {t.lower() for t in tags}
    # StarDist's exporter writes config.stardist (its thresholds) beside deepImageJ's config
    found = next((f for f in ("stardist", "cellpose") if f in keys or f in lowered), None)
    return found or ("deepimagej" if "deepimagej" in keys else "plain")


def _runs_here(descr: Any, formats: Sequence[str], family: str) -> Tuple[bool, str]:
    """Whether an installed engine can run one of its weight formats (and the family's step),
    or one line on what it needs."""
    import importlib.util

    from .engines import ENGINE_EXTRA, engine_installed

    usable = [f for f in formats if f in ENGINE_EXTRA]
    if not usable:
        return False, f"weights in {', '.join(formats) or 'no format'}, for which dlmodel has no engine"
    ready = [f for f in usable if engine_installed(f)]
    if not ready:
        extra = ENGINE_EXTRA[usable[0]]
        return False, f"needs {'TensorFlow' if extra == 'tensorflow' else extra}: dlmodel env create ENV --engines {extra}"
    library = FAMILY_LIBRARY.get(family)
    if library and importlib.util.find_spec(library) is None:
        return False, f"needs the {library!r} extra for its objects: pip install 'dlmodel[{library}]'"
    if ready == ["pytorch_state_dict"]:
        arch = getattr(descr.weights.pytorch_state_dict, "architecture", None)
        module = getattr(arch, "import_from", None) or getattr(arch, "module_name", None)
        if module and importlib.util.find_spec(str(module).split(".")[0]) is None:
            top = str(module).split(".")[0]
            return False, f"needs the {top!r} library: dlmodel env create ENV --for {descr.id or descr.name}"
    return True, ""


def local_folders() -> List[Tuple[Path, str]]:
    """The package folders on this machine: shipped, in the cache, and in DLMODEL_MODEL_FOLDERS."""
    from .sources import COMPLETE, cache_dir

    found: List[Tuple[Path, str]] = []
    shipped = PROJECT / "models"
    if shipped.is_dir():
        found += [(p, "shipped") for p in sorted(shipped.iterdir()) if p.is_dir()]
    packages = cache_dir() / "packages"
    if packages.is_dir():
        found += [(p, "cache") for p in sorted(packages.iterdir()) if (p / COMPLETE).is_file()]
    for root in filter(None, os.environ.get("DLMODEL_MODEL_FOLDERS", "").split(os.pathsep)):
        r = Path(root).expanduser()
        if (r / "rdf.yaml").is_file() or (r / "bioimageio.yaml").is_file():
            found.append((r, "folder"))
        elif r.is_dir():
            found += [(p, "folder") for p in sorted(r.iterdir()) if p.is_dir()]
    return found


def display_id(entry: Entry) -> str:
    """What to type to use an entry: its zoo id, a shipped model's ``models/NAME`` (RunDLModel
    and the examples name it so), or the folder."""
    if entry.origin == "zoo":
        return entry.id
    folder = Path(entry.id)
    if entry.origin == "shipped":
        return f"models/{folder.name}"
    return str(folder)


# --------------------------------------------------------------------------- search
def matches(manifest: Mapping[str, Any], text: Optional[str] = None, tags: Sequence[str] = (),
            task: Optional[str] = None) -> bool:
    """Whether an rdf (as a mapping) matches the words of ``text`` (in its name, description,
    tags or id, any case, hyphens and underscores ignored: "unet" finds "U-Net") and carries
    every tag of ``tags`` (and ``task``)."""
    own = {str(t).lower() for t in manifest.get("tags") or []}
    if any(t.lower() not in own for t in (*tags, *([task] if task else []))):
        return False
    if not text:
        return True
    def plain(s: str) -> str:
        return s.lower().replace("-", "").replace("_", "")

    hay = plain(" ".join(str(manifest.get(k) or "") for k in ("name", "description", "id")) + " " + " ".join(own))
    return all(plain(word) in hay for word in text.split())


def search(text: Optional[str] = None, tags: Sequence[str] = (), task: Optional[str] = None,
           runs_here: Optional[bool] = None, zoo: bool = True, local: bool = True, refresh: bool = False) -> Catalog:
    """Models matching ``text``, ``tags`` and ``task``, from the zoo and this machine.

    Parameters
    ----------
    text
        Words that must all appear in a model's name, description, id or tags.
    tags, task
        Tags a model must carry (``task`` is one of :data:`TASKS`).
    runs_here
        True: only models that run with what is installed here; False: only those that do not.
    zoo, local
        Include the zoo's listing, and the models on this machine.
    refresh
        Fetch the zoo's listing even if the cached one is recent.

    Returns
    -------
    Catalog
        Local models first, then the zoo's by downloads; ``note`` says when the zoo listing is
        old (offline) or missing.
    """
    entries: List[Entry] = []
    note = ""
    if local:
        for folder, origin in local_folders():
            entry = local_entry(folder, origin)
            card = {"name": entry.name, "description": entry.description, "tags": entry.tags, "id": entry.id}
            if matches(card, text, tags, task):
                entries.append(entry)
    if zoo:
        try:
            items, note = fetch_listing(refresh)
        except SourceError as e:
            items, note = [], f"{e}; showing the models on this machine only"
        chosen = [i for i in items if str(i.get("type", "model")) == "model" and matches(
            {**i["manifest"], "id": str(i["id"]).split("/")[-1]}, text, tags, task)]
        chosen.sort(key=lambda i: -(i.get("download_count") or 0) if isinstance(i.get("download_count"), int) else 0)
        entries += [zoo_entry(i) for i in chosen]
    if runs_here is not None:
        entries = [e for e in entries if e.runs_here == runs_here]
    return Catalog(entries, note)
