"""The wire between a model's worker process and its client: framed JSON messages over the
worker's stdin/stdout, and arrays in shared memory (never pickled, never written to files).

Only numpy and the standard library: the client side runs inside CellProfiler 4.2.8 (Python 3.9),
the worker side inside the model's own environment.

- A message is a 4-byte big-endian length and that many bytes of UTF-8 JSON object, at most
  ``MAX_MESSAGE_BYTES`` (arrays never travel in messages): a peer that sends more, or anything
  else (a library printing to the protocol's stream), is a :class:`ProtocolError` at once.
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
import os
import secrets
import struct
import sys
import weakref
from multiprocessing import shared_memory
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# Raised with every change of the messages; client and worker must agree.
# 2: the worker starts isolated and says where its dlmodel comes from; 3: the confidence op.
PROTOCOL = 3
_HEADER = struct.Struct(">I")
# Messages are small (descriptions, references); the largest, a model's info, is a few KB.
MAX_MESSAGE_BYTES = 16 * 2**20
# Segments are named by their owner's process id, so that a later client can unlink those of a
# process that was killed before it could (:func:`reclaim_stale`).
PREFIX = "dlmodel"
_SHM_DIR = "/dev/shm"


class ProtocolError(ValueError):
    """What the other side sent is not a message of this protocol (or names memory it may not)."""
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
    size = _HEADER.unpack(header)[0]
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a message of {size} bytes (at most {MAX_MESSAGE_BYTES}), which begins {header!r}")
    data = _read_exact(stream, size)
    if data is None:
        return None
    try:
        message = json.loads(data.decode("utf-8"))
    except ValueError as e:
        raise ProtocolError(f"a message that is not JSON, which begins {(header + data)[:40]!r}") from e
    if not isinstance(message, dict):
        raise ProtocolError(f"a message that is not a JSON object: {data[:40]!r}")
    return message


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
    """A new segment of ``nbytes`` (the client's: it owns it and unlinks it), named
    ``dlmodel_<pid>_<random>``."""
    _reclaim_once()
    while True:
        name = f"{PREFIX}_{os.getpid()}_{secrets.token_hex(4)}"
        try:
            return shared_memory.SharedMemory(name=name, create=True, size=max(int(nbytes), 1))
        except FileExistsError:  # a name drawn twice: draw again
            continue


def reclaim_stale(directory: str = _SHM_DIR) -> List[str]:
    """Unlink the segments of this user's dlmodel processes that are gone.

    A client unlinks its segments when it closes, and Python's resource tracker when it crashes;
    a whole process group killed at once (SIGKILL to a cluster job) takes the tracker with it,
    and the segments stay in memory until reboot. Their names carry the owner's process id:
    those whose process no longer exists are removed. Linux only (elsewhere segments are not
    files one can list); returns the names removed."""
    removed: List[str] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        parts = entry.split("_")
        if len(parts) != 3 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        path = os.path.join(directory, entry)
        try:
            if uid is not None and os.stat(path).st_uid != uid:
                continue
        except OSError:
            continue
        if _alive(int(parts[1])):
            continue
        try:
            os.unlink(path)
            removed.append(entry)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or we cannot tell: keep it
    return True


_RECLAIMED: List[bool] = []


def _reclaim_once() -> None:
    if not _RECLAIMED and sys.platform.startswith("linux"):
        _RECLAIMED.append(True)
        reclaim_stale()


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
    shape, dtype, offset = _checked(reference)
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dtype)
    raw = getattr(buf, "buf", buf)
    size = len(raw) if not isinstance(raw, np.ndarray) else raw.nbytes
    if offset + count * dtype.itemsize > size:
        raise ProtocolError(f"an array of {count * dtype.itemsize} bytes at {offset} in a buffer of {size}")
    return np.frombuffer(raw, dtype, count, offset).reshape(shape)


def _checked(reference: Any) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """A reference's shape, numeric dtype and offset, or :class:`ProtocolError`."""
    try:
        shape = tuple(reference["shape"])
        offset = reference["offset"]
        dtype = np.dtype(str(reference["dtype"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"not an array reference: {str(reference)[:80]}") from e
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n for n in shape) or len(shape) > 8:
        raise ProtocolError(f"an array shape {list(shape)[:9]}")
    if not (isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0) or dtype.kind not in "biuf":
        raise ProtocolError(f"an array at offset {offset!r} of type {dtype}")
    return shape, dtype, offset


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
