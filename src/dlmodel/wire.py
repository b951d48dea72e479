"""The wire between a model's worker process and its client: framed JSON messages over the
worker's stdin/stdout, and arrays in shared memory (never pickled, never written to files).

Only numpy and the standard library: the client side runs inside CellProfiler 4.2.8 (Python 3.9),
the worker side inside the model's own environment.

- A message is a 4-byte big-endian length and that many bytes of UTF-8 JSON.
- An array travels as a reference, ``{"shm": name, "offset": bytes, "shape": [...], "dtype": "<f4"}``,
  into a shared memory segment. **The client owns every segment**: it lends one for the inputs
  and, when the worker says how many bytes its results need, one for the outputs; the worker only
  maps them. So a worker that dies leaks nothing, and the client's segments go with it (Python's
  resource tracker unlinks what a crashed client left).
- The client keeps its segments mapped in a :class:`Pool` and lends one again once no array
  views it, and the worker keeps what it mapped until told to forget it: from the second image
  set on, nothing is mapped or page-faulted afresh.
"""
from __future__ import annotations

import atexit
import json
import struct
import sys
import weakref
from multiprocessing import shared_memory
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# Raised with every change of the messages; client and worker must agree.
PROTOCOL = 1
_HEADER = struct.Struct(">I")
# Arrays start at multiples of this in a segment (SIMD-friendly, cache-line aligned).
ALIGN = 64


def send(stream: IO[bytes], message: Mapping[str, Any]) -> None:
    """Write one message and flush it."""
    data = json.dumps(message, separators=(",", ":")).encode("utf-8")
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def recv(stream: IO[bytes]) -> Optional[Dict[str, Any]]:
    """Read one message; None at the end of the stream (the other side is gone)."""
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    data = _read_exact(stream, _HEADER.unpack(header)[0])
    return None if data is None else json.loads(data.decode("utf-8"))


def _read_exact(stream: IO[bytes], n: int) -> Optional[bytes]:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def layout(arrays: Sequence[np.ndarray]) -> Tuple[List[int], int]:
    """Aligned offsets of ``arrays`` packed into one segment, and the segment's size (>= 1)."""
    offsets, end = [], 0
    for arr in arrays:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + arr.nbytes
    return offsets, max(end, 1)


def create(nbytes: int) -> shared_memory.SharedMemory:
    """A new segment of ``nbytes`` (the client's: it owns it and unlinks it)."""
    return shared_memory.SharedMemory(create=True, size=max(int(nbytes), 1))


def attach(name: str) -> shared_memory.SharedMemory:
    """Map a segment someone else owns, without adopting it: this process's exit does not
    unlink it (before Python 3.13 attaching registered it with the resource tracker too)."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    segment = shared_memory.SharedMemory(name=name)
    if sys.platform != "win32":
        from multiprocessing import resource_tracker

        resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
    return segment


def put(arrays: Sequence[np.ndarray], name: str, buf: Any) -> List[Dict[str, Any]]:
    """Copy ``arrays`` into segment ``name`` through its buffer ``buf`` (the one copy of each:
    the shared buffer) and return their references."""
    offsets, _ = layout(arrays)
    refs = []
    for arr, offset in zip(arrays, offsets):
        arr = np.asarray(arr)
        r = ref(name, offset, arr)
        if arr.size:
            target = view(r, buf)
            np.copyto(target, arr, casting="no")
            del target
        refs.append(r)
    return refs


def ref(name: str, offset: int, arr: np.ndarray) -> Dict[str, Any]:
    """The reference to an array lying at ``offset`` in segment ``name``."""
    return {"shm": name, "offset": int(offset), "shape": list(arr.shape), "dtype": arr.dtype.str}


def view(reference: Mapping[str, Any], buf: Any) -> np.ndarray:
    """The array a reference names, as a view on a mapped segment's buffer (a segment, or a
    lease's root array: :class:`Pool`); no copy. The view exports the buffer (``np.frombuffer``), so the segment
    cannot be unmapped under it: :func:`release` keeps such a segment until its last view is gone."""
    shape, dtype = tuple(reference["shape"]), np.dtype(reference["dtype"])
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(getattr(buf, "buf", buf), dtype, count, int(reference["offset"])).reshape(shape)


_HELD: List[shared_memory.SharedMemory] = []


def release(segment: shared_memory.SharedMemory, unlink: bool = True) -> None:
    """Unlink a segment (its name; ``unlink`` for the owner only) and unmap it as soon as no
    array views it: now, or at a later :func:`release` once its last view is gone."""
    if unlink:
        try:
            segment.unlink()
        except FileNotFoundError:
            pass
    _HELD.append(segment)
    for held in list(_HELD):
        try:
            held.close()
        except BufferError:  # arrays still view it
            continue
        _HELD.remove(held)


@atexit.register
def _quiet() -> None:
    # at exit, arrays may outlive their segments' objects: the process unmaps everything anyway
    for held in _HELD:
        held.close = lambda: None  # type: ignore[method-assign]


class Pool:
    """The client's segments, kept mapped and lent again once no array views them.

    A lease is a ``uint8`` array over a segment (its root); every array made through it
    (:func:`view`) holds the root alive (``np.frombuffer`` of an array exports that array), and so
    does anything derived from those arrays. The pool keeps a weak reference to the root: the
    segment is free again exactly when the root is gone, once the request it was lent for is over
    (:meth:`settle`; until then it is pinned). At most ``keep_bytes`` stay mapped while idle; the
    names of segments let go since the worker last heard are in :attr:`dropped` (it unmaps them)."""

    def __init__(self, keep_bytes: int = 256 * 2**20):
        self.keep_bytes = keep_bytes
        self.segments: List[shared_memory.SharedMemory] = []
        self.roots: Dict[str, "weakref.ref[np.ndarray]"] = {}
        self.pinned: set = set()
        self.dropped: List[str] = []

    def settle(self) -> None:
        """The request is over: what was lent for it is free once no array views it."""
        self.pinned.clear()

    def _free(self, segment: shared_memory.SharedMemory) -> bool:
        if segment.name in self.pinned:
            return False
        root = self.roots.get(segment.name)
        return root is None or root() is None

    def lease(self, nbytes: int) -> Tuple[str, np.ndarray]:
        """A segment of at least ``nbytes`` that nothing views: its name and its root array."""
        free = [s for s in self.segments if self._free(s) and s.size >= nbytes]
        if free:
            segment = min(free, key=lambda s: s.size)
        else:
            segment = create(-(-max(int(nbytes), 1) // 2**20) * 2**20)  # whole MiB: a little room to reuse
            self.segments.append(segment)
        root = np.frombuffer(segment.buf, np.uint8)
        self.roots[segment.name] = weakref.ref(root)
        self.pinned.add(segment.name)
        self._trim()
        return segment.name, root

    def _trim(self) -> None:
        idle = sorted((s for s in self.segments if self._free(s)), key=lambda s: s.size)
        while idle and sum(s.size for s in idle) > self.keep_bytes:
            segment = idle.pop()
            self.segments.remove(segment)
            self.roots.pop(segment.name, None)
            self.dropped.append(segment.name)
            release(segment)

    def take_dropped(self) -> List[str]:
        names, self.dropped = self.dropped, []
        return names

    def close(self) -> None:
        """Unlink every segment (arrays that still view one keep their memory until they go)."""
        for segment in self.segments:
            release(segment)
        self.segments, self.roots, self.dropped, self.pinned = [], {}, [], set()
