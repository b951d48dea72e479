"""A model package as a set of files: which files its rdf names, that each is there, inside the
package where it must be, and has the sha256 the rdf gives; and opening a package from any
source, with a damaged cache entry dropped and fetched again, once.

Fetching is :mod:`dlmodel.sources`'; the view of the rdf is :mod:`dlmodel.spec`'s; whether the
package's code may run is :mod:`dlmodel.trust`'s.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from . import sources
from .errors import SourceError, SpecError
from .sources import Resolved, confined_path
from .spec import ModelSpec, local_path, read_description, read_description_noted, sha256_file, spec_from_descr
from .spec_v0_4 import files_v0_4, spec_from_v0_4


class _File(NamedTuple):
    source: Any
    sha256: Optional[str]


def files_named(descr: Any) -> Dict[str, Any]:
    """Every file the rdf describes with a ``source`` (weights, architecture, test tensors,
    documentation, attachments...), by source text. Covers are not needed to run a model."""
    from pydantic import BaseModel

    found: Dict[str, Any] = {}
    if str(getattr(descr, "format_version", "")).startswith("0.4"):  # read as 0.4: files named as plain paths too
        for source, sha in files_v0_4(descr):
            found[str(source)] = _File(source, sha)

    def walk(node: Any) -> None:
        if isinstance(node, BaseModel):
            if hasattr(node, "source") and hasattr(node, "sha256") and node.source is not None:
                if getattr(found.get(str(node.source)), "sha256", None) is None:  # a hash wins over none
                    found[str(node.source)] = node
            for name in type(node).model_fields:
                walk(getattr(node, name, None))
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for item in node.values():
                walk(item)

    walk(descr)
    return found


def _file_list(rdf: Path, url: str) -> List[Tuple[Any, Optional[str]]]:
    """What a downloaded rdf names, for :func:`sources.resolve` to fetch."""
    descr = read_description(rdf, origin=url)
    return [(fd.source, getattr(fd, "sha256", None)) for fd in files_named(descr).values()]


def resolve(source: Union[str, Path]) -> Resolved:
    """Any source made a local folder with every file its rdf names (not yet verified)."""
    return sources.resolve(source, _file_list)


def verify_files(descr: Any, root: Path, confined: bool = True) -> Tuple[int, int]:
    """Check every file the rdf names exists under ``root`` with the sha256 the rdf gives.

    With ``confined`` (every package but a folder the user made), a name that lies outside
    ``root`` is refused (:func:`sources.confined_path`). Returns (files checked, files without
    a sha256 in the rdf)."""
    checked = unhashed = 0
    for fd in files_named(descr).values():
        path = confined_path(root, fd.source, root) if confined else local_path(root, fd.source)
        try:
            if not path.is_file():
                raise SourceError(f"file {path.name!r} named in the rdf is missing from {root}")
            expected = getattr(fd, "sha256", None)
            if expected is None:
                unhashed += 1
                continue
            actual = sha256_file(path)
        except OSError as e:  # a name too long for the filesystem, no permission, ...
            raise SourceError(f"file {str(fd.source)[:80]!r} named in the rdf cannot be read: {e.strerror}") from e
        if actual != str(expected):
            raise SourceError(f"sha256 mismatch for {path}: the rdf says {expected}, the file has {actual}")
        checked += 1
    return checked, unhashed


def open_spec(source: Union[str, Path]) -> Tuple[ModelSpec, Resolved]:
    """Resolve a source, read and validate its rdf and check every file's sha256; no engine.

    A downloaded package that fails the checks (a disk error, a hand edit in the cache) is
    dropped and downloaded again, once; a local one is reported as it is."""
    resolved = resolve(source)
    try:
        descr, note = read_description_noted(resolved.rdf, origin=resolved.origin)
        verify_files(descr, resolved.rdf.parent, confined=resolved.confined)
    except (SourceError, SpecError):
        if resolved.local:
            raise
        sources.evict(resolved.rdf.parent)
        resolved = resolve(source)
        descr, note = read_description_noted(resolved.rdf, origin=resolved.origin)
        verify_files(descr, resolved.rdf.parent, confined=resolved.confined)
    return view(descr, resolved.rdf, note), resolved


def view(descr: Any, rdf: Path, note: str = "") -> ModelSpec:
    """The whole view of a validated description whose files lie beside ``rdf``: format 0.5,
    or 0.4 read as 0.4 (``note`` says how bioimageio.spec came to read it), with the parts its
    model family adds (:func:`dlmodel.families.complete`)."""
    from . import families

    if str(descr.format_version).startswith("0.4"):
        return families.complete(spec_from_v0_4(descr, rdf, note))
    return families.complete(spec_from_descr(descr, rdf, note))
