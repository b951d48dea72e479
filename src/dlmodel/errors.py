"""The errors dlmodel raises: one line each, naming the file, tensor or setting at fault."""
from __future__ import annotations


class DLModelError(Exception):
    """Base class: a problem the user can act on; ``str(err)`` is one line."""


class SourceError(DLModelError):
    """A model source cannot be found, downloaded, unpacked or verified."""


class SpecError(DLModelError):
    """A package's rdf is invalid or uses something dlmodel does not support."""


class EngineError(DLModelError):
    """No usable engine for the model's weights, or the engine failed to load/run them."""


class InputError(DLModelError):
    """An image does not fit the model (axes, channels, dimensions, dtype, values)."""


class ImageFileError(DLModelError):
    """An image file cannot be read or written."""


class WorkerError(DLModelError):
    """The model's own Python environment (its worker process) cannot be started, stopped
    while working, or did not answer in time."""


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's first line (its type's name if it says nothing), at most ``limit``
    characters: how a framework's multi-line error is shown to a user; the whole error stays
    the cause (``raise ... from error``) for logs.

    >>> one_line(ValueError("bad shape\\n  at line 3"))
    'bad shape'
    >>> one_line(KeyError())
    'KeyError'
    """
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]
