"""Model sources and the download cache: fetching only.

A source is a ``bioimageio.yaml``/``rdf.yaml`` path, a package folder, a package ``.zip``, an
http(s) URL of an rdf or a zip, a zoo id (``affable-shark``, ``affable-shark/1``) or a Zenodo
DOI (``10.5281/zenodo.NNN``). :func:`resolve` makes every source a local folder holding the
rdf and every file it names; which files an rdf names, and whether they are intact, is
:mod:`dlmodel.package`'s to say (it hands :func:`resolve` the file list).

Remote packages are downloaded once into the cache (``DLMODEL_CACHE``, default the user cache
dir): into a temporary folder that is renamed into place when complete, under a file lock, so
many processes sharing one cache on a cluster filesystem download a package once and never see
half of it. Offline, a cached copy is used.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

from .errors import SourceError
from .trust import DOWNLOAD, FOLDER, ZIP

RDF_NAMES = ("bioimageio.yaml", "rdf.yaml")
ZOO_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)+(?:/[0-9][0-9a-z.]*)?$")
DOI = re.compile(r"^(?:doi:|https?://(?:dx\.)?doi\.org/)?(10\.\d{4,}/\S+)$", re.I)
ZENODO_DOI = re.compile(r"^10\.5281/zenodo\.(\d+)$", re.I)

# Where zoo ids and Zenodo records are looked up; overridable for mirrors (and for tests, which
# serve a zoo from 127.0.0.1).
DEFAULT_ZOO_URL = "https://hypha.aicell.io/bioimage-io/artifacts/{id}/files/rdf.yaml"
DEFAULT_ZENODO_API = "https://zenodo.org/api"

# Archive limits: real packages are a few hundred MB in a few dozen files.
MAX_UNPACKED_BYTES = int(os.environ.get("DLMODEL_MAX_UNPACKED_BYTES", 8 << 30))
MAX_FILES = int(os.environ.get("DLMODEL_MAX_FILES", 10_000))
# One downloaded file; rdfs have their own, much smaller limit (spec.MAX_RDF_BYTES).
MAX_DOWNLOAD_BYTES = int(os.environ.get("DLMODEL_MAX_DOWNLOAD_BYTES", 8 << 30))
COMPLETE = ".dlmodel-complete"


@dataclass(frozen=True)
class Resolved:
    """A source made local: the rdf path, the source as the user gave it, and its origin kind
    (``folder``, ``zip`` or ``download``)."""

    rdf: Path
    origin: str
    kind: str

    @property
    def local(self) -> bool:
        """Whether the source is a file or folder on this machine (not a URL, zoo id or DOI)."""
        return self.kind != DOWNLOAD

    @property
    def confined(self) -> bool:
        """Whether every file the rdf names must lie inside the package folder: always, but for
        a folder the user made (which may name files beside it)."""
        return self.kind != FOLDER


def cache_dir() -> Path:
    env = os.environ.get("DLMODEL_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("dlmodel"))


# What an rdf names: (source as the rdf gives it, its sha256 or None), for the rdf at a path
# downloaded from a URL. dlmodel.package gives it; fetching needs no knowledge of rdfs.
FileList = Callable[[Path, str], Iterable[Tuple[Any, Optional[str]]]]


def resolve(source: Union[str, os.PathLike], files_of: FileList) -> Resolved:
    """Turn any model source into a local package folder (downloading every file that
    ``files_of`` says its rdf names); see the module docstring."""
    text = str(source).strip()
    path = Path(text).expanduser()
    if path.exists():
        rdf = _local_rdf(path)
        if path.is_file() and path.suffix.lower() == ".zip":
            return Resolved(rdf, text, ZIP)
        return Resolved(rdf, text, _marked_kind(rdf.parent) or FOLDER)
    if text.startswith(("http://", "https://")) and not DOI.match(text):
        return Resolved(_remote(text, text, files_of), text, DOWNLOAD)
    doi = DOI.match(text)
    if doi:
        return Resolved(_from_doi(doi.group(1), text, files_of), text, DOWNLOAD)
    if ZOO_ID.match(text):
        pattern = os.environ.get("DLMODEL_ZOO_URL", DEFAULT_ZOO_URL)
        return Resolved(_remote(pattern.format(id=text), text, files_of), text, DOWNLOAD)
    raise SourceError(
        f"model source {text!r} is not a file, folder, URL, zoo id or DOI (no such file: {path.resolve()})"
    )


def _marked_kind(folder: Path) -> Optional[str]:
    """The origin a cache entry's marker records (a folder dlmodel downloaded or unpacked, or a
    copy of one): such a folder is not one the user made, wherever it now lies."""
    marker = folder / COMPLETE
    if not marker.is_file():
        return None
    try:  # a marker is a few bytes; a larger one (a copy of someone else's folder) is not read
        kind = json.loads(marker.read_text()).get("kind") if marker.stat().st_size < 4096 else None
    except (OSError, ValueError, AttributeError, RecursionError):
        kind = None
    return kind if kind in (ZIP, DOWNLOAD) else DOWNLOAD


def _local_rdf(path: Path) -> Path:
    if path.is_dir():
        for name in RDF_NAMES:
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.bioimageio.yaml"))
        if found:
            return found[0]
        raise SourceError(f"folder {path} holds no bioimageio.yaml or rdf.yaml")
    if path.suffix.lower() == ".zip":
        return _local_rdf(unpack_to_cache(path))
    if path.suffix.lower() in (".yaml", ".yml"):
        return path
    raise SourceError(f"model source {path} is not a folder, .zip or .yaml file")


def _sha256(path: Path) -> str:
    from .spec import sha256_file

    return sha256_file(path)


def unpack_to_cache(zip_path: Path) -> Path:
    """Unpack a zip once into the cache (keyed by its sha256) and return the folder."""
    return _unpack_cached(zip_path, cache_dir() / "unpacked" / _sha256(zip_path)[:16])


def _unpack_cached(zip_path: Path, dest: Path) -> Path:
    if (dest / COMPLETE).exists():
        return dest
    sweep_stale(dest.parent)
    with _lock(dest):
        if (dest / COMPLETE).exists():
            return dest
        with _staging(dest) as tmp:
            extract_zip(zip_path, tmp)
            (tmp / COMPLETE).write_text(json.dumps({"source": str(zip_path), "kind": ZIP}))
    return dest


def extract_zip(
    zip_path: Path, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES, max_files: int = MAX_FILES
) -> Path:
    """Unpack a zip into ``dest``, refusing anything that could write outside it.

    Refused: absolute paths, ``..``, symbolic links and device files, duplicate names, more
    than ``max_files`` entries or ``max_bytes`` unpacked (zip bombs), truncated archives."""
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SourceError(f"{zip_path} is not a readable zip archive: {e}") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise SourceError(f"{zip_path} holds {len(infos)} files, more than the limit of {max_files}")
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise SourceError(
                f"{zip_path} unpacks to {total} bytes, more than the limit of {max_bytes} (DLMODEL_MAX_UNPACKED_BYTES)"
            )
        seen = set()
        for info in infos:
            name = info.filename
            parts = Path(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", name) or ".." in parts:
                raise SourceError(f"{zip_path} has an entry outside the package folder: {name!r}")
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no type
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise SourceError(f"{zip_path} has a link or special file, which packages may not hold: {name!r}")
            if name in seen:
                raise SourceError(f"{zip_path} has the entry {name!r} twice")
            seen.add(name)
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        for info in infos:
            target = dest.joinpath(*Path(info.filename).parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    # count real bytes: a forged header must not get past the size limit
                    written = copy_capped(src.read, out, max_bytes - written,
                                          lambda: SourceError(f"{zip_path} unpacks to more than {max_bytes} bytes")) + written
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
                raise SourceError(f"{zip_path} is damaged (entry {info.filename!r}): {e}") from e
    return dest


# --- remote sources -------------------------------------------------------------------------


def _remote(url: str, origin: str, files_of: FileList, file_urls: Optional[Dict[str, str]] = None,
            dest: Optional[Path] = None) -> Path:
    """Download a remote rdf (or zip) and every file it names into the cache; return the rdf.

    ``file_urls`` maps file names to URLs where they do not lie beside the rdf (Zenodo)."""
    if dest is None:
        dest = cache_dir() / "packages" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if (dest / COMPLETE).exists():
        return _local_rdf(dest)
    sweep_stale(dest.parent)
    try:
        with _lock(dest):
            if not (dest / COMPLETE).exists():
                with _staging(dest) as tmp:
                    _fetch_package(url, tmp, files_of, file_urls or {})
                    (tmp / COMPLETE).write_text(json.dumps({"source": origin, "url": url, "kind": DOWNLOAD}))
    except _NetworkError as e:
        raise SourceError(
            f"cannot download model {origin!r} ({e}) and there is no cached copy in {dest}"
        ) from e
    return _local_rdf(dest)


class _NetworkError(Exception):
    pass


def _fetch_package(url: str, folder: Path, files_of: FileList, file_urls: Dict[str, str]) -> None:
    if urllib.parse.urlparse(url).path.lower().endswith(".zip"):
        archive = folder / "package.zip"
        download(url, archive)
        extract_zip(archive, folder)
        archive.unlink()
        return
    rdf = folder / "rdf.yaml"
    from .spec import MAX_RDF_BYTES

    download(url, rdf, max_bytes=MAX_RDF_BYTES)
    for src, sha256 in files_of(rdf, url):
        target = confined_path(folder, src, url)
        text = str(src)
        if text.startswith(("http://", "https://")):
            remote = text
        else:
            remote = file_urls.get(text) or urllib.parse.urljoin(url, text)
        target.parent.mkdir(parents=True, exist_ok=True)
        download(remote, target, sha256)


def confined_path(root: Path, source: Any, where: Union[str, Path]) -> Path:
    """Where a file the rdf names lies in ``root``, refusing a name that would lie outside it
    (``../x``, an absolute path, a drive letter) or a non-http(s) URL such as ``file://``.

    Every package dlmodel downloads or unpacks goes through this: its rdf is someone else's
    text, and a file name that climbs out of the package folder would overwrite (when
    downloaded) or read (when loaded) any file the user can reach."""
    from .spec import local_path

    text = str(source)
    scheme = urllib.parse.urlparse(text).scheme.lower()
    bad = None
    if scheme and scheme not in ("http", "https") and not re.match(r"^[a-zA-Z]$", scheme):
        bad = f"a {scheme}: URL"
    elif text.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", text) or isinstance(source, Path) and source.is_absolute():
        bad = "an absolute path"
    if bad is None:
        target = local_path(root, source)
        base, where_it_lies = Path(os.path.abspath(root)), Path(os.path.abspath(target))
        if where_it_lies == base or not where_it_lies.is_relative_to(base):
            bad = "a path outside the package folder"
    if bad is not None:
        raise SourceError(f"the rdf of {where} names the file {text[:120]!r}, {bad}; refusing the package")
    return target


def copy_capped(read: Callable[[int], bytes], out: Any, limit: int, too_much: Callable[[], Exception],
                each: Optional[Callable[[bytes], None]] = None) -> int:
    """Copy blocks from ``read`` to ``out`` until the end, counting the real bytes: past
    ``limit`` raise ``too_much()`` (a forged size or an endless stream stops there); ``each``
    sees every block first. Returns the bytes copied."""
    size = 0
    while True:
        block = read(1 << 20)
        if not block:
            return size
        size += len(block)
        if size > limit:
            raise too_much()
        if each is not None:
            each(block)
        out.write(block)


class DownloadCancelled(SourceError):
    """A download stopped by its progress callback (a Cancel button): nothing of it is kept."""


# Who is told how a download advances: ``callback(url, bytes_so_far, total_or_None)``, set for a
# block of code by :func:`reporting` (a progress bar, a dialog's Cancel button, which raises
# DownloadCancelled from the callback). A context variable: each thread reports to its own.
_PROGRESS: "contextvars.ContextVar[Optional[Callable[[str, int, Optional[int]], None]]]" = \
    contextvars.ContextVar("dlmodel_download_progress", default=None)


@contextlib.contextmanager
def reporting(callback: Callable[[str, int, Optional[int]], None]) -> Iterator[None]:
    """Within the block, every file downloaded calls ``callback(url, done, total)`` after each
    block; an exception it raises (:class:`DownloadCancelled`) stops the download, and the
    package's staging folder is removed: nothing half-made stays in the cache."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def download(url: str, target: Path, sha256: Optional[str] = None, max_bytes: Optional[int] = None) -> Path:
    """Download ``url`` to ``target`` atomically (temporary file + rename), checking sha256.

    Only http(s). Refused: more than ``max_bytes`` (default ``DLMODEL_MAX_DOWNLOAD_BYTES``),
    and a transfer still running after ``DLMODEL_DOWNLOAD_DEADLINE`` seconds (a server that
    trickles a byte at a time never trips the per-read ``DLMODEL_HTTP_TIMEOUT``)."""
    if urllib.parse.urlparse(url).scheme.lower() not in ("http", "https"):
        raise SourceError(f"refusing to download {url[:120]!r}: only http and https URLs are fetched")
    timeout = float(os.environ.get("DLMODEL_HTTP_TIMEOUT", "30"))
    deadline = time.monotonic() + float(os.environ.get("DLMODEL_DOWNLOAD_DEADLINE", "3600"))
    limit = max_bytes if max_bytes is not None else MAX_DOWNLOAD_BYTES
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    h = hashlib.sha256()
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "dlmodel"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
            announced = resp.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) > limit:
                raise SourceError(f"{url} is {int(announced)} bytes, more than the limit of {limit} for this file")
            total = int(announced) if announced and announced.isdigit() else None
            progress, done = _PROGRESS.get(), [0]

            def each(block: bytes) -> None:
                if time.monotonic() > deadline:
                    raise SourceError(
                        f"{url} was still downloading after {os.environ.get('DLMODEL_DOWNLOAD_DEADLINE', '3600')} s "
                        "(DLMODEL_DOWNLOAD_DEADLINE); stopped"
                    )
                h.update(block)
                if progress is not None:
                    done[0] += len(block)
                    progress(url, done[0], total)

            # read1: whatever has arrived, so that a trickle reaches the deadline check
            copy_capped(resp.read1, out, limit,
                        lambda: SourceError(f"{url} sent more than the limit of {limit} bytes for this file; stopped"), each)
    except SourceError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise _NetworkError(f"{url}: {reason}") from e
    if sha256 and h.hexdigest() != str(sha256):
        tmp.unlink(missing_ok=True)
        raise SourceError(f"downloaded {url} has sha256 {h.hexdigest()}, the rdf says {sha256}")
    os.replace(tmp, target)
    return target


def _from_doi(doi: str, origin: str, files_of: FileList) -> Path:
    m = ZENODO_DOI.match(doi)
    if not m:
        raise SourceError(f"DOI {doi!r} is not a Zenodo DOI (10.5281/zenodo.N); give the package's URL instead")
    record = m.group(1)
    api = os.environ.get("DLMODEL_ZENODO_API", DEFAULT_ZENODO_API).rstrip("/")
    rec_url = f"{api}/records/{record}"
    key = hashlib.sha256(rec_url.encode()).hexdigest()[:16]
    cached = cache_dir() / "packages" / key
    if (cached / COMPLETE).exists():
        return _local_rdf(cached)
    try:
        req = urllib.request.Request(rec_url, headers={"User-Agent": "dlmodel", "Accept": "application/json"})
        timeout = float(os.environ.get("DLMODEL_HTTP_TIMEOUT", "30"))
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            from .spec import MAX_RDF_BYTES

            data = resp.read(MAX_RDF_BYTES + 1)  # a record is a few KB: never more than an rdf may be
            if len(data) > MAX_RDF_BYTES:
                raise SourceError(f"Zenodo record {rec_url} is larger than {MAX_RDF_BYTES} bytes; refused")
            meta = json.loads(data.decode())
    except (urllib.error.URLError, OSError, ValueError, RecursionError) as e:
        raise SourceError(
            f"cannot look up {origin!r} at {rec_url} ({getattr(e, 'reason', e)}) and there is no cached copy in {cached}"
        ) from e
    files = {f["key"]: f["links"]["self"] for f in meta.get("files", [])}
    rdf_name = next((n for n in RDF_NAMES if n in files), None)
    if rdf_name is None:
        raise SourceError(f"Zenodo record {record} ({origin}) holds no bioimageio.yaml or rdf.yaml")
    return _remote(files[rdf_name], origin, files_of, files, cached)


# --- cache plumbing -------------------------------------------------------------------------


class _lock:
    """An inter-process file lock beside ``dest`` (works on shared cluster filesystems)."""

    def __init__(self, dest: Path):
        dest.parent.mkdir(parents=True, exist_ok=True)
        from filelock import FileLock

        self._lock = FileLock(str(dest) + ".lock")

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


class _staging:
    """A temporary folder beside ``dest``, renamed to ``dest`` only if the block succeeds.

    Entered under ``dest``'s lock, so any other staging folder of ``dest`` is a killed
    process's leftover and is removed first."""

    def __init__(self, dest: Path):
        self.dest = dest

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.dest.parent.glob(f".{self.dest.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", dir=self.dest.parent))
        from .io import honour_umask

        honour_umask(self.tmp, directory=True)  # mkdtemp makes it 0700: a shared cache needs the umask's
        return self.tmp

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            if self.dest.exists():  # an incomplete leftover (no marker): replace it
                shutil.rmtree(self.dest)
            os.replace(self.tmp, self.dest)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def sweep_stale(folder: Path) -> int:
    """Remove staging folders that killed downloads or unpacks left in a cache folder; returns
    how many. A staging folder is only ever filled under its package's lock, so one whose lock
    is free is provably abandoned; one whose lock is held belongs to a live process and stays."""
    from filelock import FileLock, Timeout

    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(".*.*"):
        if not tmp.is_dir():
            continue
        dest = tmp.name[1:].split(".")[0]
        lock = FileLock(str(folder / dest) + ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        try:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
        finally:
            lock.release()
    return removed


def evict(folder: Path) -> None:
    """Remove a cached package (only ever a folder inside the cache) so it is fetched again."""
    folder = Path(folder).resolve()
    if cache_dir().resolve() not in folder.parents:
        raise SourceError(f"{folder} is not in the cache {cache_dir()}; not removing it")
    with _lock(folder):
        shutil.rmtree(folder, ignore_errors=True)
