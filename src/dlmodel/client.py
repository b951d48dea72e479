"""Models in their own Python environment: where a model runs, decided once.

``load(source, python=None)`` gives a model in this process (:func:`dlmodel.api.load`), or, with
``python="/path/to/env/bin/python"``, a :class:`RemoteModel` with the same ``predict``,
``labels``, ``test`` and ``info``, whose engine runs in a worker process of that environment
(``python -m dlmodel.worker``, :mod:`dlmodel.worker`). This module needs only numpy and the
standard library, so it runs inside CellProfiler 4.2.8 (Python 3.9) with no engine and no
bioimageio.spec installed.

Lifetimes: one worker per environment per process, started on first use and shared by every
model loaded through it (each loaded once); a worker that dies is started again, models
reloaded, on the next request; :func:`clear_cache` (RunDLModel's end of run) closes every worker,
so its memory, GPU memory included, goes back. Images and outputs travel through shared memory
segments that this side owns (:mod:`dlmodel.wire`).

Consent: a worker starts only in an environment approved on this machine
(:mod:`dlmodel.approvals`: ``dlmodel env create`` or ``dlmodel env add``), or allowed for this
process by an explicit ``allow_unapproved_python=True`` (``--allow-unapproved-python``); it runs
isolated (``python -I``: the current folder and PYTHONPATH cannot replace its dlmodel), and its
dlmodel must be the one that was approved. Its replies are checked: a message that is too large,
not JSON, or not what was asked is a :class:`WorkerError`, never a hang or a traceback.

Timeouts (seconds): starting a worker ``DLMODEL_WORKER_START_TIMEOUT`` (default
``START_TIMEOUT_S``); loading a model ``LOAD_TIMEOUT_S``; any other request
``DLMODEL_WORKER_TIMEOUT`` (default ``REQUEST_TIMEOUT_S``). A worker that does not answer in time
is killed and the request fails with one line naming the environment, the model and the variable.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import approvals, errors, wire
from .errors import DLModelError, InputError, WorkerError, one_line
from .protocol import RunOptions
from .results import OutputCheck, Prediction, TestReport, require_prediction

LOGGER = logging.getLogger("dlmodel")

START_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 900.0
REQUEST_TIMEOUT_S = 600.0
CLOSE_TIMEOUT_S = 10.0


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40


# the largest result buffer a worker may ask for: no result is larger than this machine's memory
MAX_BUFFER_BYTES = _physical_memory()
TIMEOUT_ENV = "DLMODEL_WORKER_TIMEOUT"
START_TIMEOUT_ENV = "DLMODEL_WORKER_START_TIMEOUT"


def _seconds(variable: str, default: float) -> float:
    value = os.environ.get(variable)
    try:
        seconds = float(value) if value else default
    except ValueError:
        raise WorkerError(f"{variable}={value!r}: give seconds, e.g. {default:g}") from None
    if not seconds > 0:
        raise WorkerError(f"{variable}={value!r}: give a positive number of seconds")
    return seconds


def request_timeout() -> float:
    """Seconds a request other than start and load may take (``DLMODEL_WORKER_TIMEOUT``)."""
    return _seconds(TIMEOUT_ENV, REQUEST_TIMEOUT_S)


def start_timeout() -> float:
    """Seconds a worker may take to start and greet (``DLMODEL_WORKER_START_TIMEOUT``)."""
    return _seconds(START_TIMEOUT_ENV, START_TIMEOUT_S)


def find_python(path: Union[str, Path]) -> str:
    """The Python executable of an environment: the path itself, or ``bin/python``
    (``Scripts/python.exe`` on Windows) inside an environment folder."""
    p = Path(os.path.expanduser(str(path).strip()))
    if p.is_dir():
        for candidate in (p / "bin" / "python", p / "Scripts" / "python.exe"):
            if candidate.is_file():
                return str(candidate)
        raise WorkerError(f"{p}: a folder with no bin/python: give an environment's Python (e.g. {p / 'bin' / 'python'})")
    if not p.is_file():
        raise WorkerError(f"{p}: no such Python (give the path of an environment's python, e.g. ~/dlmodel-env/bin/python)")
    if not os.access(p, os.X_OK):
        raise WorkerError(f"{p}: not executable: give the path of an environment's python")
    return approvals.key(p)


class Worker:
    """One worker process for one Python environment: started on first use, again after it
    died. Requests are serialised (one at a time per worker)."""

    def __init__(self, python: str, dlmodel_from: Optional[str] = None):
        self.python = python
        self.dlmodel_from = dlmodel_from  # where its dlmodel was when the environment was approved
        self.lock = threading.RLock()
        self.generation = 0  # how many processes this worker has started; models reload on a change
        self.proc: Optional[subprocess.Popen] = None
        self.pid: Optional[int] = None
        self._messages: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
        self._stderr: Deque[str] = collections.deque(maxlen=20)
        self.pool = wire.Pool()  # the shared buffers, this side's, lent again from image set to image set

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)  # this Python's home (a frozen app's) is never the environment's
        try:
            proc = subprocess.Popen([self.python, *approvals.WORKER_ARGS], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as e:
            raise WorkerError(f"{self.python}: cannot start it ({e.strerror or e})") from e
        self.proc, self.pid = proc, proc.pid
        self.generation += 1
        self.pool.take_dropped()  # a new process has mapped none of them
        self._messages = messages = queue.Queue()
        self._stderr.clear()
        threading.Thread(target=_read_messages, args=(proc.stdout, messages), daemon=True,
                         name=f"dlmodel-worker-{proc.pid}-out").start()
        threading.Thread(target=_forward_stderr, args=(proc.stderr, self._stderr), daemon=True,
                         name=f"dlmodel-worker-{proc.pid}-err").start()
        hello = self._next(start_timeout(), "starting", START_TIMEOUT_ENV)
        if hello.get("hello") != wire.PROTOCOL:
            self.kill()
            raise WorkerError(f"{self.python}: its dlmodel speaks worker protocol {hello.get('hello')!r}, this one "
                              f"{wire.PROTOCOL}: install the same dlmodel version in that environment")
        found = hello.get("dlmodel")
        if self.dlmodel_from is not None and found != self.dlmodel_from:
            self.kill()
            raise WorkerError(f"{self.python}: its worker imported dlmodel from {found}, not from {self.dlmodel_from} "
                              "as when the environment was approved: approve it again (dlmodel env add) if you "
                              "moved dlmodel")
        if hello.get("missing"):
            self.kill()
            raise WorkerError(f"{self.python} lacks {', '.join(hello['missing'])}: install dlmodel with its engines there "
                              "(dlmodel env create, or pip install 'RunDLModel[onnx]': docs/cellprofiler.md)")
        LOGGER.info("dlmodel: started a worker in %s (Python %s, pid %s)", self.python, hello.get("python"), proc.pid)

    def request(self, message: Mapping[str, Any], timeout: float, what: str
                ) -> Tuple[Any, Optional[memoryview]]:
        """Send a request and wait for its answer: ``(result, buffer)``, where ``buffer`` holds
        the arrays the result refers to (lent here when the worker says how much it needs)."""
        with self.lock:
            if not self.alive:
                if self.proc is not None and self.proc.returncode not in (None, 0):
                    LOGGER.warning("dlmodel: the worker in %s had stopped (exit code %s) since its last answer; "
                                   "starting a fresh one", self.python, self.proc.returncode)
                self._start()
            try:
                wire.send(self.proc.stdin, {**message, "forget": self.pool.take_dropped()})  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                self._died(what)
            buf = None
            try:
                while True:
                    reply = self._next(timeout, what)
                    if "need" in reply:
                        need = reply["need"]
                        if not (isinstance(need, int) and not isinstance(need, bool) and 0 <= need <= MAX_BUFFER_BYTES):
                            self._malformed(what, f"asked for a buffer of {need!r} bytes")
                        name, buf = self.pool.lease(need)
                        wire.send(self.proc.stdin, {"buffer": name})  # type: ignore[union-attr]
                    elif "error" in reply and isinstance(reply["error"], dict):
                        raise _error(reply["error"])
                    elif "ok" in reply:
                        return reply["ok"], buf
                    else:
                        self._malformed(what, f"answered {str(reply)[:80]}")
            finally:
                self.pool.settle()

    def _next(self, timeout: float, what: str, variable: str = TIMEOUT_ENV) -> Dict[str, Any]:
        try:
            reply = self._messages.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(f"the model's Python environment {self.python} did not answer in {timeout:g} s "
                              f"while {what}; it was stopped (set {variable} for longer)") from None
        if reply is None:
            self._died(what)
        if isinstance(reply, wire.ProtocolError):
            self._malformed(what, f"sent {reply} on its protocol stream (does a sitecustomize or .pth file there "
                                  "print to standard output?)")
        return reply  # type: ignore[return-value]

    def _malformed(self, what: str, said: str) -> None:
        """The worker broke the protocol: it is stopped (its state is unknown) and the request fails."""
        self.kill()
        raise WorkerError(f"the model's Python environment {self.python} {said} while {what}; it was stopped")

    def _died(self, what: str) -> None:
        proc = self.proc
        try:
            code = proc.wait(timeout=CLOSE_TIMEOUT_S) if proc is not None else None
        except subprocess.TimeoutExpired:  # it closed its output but lives on: stop it
            self.kill()
            code = proc.returncode if proc is not None else None
        time.sleep(0.05)  # let the last lines of its stderr arrive
        last = next((line for line in reversed(self._stderr) if line.strip()), "")
        how = f"was killed (signal {-code})" if code is not None and code < 0 else f"exited (code {code})"
        hint = ""
        if "No module named" in last and "dlmodel" in last:
            hint = "; dlmodel is not installed there (dlmodel env create, docs/cellprofiler.md)"
        elif last:
            hint = f": {last.strip()}"
        raise WorkerError(f"the model's Python environment {self.python} {how} while {what}{hint}")

    def kill(self) -> None:
        """Stop the process now (and reap it: no zombie, no orphan)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            try:
                proc.wait(timeout=CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()  # type: ignore[union-attr]
                except OSError:
                    pass

    def close(self) -> None:
        """Ask the worker to unload its models and exit; kill it if it does not in time."""
        with self.lock:
            proc = self.proc
            if proc is None:
                return
            if proc.poll() is None:
                try:
                    wire.send(proc.stdin, {"op": "close"})  # type: ignore[arg-type]
                    proc.wait(timeout=CLOSE_TIMEOUT_S)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self.kill()
            self.proc = None
            self.pool.close()


def _read_messages(stream: Any, messages: "queue.Queue[Any]") -> None:
    try:
        while True:
            msg = wire.recv(stream)
            messages.put(msg)
            if msg is None:
                return
    except wire.ProtocolError as e:
        messages.put(e)  # the request fails at once, naming what arrived
    except (OSError, ValueError):
        messages.put(None)


def _forward_stderr(stream: Any, tail: Deque[str]) -> None:
    """The worker's log lines go to this process's stderr (CellProfiler's log), the last kept
    for error messages."""
    try:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            tail.append(line)
            sys.stderr.write(line)
    except (OSError, ValueError):
        pass


def _error(info: Mapping[str, Any]) -> DLModelError:
    """The worker's error as the same dlmodel error class, one line."""
    name = info.get("type") or "DLModelError"
    cls = getattr(errors, name, None)
    if name == "TrustError":
        from .trust import TrustError as cls  # noqa: N813
    if not (isinstance(cls, type) and issubclass(cls, DLModelError)):
        cls = errors.EngineError
    err = cls(info.get("message", ""))
    if info.get("choice") is not None:
        err.choice = info["choice"]  # type: ignore[attr-defined]
    return err


_WORKERS: Dict[str, Worker] = {}
_WORKERS_LOCK = threading.Lock()


def approved_python(python: Union[str, Path], named_by: str = "the Python environment") -> str:
    """The Python of an environment approved on this machine (or allowed for this process), or a
    one-line :class:`dlmodel.approvals.EnvironmentNotApproved`; nothing is started."""
    exe = find_python(python)
    approvals.require(exe, named_by)
    return exe


def worker_for(python: Union[str, Path]) -> Worker:
    """The worker of an approved environment (one per environment per process)."""
    exe = find_python(python)
    found = approvals.require(exe)
    with _WORKERS_LOCK:
        if exe not in _WORKERS:
            _WORKERS[exe] = Worker(exe, found["dlmodel"] if found else None)
        return _WORKERS[exe]


def close_workers() -> None:
    """Close every worker (their models, engines and GPU memory go with them)."""
    with _WORKERS_LOCK:
        workers = list(_WORKERS.values())
    for w in workers:
        w.close()


atexit.register(close_workers)


class RemoteSpec:
    """What the client knows of a package (read by the worker): the parts of
    :class:`dlmodel.spec.ModelSpec` that RunDLModel and the command line use."""

    def __init__(self, facts: Mapping[str, Any]):
        self.facts = dict(facts)
        for key in ("name", "id", "version", "rdf_sha256", "weights", "input_channels", "is_3d", "instance_recipe"):
            setattr(self, key, facts[key])
        self.rdf_path = Path(facts["rdf_path"])
        self.inputs = [SimpleNamespace(**t) for t in facts["inputs"]]
        self.outputs = [SimpleNamespace(**t) for t in facts["outputs"]]
        self.info = facts["describe"]

    def output(self, tensor_id: str) -> SimpleNamespace:
        for t in self.outputs:
            if t.id == tensor_id:
                return t
        raise errors.SpecError(f"model {self.name!r} has no output {tensor_id!r}")

    def follows_input(self, output_id: str) -> bool:
        return bool(self.output(output_id).follows_input)

    def input_grid_factors(self, output_id: str) -> Optional[Tuple[int, ...]]:
        factors = getattr(self.output(output_id), "input_grid_factors", None)
        return tuple(factors) if factors else None


class RemoteModel:
    """A model whose engine runs in another Python environment; the same interface as
    :class:`dlmodel.api.Model` (:class:`dlmodel.protocol.ModelInterface`)."""

    def __init__(self, worker: Worker, source: str, engine: str = "auto", device: str = "auto",
                 threads: Optional[int] = None, trust: Optional[bool] = None):
        self.worker = worker
        self.origin = str(source)
        self._load_args = {"source": str(source), "engine": engine, "device": device, "threads": threads, "trust": trust}
        self._generation = 0
        self.seconds = 0.0
        self.worker_seconds = 0.0  # the last predict's or labels' own time in the worker
        self.engine_choice: Optional[SimpleNamespace] = None  # why the worker's engine="fastest" chose its engine
        self._load()

    @property
    def python(self) -> str:
        return self.worker.python

    def _load(self) -> None:
        what = f"loading model {self.origin!r}"
        result, _ = self.worker.request({"op": "load", **self._load_args}, LOAD_TIMEOUT_S, what)
        with _reading(self.worker, what):
            self._generation = self.worker.generation
            self.handle = int(result["handle"])
            self.spec = RemoteSpec(result["spec"])
            self.weights_format, self.device = str(result["weights_format"]), str(result["device"])
            self.threads, self.local, self.seconds = result["threads"], bool(result["local"]), float(result["seconds"])

    def _call(self, message: Dict[str, Any], doing: str, timeout: Optional[float] = None) -> Tuple[Any, Any]:
        with self.worker.lock:
            if self._generation != self.worker.generation or not self.worker.alive:
                self._load()  # the worker died since: a fresh one loads the model again
            return self.worker.request({**message, "handle": self.handle}, timeout or request_timeout(),
                                       f"{doing} model {self.spec.name!r}")

    # ------------------------------------------------------------------ predict
    def predict(self, image: Union[np.ndarray, Mapping[str, np.ndarray]], axes: Union[None, str, Mapping[str, str]] = None,
                *, tile: Any = None, batch_size: Optional[int] = None, pad_mode: Optional[str] = None,
                max_tile_pixels: Optional[int] = None, name: str = "image") -> Prediction:
        """As :meth:`dlmodel.api.Model.predict`; the outputs are views on a shared buffer (no copy)."""
        inputs = self._as_inputs(image)
        with self.worker.lock:  # the lent input buffer is this request's until it is answered
            refs = self._lend(inputs, name)
            options = RunOptions(tile, batch_size, pad_mode, max_tile_pixels, name)
            result, out = self._call({"op": "predict", "inputs": refs, "axes": axes, "options": options.to_wire()},
                                     "running")
        with _reading(self.worker, f"running model {self.spec.name!r}"):
            self.worker_seconds = float(result["seconds"])  # the model's own time in the worker (benchmarks/worker.py)
            self._engine_ran(result)
            # views on the lent buffer: it stays lent (and its name valid for labels()) while any lives
            pred = Prediction({str(k): wire.view(r, out) for k, r in dict(result["arrays"]).items()},
                              result["axes"], None, result.get("space"))
            pred._refs = result["arrays"]  # type: ignore[attr-defined]
        return pred

    def _engine_ran(self, result: Mapping[str, Any]) -> None:
        """The engine the worker ran (engine="fastest" picks it at the first image) and why."""
        self.weights_format = str(result.get("weights_format") or self.weights_format)
        reason = result.get("engine_reason")
        self.engine_choice = SimpleNamespace(reason=reason) if reason else None

    def _lend(self, arrays: Mapping[str, np.ndarray], name: str) -> Dict[str, Any]:
        """The arrays copied into one lent shared buffer; their references by id, for a request.
        Hold the worker's lock until the request is answered: the buffer is its until then."""
        ids = list(arrays)
        sendable = [_sendable(arrays[k], name) for k in ids]
        segment, buf = self.worker.pool.lease(wire.layout(sendable)[1])
        refs = dict(zip(ids, wire.put(sendable, segment, buf)))
        del sendable, buf
        return refs

    def _as_inputs(self, image: Union[np.ndarray, Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        ids = [t.id for t in self.spec.inputs]
        if isinstance(image, Mapping):
            return dict(image)  # the worker's model checks the names
        if len(ids) != 1:
            raise InputError(f"model {self.spec.name!r} has {len(ids)} inputs ({', '.join(ids)}); pass a dict of arrays")
        return {ids[0]: image}

    def labels(self, prediction: Prediction, method: str = "auto", output: Optional[str] = None,
               channel: Optional[int] = None, **choices: Any) -> np.ndarray:
        """As :meth:`dlmodel.api.Model.labels`, made in the worker from the prediction's shared buffer."""
        require_prediction(prediction, "Model.labels")
        with self.worker.lock:
            refs = getattr(prediction, "_refs", None)
            if refs is None:  # a prediction made elsewhere: into a shared buffer first
                refs = self._lend(prediction, "prediction")
            result, out = self._call({"op": "labels", "prediction": refs, "axes": prediction.axes,
                                      "space": getattr(prediction, "space", {}),
                                      "choices": {"method": method, "output": output, "channel": channel, **choices}},
                                     "making objects with")
        with _reading(self.worker, f"making objects with model {self.spec.name!r}"):
            self.worker_seconds = float(result["seconds"])
            return wire.view(result["arrays"]["labels"], out)

    def confidence(self, image: Union[np.ndarray, Mapping[str, np.ndarray]],
                   axes: Union[None, str, Mapping[str, str]] = None, *, augmentations: Optional[int] = None,
                   seed: int = 0, objects: Union[None, bool, Mapping[str, Any]] = None, tile: Any = None,
                   batch_size: Optional[int] = None, pad_mode: Optional[str] = None, name: str = "image") -> Any:
        """As :meth:`dlmodel.api.Model.confidence`, measured in the worker; the plain prediction,
        objects and per-object fractions are views on a shared buffer (no copy)."""
        from .confidence import Confidence

        inputs = self._as_inputs(image)
        with self.worker.lock:  # the lent input buffer is this request's until it is answered
            refs = self._lend(inputs, name)
            options = RunOptions(tile, batch_size, pad_mode, name=name)
            result, out = self._call({"op": "confidence", "inputs": refs, "axes": axes, "augmentations": augmentations,
                                      "seed": seed, "objects": objects if isinstance(objects, (bool, type(None))) else dict(objects),
                                      "options": options.to_wire()}, "measuring the confidence of")
        with _reading(self.worker, f"measuring the confidence of model {self.spec.name!r}"):
            self.worker_seconds = float(result["seconds"])
            self._engine_ran(result)
            found = dict(result["arrays"])
            outputs = {k[len("output:"):]: r for k, r in found.items() if k.startswith("output:")}
            pred = Prediction({k: wire.view(r, out) for k, r in outputs.items()}, result["axes"], None, result.get("space"))
            pred._refs = outputs  # type: ignore[attr-defined]  # labels() of it needs no copy
            c = Confidence.from_dict(result["confidence"], wire.view(found["object_fraction"], out))
            c.prediction = pred
            c.labels = wire.view(found["labels"], out) if "labels" in found else None
        return c

    # ------------------------------------------------------------------ the rest of Model's interface
    def test(self, weights_format: Optional[str] = None) -> TestReport:
        result, _ = self._call({"op": "test", "weights_format": weights_format}, "testing", LOAD_TIMEOUT_S)
        with _reading(self.worker, f"testing model {self.spec.name!r}"):
            report = TestReport(result["weights_format"], error=result["error"], untrusted=result["untrusted"],
                                note=result.get("note"))
            report.checks = [OutputCheck(c["output"], c["max_abs_error"], c["mismatched_per_million"],
                                         SimpleNamespace(**c["tolerance"]), c["ok"]) for c in result["checks"]]
        return report

    def info(self) -> Dict[str, Any]:
        result, _ = self._call({"op": "info"}, "describing")
        with _reading(self.worker, f"describing model {self.spec.name!r}"):
            return {**result, "python": self.python}

    def check_file_fits(self, path: Union[str, Path], axes: Optional[str] = None, tile: Any = None,
                        batch_size: Optional[int] = None) -> None:
        self._call({"op": "check_file_fits", "path": str(path), "axes": axes,
                    "options": RunOptions(tile, batch_size).to_wire()}, "checking an image for")

    @property
    def instance_recipe(self) -> Optional[Dict[str, Any]]:
        return self.spec.instance_recipe

    @property
    def left_out(self) -> List[str]:
        """The package's steps dlmodel does not run (unrecognised deepImageJ macros)."""
        return list(self.spec.facts.get("left_out", []))

    @property
    def makes_objects(self) -> bool:
        return bool(self.spec.facts.get("makes_objects"))

    def unload(self) -> None:
        """Release the model in the worker (the worker itself stays, for other models)."""
        with self.worker.lock:
            if self.worker.alive and self._generation == self.worker.generation:
                self.worker.request({"op": "unload", "handle": self.handle}, CLOSE_TIMEOUT_S,
                                    f"unloading model {self.spec.name!r}")

    def __enter__(self) -> "RemoteModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unload()

    def __repr__(self) -> str:
        return f"<dlmodel.RemoteModel {self.spec.name!r} ({self.weights_format} on {self.device}, in {self.python})>"


@contextlib.contextmanager
def _reading(worker: Worker, what: str) -> Iterator[None]:
    """Reading a worker's answer: one that is not what was asked stops the worker and fails the
    request in one line, never a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # wire.ProtocolError is a ValueError
        worker._malformed(what, f"answered with a malformed reply ({one_line(e)})")


def _sendable(arr: Any, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: pixel type {arr.dtype} is not supported (use integers or floats)")
    return arr


# ---------------------------------------------------------------------- where a model runs
def missing_here() -> List[str]:
    """What this Python lacks to read packages and run models in-process (an engine is checked
    per model): the worker's environment must have none missing."""
    import importlib.util

    return [m for m in ("bioimageio.spec",) if importlib.util.find_spec(m.split(".")[0]) is None]


def _check_here() -> None:
    lacking = missing_here()
    if lacking:
        raise errors.EngineError(f"this Python ({sys.executable}) lacks {', '.join(lacking)}: run the model in an "
                                 "environment that has it (python=..., --python, RunDLModel's 'Python environment for "
                                 "the model'; dlmodel env create), or install dlmodel with an engine here")


class Here:
    """Where a model runs: this process (:mod:`dlmodel.api` and the rooms below it)."""

    python = None

    def load(self, source: Union[str, Path], **options: Any) -> Any:
        _check_here()
        from . import api

        return api.load(source, **options)

    def load_cached(self, source: Union[str, Path], **options: Any) -> Any:
        _check_here()
        from . import api

        return api.load_cached(source, **options)

    def read_spec(self, source: str) -> Any:
        _check_here()
        from .package import open_spec

        return open_spec(source)[0]

    def choose_format(self, spec: Any, engine: str, device: str) -> str:
        from . import engines

        return engines.choose_format(spec, engine, device)

    def resolve_recipe(self, recipe: Optional[Mapping[str, Any]], choices: Mapping[str, Any]) -> Dict[str, Any]:
        from . import instances

        return instances.resolve_recipe(recipe, **choices)


class InWorker:
    """Where a model runs: a worker process of the approved environment ``python``, one per
    environment per process (:func:`worker_for`); the same questions as :class:`Here`, asked there."""

    def __init__(self, python: Union[str, Path]):
        self.python = find_python(python)

    def load(self, source: Union[str, Path], **options: Any) -> "RemoteModel":
        return RemoteModel(worker_for(self.python), str(source), **options)

    def load_cached(self, source: Union[str, Path], **options: Any) -> "RemoteModel":
        key = (str(source), *(options.get(k) for k in ("engine", "device", "threads", "trust")), self.python)
        with _CACHE_LOCK:
            model = _CACHE.get(key)
            if model is None:
                t0 = time.perf_counter()
                model = _CACHE[key] = self.load(source, **options)
                LOGGER.info("dlmodel: loaded model %r (%s on %s, %d engine threads) in %s in %.2f s", model.spec.name,
                            model.weights_format, model.device, model.threads, model.python, time.perf_counter() - t0)
            return model

    def read_spec(self, source: str) -> "RemoteSpec":
        worker = worker_for(self.python)
        what = f"reading model {source!r}"
        result, _ = worker.request({"op": "spec", "source": source}, LOAD_TIMEOUT_S, what)
        with _reading(worker, what):
            return RemoteSpec({**result, "source": source})

    def choose_format(self, spec: Any, engine: str, device: str) -> str:
        result, _ = worker_for(self.python).request(
            {"op": "choose_format", "source": str(spec.facts["source"]), "engine": engine, "device": device},
            LOAD_TIMEOUT_S, f"choosing an engine for model {spec.name!r}")
        return result

    def resolve_recipe(self, recipe: Optional[Mapping[str, Any]], choices: Mapping[str, Any]) -> Dict[str, Any]:
        result, _ = worker_for(self.python).request({"op": "resolve_recipe", "recipe": recipe, "choices": dict(choices)},
                                                    request_timeout(), "checking the settings for objects")
        return result


def where(python: Optional[Union[str, Path]] = None, allow_unapproved_python: bool = False) -> Union[Here, InWorker]:
    """Where a model runs, decided once: this process, or the worker of the environment ``python``
    (an environment's Python, or its folder). ``python`` must be approved on this machine
    (``dlmodel env add``), or ``allow_unapproved_python=True`` lets this process start it
    without approving it."""
    if not python:
        return Here()
    if allow_unapproved_python:
        approvals.allow_for_this_process(find_python(python))
    return InWorker(python)


def load(source: Union[str, Path], engine: str = "auto", device: str = "auto", threads: Optional[int] = None,
         trust: Optional[bool] = None, python: Optional[Union[str, Path]] = None,
         allow_unapproved_python: bool = False) -> Any:
    """:func:`dlmodel.api.load`, or with ``python`` the same model in that environment's worker
    (:class:`RemoteModel`); see :func:`where`."""
    return where(python, allow_unapproved_python).load(source, engine=engine, device=device, threads=threads,
                                                       trust=trust)


_CACHE: Dict[tuple, RemoteModel] = {}
_CACHE_LOCK = threading.Lock()


def load_cached(source: Union[str, Path], engine: str = "auto", device: str = "auto", threads: Optional[int] = None,
                trust: Optional[bool] = None, python: Optional[Union[str, Path]] = None,
                allow_unapproved_python: bool = False) -> Any:
    """:func:`load`, one model per (source, engine, device, threads, trust, environment) per process."""
    return where(python, allow_unapproved_python).load_cached(source, engine=engine, device=device, threads=threads,
                                                              trust=trust)


def clear_cache() -> None:
    """Release every cached model: in this process (:func:`dlmodel.api.clear_cache`, if it was
    used) and in every worker, and close the workers."""
    if "dlmodel.api" in sys.modules:
        sys.modules["dlmodel.api"].clear_cache()
    with _CACHE_LOCK:
        _CACHE.clear()
    close_workers()


def read_spec(source: str, python: Optional[Union[str, Path]] = None) -> Any:
    """A package's description without starting an engine: a :class:`dlmodel.spec.ModelSpec`,
    or with ``python`` a :class:`RemoteSpec` read by that environment's worker."""
    return where(python).read_spec(source)


def describe(spec: Any) -> Dict[str, Any]:
    """:func:`dlmodel.api.describe` of a spec read here or by a worker."""
    if isinstance(spec, RemoteSpec):
        return spec.info
    from .api import describe as describe_here

    return describe_here(spec)


def choose_format(spec: Any, engine: str, device: str = "cpu", python: Optional[Union[str, Path]] = None) -> str:
    """:func:`dlmodel.engines.choose_format`, asked of the environment that will run the model."""
    return where(python).choose_format(spec, engine, device)


def resolve_recipe(recipe: Optional[Mapping[str, Any]], python: Optional[Union[str, Path]] = None, **choices: Any
                   ) -> Dict[str, Any]:
    """:func:`dlmodel.instances.resolve_recipe`, asked of the model's environment (the one answer
    to "which objects", with the same refusals)."""
    return where(python).resolve_recipe(recipe, choices)
