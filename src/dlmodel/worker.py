"""The model's own process: ``python -m dlmodel.worker``, run in the model's Python environment
(with its engines and bioimageio.spec) by :mod:`dlmodel.client`.

It answers one request at a time on stdin/stdout (:mod:`dlmodel.wire`), holds the models it
loaded (each once) until it is told to unload them, and exits when its client says ``close``
or goes away (stdin closes): at the end of a run the GPU memory goes back with the process.
Anything a library prints goes to stderr, never into the protocol.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any, Callable, Dict, Mapping

import numpy as np

from . import wire
from .client import missing_here
from .errors import DLModelError, one_line
from .protocol import RunOptions

LOGGER = logging.getLogger("dlmodel")


class Server:
    """The worker's state: its protocol streams and the models it holds, by handle."""

    def __init__(self, inp: IO[bytes], out: IO[bytes]):
        self.inp, self.out = inp, out
        self.models: Dict[int, Any] = {}
        self.specs: Dict[str, Any] = {}
        self.next_handle = 1
        self.mapped: Dict[str, Any] = {}  # the client's segments, kept mapped until it says forget

    # ------------------------------------------------------------------ loop
    def serve(self) -> None:
        import dlmodel

        # where dlmodel came from: the client checks it is the approved environment's own
        wire.send(self.out, {"hello": wire.PROTOCOL, "python": sys.version.split()[0], "pid": os.getpid(),
                             "executable": sys.executable, "missing": missing_here(), "dlmodel": dlmodel.__path__[0]})
        while True:
            msg = wire.recv(self.inp)
            if msg is None or msg.get("op") == "close":
                break
            for name in msg.get("forget", ()):
                if name in self.mapped:
                    wire.release(self.mapped.pop(name), unlink=False)
            try:
                result = self.OPS[msg["op"]](self, msg)
            except DLModelError as e:
                self._error(e, type(e).__name__)
            except Exception as e:  # an engine's or library's own error: one line, traceback to the log
                LOGGER.warning("dlmodel worker: %s failed", msg.get("op"), exc_info=True)
                self._error(e, "EngineError")
            else:
                if result is not None:
                    wire.send(self.out, {"ok": result})
        self.unload_all()

    def _error(self, e: BaseException, kind: str) -> None:
        wire.send(self.out, {"error": {"type": kind, "message": one_line(e, 1000), "choice": getattr(e, "choice", None)}})

    def reply_arrays(self, arrays: Mapping[str, np.ndarray], meta: Dict[str, Any]) -> None:
        """Send arrays back through a segment the client makes for them: ``need`` (bytes), the
        client's ``buffer`` (its name), then the result with references in place of arrays."""
        names = list(arrays)
        values = [np.ascontiguousarray(arrays[k]) for k in names]
        wire.send(self.out, {"need": wire.layout(values)[1]})
        answer = wire.recv(self.inp)
        if answer is None or "buffer" not in answer:
            raise SystemExit(0)  # the client went away mid-answer
        refs = wire.put(values, answer["buffer"], self.segment(answer["buffer"]))
        wire.send(self.out, {"ok": {**meta, "arrays": dict(zip(names, refs))}})

    def segment(self, name: str) -> Any:
        """One of the client's segments, mapped once."""
        if name not in self.mapped:
            self.mapped[name] = wire.attach(name)
        return self.mapped[name]

    # ------------------------------------------------------------------ ops
    def _spec(self, source: str) -> Any:
        if source not in self.specs:
            from .package import open_spec

            self.specs[source] = open_spec(source)[0]
        return self.specs[source]

    def op_spec(self, msg: Mapping[str, Any]) -> Dict[str, Any]:
        return facts(self._spec(msg["source"]))

    def op_choose_format(self, msg: Mapping[str, Any]) -> str:
        from . import engines

        return engines.choose_format(self._spec(msg["source"]), msg["engine"], msg.get("device", "cpu"))

    def op_resolve_recipe(self, msg: Mapping[str, Any]) -> Dict[str, Any]:
        from . import instances

        return instances.resolve_recipe(msg.get("recipe"), **msg["choices"])

    def op_load(self, msg: Mapping[str, Any]) -> Dict[str, Any]:
        from . import api

        t0 = time.perf_counter()
        model = api.load(msg["source"], engine=msg["engine"], device=msg["device"], threads=msg.get("threads"),
                         trust=msg.get("trust"))
        handle, self.next_handle = self.next_handle, self.next_handle + 1
        self.models[handle] = model
        return {"handle": handle, "spec": {**facts(model.spec), "source": msg["source"], "makes_objects": model.makes_objects,
                                                    "left_out": list(model.left_out)}, "weights_format": model.weights_format,
                "device": model.device, "threads": model.engine.threads, "local": model.local,
                "seconds": time.perf_counter() - t0}

    def _model(self, msg: Mapping[str, Any]) -> Any:
        model = self.models.get(msg["handle"])
        if model is None:
            raise DLModelError(f"the worker holds no model {msg['handle']} (unloaded)")
        return model

    def op_predict(self, msg: Mapping[str, Any]) -> None:
        model = self._model(msg)
        inputs = {tid: wire.view(r, self.segment(r["shm"])) for tid, r in msg["inputs"].items()}
        t0 = time.perf_counter()
        pred = model.predict(inputs, axes=msg.get("axes"), **RunOptions.from_wire(msg["options"]).kwargs())
        seconds = time.perf_counter() - t0
        del inputs
        self.reply_arrays(pred, {"axes": pred.axes, "space": pred.space, "seconds": seconds, **_engine_ran(model)})

    def op_labels(self, msg: Mapping[str, Any]) -> None:
        from .api import Prediction

        model = self._model(msg)
        arrays = {oid: wire.view(r, self.segment(r["shm"])) for oid, r in msg["prediction"].items()}
        t0 = time.perf_counter()
        labels = model.labels(Prediction(arrays, msg["axes"], None, msg.get("space")), **msg["choices"])
        seconds = time.perf_counter() - t0
        del arrays
        self.reply_arrays({"labels": labels}, {"seconds": seconds})

    def op_confidence(self, msg: Mapping[str, Any]) -> None:
        model = self._model(msg)
        inputs = {tid: wire.view(r, self.segment(r["shm"])) for tid, r in msg["inputs"].items()}
        t0 = time.perf_counter()
        options = RunOptions.from_wire(msg["options"])
        c = model.confidence(inputs, axes=msg.get("axes"), augmentations=msg.get("augmentations"),
                             seed=msg.get("seed", 0), objects=msg.get("objects"), tile=options.tile,
                             batch_size=options.batch_size, pad_mode=options.pad_mode, name=options.name)
        seconds = time.perf_counter() - t0
        del inputs
        # the plain prediction and objects come back too: the client never predicts the image twice
        arrays = {f"output:{k}": v for k, v in c.prediction.items()}
        arrays["object_fraction"] = c.object_fraction
        if c.labels is not None:
            arrays["labels"] = c.labels
        self.reply_arrays(arrays, {"confidence": c.to_dict(), "axes": c.prediction.axes, "space": c.prediction.space,
                                   "seconds": seconds, **_engine_ran(model)})

    def op_test(self, msg: Mapping[str, Any]) -> Dict[str, Any]:
        report = self._model(msg).test(msg.get("weights_format"))
        return {"weights_format": report.weights_format, "error": report.error, "untrusted": report.untrusted,
                "note": report.note,
                "checks": [{"output": c.output, "max_abs_error": c.max_abs_error,
                            "mismatched_per_million": c.mismatched_per_million, "ok": c.ok,
                            "tolerance": {"absolute": c.tolerance.absolute, "relative": c.tolerance.relative,
                                          "mismatched_per_million": c.tolerance.mismatched_per_million}}
                           for c in report.checks]}

    def op_info(self, msg: Mapping[str, Any]) -> Dict[str, Any]:
        return self._model(msg).info()

    def op_check_file_fits(self, msg: Mapping[str, Any]) -> bool:
        options = RunOptions.from_wire(msg["options"])
        self._model(msg).check_file_fits(msg["path"], axes=msg.get("axes"), tile=options.tile,
                                         batch_size=options.batch_size)
        return True

    def op_unload(self, msg: Mapping[str, Any]) -> bool:
        model = self.models.pop(msg["handle"], None)
        if model is not None:
            model.unload()
        return True

    def unload_all(self) -> None:
        """Release every model (engines, sessions, a GPU's cached memory)."""
        for model in self.models.values():
            model.unload()
        self.models.clear()

    OPS: Dict[str, Callable[["Server", Mapping[str, Any]], Any]] = {
        "spec": op_spec, "choose_format": op_choose_format, "resolve_recipe": op_resolve_recipe, "load": op_load,
        "predict": op_predict, "labels": op_labels, "confidence": op_confidence, "test": op_test, "info": op_info,
        "check_file_fits": op_check_file_fits, "unload": op_unload,
    }


def _engine_ran(model: Any) -> Dict[str, Any]:
    """Which engine ran, and why (engine="fastest" measures at the first image, in the worker)."""
    choice = getattr(model, "engine_choice", None)
    return {"weights_format": model.weights_format, "engine_reason": choice.reason if choice is not None else None}


def facts(spec: Any) -> Dict[str, Any]:
    """What a client needs to know about a package, as plain data (:class:`dlmodel.client.RemoteSpec`)."""
    from .api import describe

    return {
        "name": spec.name, "id": spec.id, "version": spec.version, "rdf_sha256": spec.rdf_sha256,
        "rdf_path": str(spec.rdf_path), "weights": list(spec.weights),
        "inputs": [{"id": t.id, "n_channels": t.n_channels} for t in spec.inputs],
        "outputs": [{"id": t.id, "n_channels": t.n_channels, "follows_input": spec.follows_input(t.id),
                     "input_grid_factors": spec.input_grid_factors(t.id)} for t in spec.outputs],
        "input_channels": spec.input_channels, "is_3d": spec.is_3d, "instance_recipe": spec.instance_recipe,
        "describe": describe(spec),
    }


def main() -> None:
    # the protocol gets its own copy of stdout; fd 1 (what libraries print) goes to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=os.environ.get("DLMODEL_WORKER_LOG", "WARNING"), stream=sys.stderr,
                        format="dlmodel worker: %(message)s")
    # between requests the engine waits for the client: its threads sleep rather than spin
    os.environ.setdefault("DLMODEL_ORT_SPINNING", "0")
    Server(sys.stdin.buffer, out).serve()


if __name__ == "__main__":
    main()
