"""The wire between a model's worker process and its client: framed JSON messages over the
worker's stdin/stdout, and arrays in shared memory (never pickled, never written to files).

Only numpy and the standard library: the client side runs inside CellProfiler 4.2.8 (Python 3.9),
the worker side inside the model's own environment.

- A message is a 4-byte big-endian length and that many bytes of UTF-8 JSON.
- An array travels as a reference, ``{"shm": name, "offset": bytes, "shape": [...], "dtype": "<f4"}``,
  into a shared memory segment. **The client owns every segment**: it creates the input segment
  and, when the worker says how many bytes its results need, the output segment; the worker only
  maps them. So a worker that dies leaks nothing, and the client's segments go with it (Python's
  resource tracker unlinks what a crashed client left).
"""
from __future__ import annotations

import json
import struct
import sys
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


def put(arrays: Sequence[np.ndarray], segment: shared_memory.SharedMemory) -> List[Dict[str, Any]]:
    """Copy ``arrays`` into ``segment`` (the one copy of each: the shared buffer) and return
    their references."""
    offsets, _ = layout(arrays)
    refs = []
    for arr, offset in zip(arrays, offsets):
        arr = np.asarray(arr)
        r = ref(segment.name, offset, arr)
        if arr.size:
            target = view(r, segment)
            np.copyto(target, arr, casting="no")
            del target
        refs.append(r)
    return refs


def ref(name: str, offset: int, arr: np.ndarray) -> Dict[str, Any]:
    """The reference to an array lying at ``offset`` in segment ``name``."""
    return {"shm": name, "offset": int(offset), "shape": list(arr.shape), "dtype": arr.dtype.str}


def view(reference: Mapping[str, Any], segment: shared_memory.SharedMemory) -> np.ndarray:
    """The array a reference names, as a view on the mapped segment (no copy). The view holds
    the segment's buffer (``np.frombuffer`` exports it), so the segment cannot be unmapped under
    it: :func:`release` keeps such a segment until its last view is gone."""
    shape, dtype = tuple(reference["shape"]), np.dtype(reference["dtype"])
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(segment.buf, dtype, count, int(reference["offset"])).reshape(shape)


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


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"shm", "offset", "shape", "dtype"}
