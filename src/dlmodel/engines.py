"""Engines: one small class per weight format, each ``load``-ed once and then ``run`` on batches.

Every engine takes the model's input arrays (in rdf order and axis order, preprocessed) and
returns its output arrays in rdf order. Frameworks are imported lazily, inside the engine that
needs them, so importing dlmodel (and the CellProfiler plugin) stays cheap.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import EngineError, SpecError, one_line
from .spec import ModelSpec
from .tf_safety import keras_refusal, saved_model_refusal, saved_model_unsafe_ops
from .trust import DOWNLOAD, Gate, TrustError

LOGGER = logging.getLogger("dlmodel")

# "0": onnxruntime's threads sleep instead of spin-waiting between runs (set by dlmodel.worker)
SPINNING_ENV = "DLMODEL_ORT_SPINNING"


def engine_installed(weights_format: str) -> bool:
    """Whether the framework for a weight format can be imported (without importing it)."""
    return all(_findable(m) for m in ROWS[weights_format].modules)


def _findable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is usable by an installed engine, else ``cpu``."""
    device = (device or "auto").lower()
    if device in ("gpu",):
        device = "cuda"
    if device == "auto":
        return "cuda" if _cuda_available() else "cpu"
    if device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if device.startswith("cuda") and not _cuda_available():
            raise EngineError(f"device {device!r} was asked for, but no CUDA GPU is usable here; use device='cpu'")
        return device
    raise EngineError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def _cuda_available() -> bool:
    # Without an NVIDIA driver there is no CUDA: say so without importing torch (seconds).
    if not (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")):
        return False
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return True
        except Exception:  # a broken torch install must not stop CPU use
            pass
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return False


def choose_format(spec: ModelSpec, engine: str = "auto", device: str = "cpu") -> str:
    """Pick the weight format to run: the user's choice, or the first installed one in
    ``AUTO_ORDER``. ``engine="fastest"`` gets that one here too: the measured choice needs the
    loaded model and the image's tile shape (:mod:`dlmodel.fastest`), and falls back to it."""
    available = list(spec.weights)
    if engine and engine not in ("auto", "fastest"):
        wanted = ALIASES.get(engine.lower())
        if wanted is None:
            raise EngineError(f"unknown engine {engine!r}; use auto, fastest or one of: {', '.join(sorted(set(ALIASES)))}")
        candidates = [f for f in wanted.split("|") if f in available]
        if not candidates:
            raise EngineError(
                f"model {spec.name!r} has no {engine} weights (it has: {', '.join(available)})"
            )
        fmt = candidates[0]
        if not engine_installed(fmt):
            raise _not_installed(f"engine for {fmt} weights is not installed; pip install 'dlmodel[{ENGINE_EXTRA[fmt]}]'")
        return fmt
    order = AUTO_ORDER["cuda" if device.startswith("cuda") else "cpu"]
    for fmt in order:
        if fmt in available and engine_installed(fmt):
            return fmt
    extras = sorted({ENGINE_EXTRA[f] for f in available if f in ENGINE_EXTRA})
    if not extras:
        raise EngineError(
            f"model {spec.name!r} has no weights dlmodel can run (it has: {', '.join(available) or 'none'})"
        )
    raise _not_installed(
        f"no engine installed for model {spec.name!r} (weights: {', '.join(available)}); "
        f"pip install 'dlmodel[{extras[0]}]'" + (f" (or {', '.join(extras[1:])})" if len(extras) > 1 else "")
    )


def _not_installed(message: str) -> EngineError:
    """The refusal for an engine this environment lacks (the package has its weights):
    ``.choice`` is ``"environment"``, so an adapter points at where the model runs, not at the engine."""
    error = EngineError(message)
    error.choice = "environment"  # type: ignore[attr-defined]
    return error


def default_threads() -> int:
    """Engine threads: ``DLMODEL_THREADS`` if set, else the cores this process may use."""
    env = os.environ.get("DLMODEL_THREADS")
    if env:
        return max(1, int(env))
    return cores()


def cores() -> int:
    """Cores this process may run on (its CPU affinity, which cluster schedulers set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_for_workers(workers: int) -> int:
    """Engine threads for one of ``workers`` processes sharing this machine: the cores divided
    among them, so that workers x threads <= cores. ``DLMODEL_THREADS`` overrides."""
    if os.environ.get("DLMODEL_THREADS"):
        return default_threads()
    return max(1, cores() // max(1, workers))


class Engine:
    """Base class. Subclasses set ``format`` and implement ``_load`` and ``_run`` (and
    ``_submit`` where the device computes while the host goes on, as a GPU does)."""

    format = ""
    asynchronous = False  # whether ``submit`` returns before the pass is done

    def __init__(self, spec: Optional[ModelSpec], device: str = "cpu", threads: Optional[int] = None,
                 gate: Optional[Gate] = None, path: Any = None):
        """``spec=None`` with ``path``: bare weights of a package not yet written (packaging
        runs them once to learn their outputs); formats that need the rdf (a state dict's
        architecture, a SavedModel's tensor names) need ``spec``."""
        self.spec = spec
        # consent for code the package brings; without a gate, none runs
        self.gate = gate or Gate.decide(spec.name if spec else str(path), spec.root if spec else Path("."),
                                        spec.rdf_sha256 if spec else "", DOWNLOAD, False)
        self.device = device
        self.threads = threads or default_threads()
        self.path = Path(path) if path is not None else spec.weight_paths[self.format]
        self._lock = threading.Lock()
        try:
            self._load()
        except (EngineError, TrustError):
            raise
        except Exception as e:
            raise EngineError(f"cannot load {self.format} weights {self.path}: {one_line(e)}") from e

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        return self.submit(inputs)()

    @property
    def loaded(self) -> bool:
        return not getattr(self, "_unloaded", False)

    def unload(self) -> None:
        """Release the weights and the framework session (and a GPU's cached memory), as
        bioimageio.core's adapters do; the engine cannot run afterwards. Idempotent."""
        with self._lock:
            if not self.loaded:
                return
            self._unload()
            self._unloaded = True

    def _unload(self) -> None:
        for name in ("session", "module", "model", "fn", "_loaded"):
            if hasattr(self, name):
                delattr(self, name)
        import gc

        gc.collect()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unload()

    def submit(self, inputs: Sequence[np.ndarray]) -> Callable[[], List[np.ndarray]]:
        """Start a forward pass; the returned function waits for it and gives the outputs.

        On CPU the pass runs here and then; on a GPU it is queued, so that the caller can
        prepare the next tile and store the last one while the GPU computes."""
        # Sessions are not all thread-safe (Keras, TF); one forward pass at a time per engine.
        with self._lock:
            if not self.loaded:
                raise EngineError(f"the {self.format} engine of {self.gate.model!r} was unloaded")
            try:
                pending = self._submit(list(inputs))
            except Exception as e:
                raise self._failed(inputs, e) from e

        def result() -> List[np.ndarray]:
            try:
                outs = pending()
            except Exception as e:  # a GPU reports errors when its results are awaited
                raise self._failed(inputs, e) from e
            if self.spec is not None and len(outs) != len(self.spec.outputs):
                raise EngineError(
                    f"{self.format} weights returned {len(outs)} outputs, the rdf describes {len(self.spec.outputs)}"
                )
            return outs

        return result

    def _failed(self, inputs: Sequence[np.ndarray], e: Exception) -> EngineError:
        shapes = ", ".join(str(tuple(a.shape)) for a in inputs)
        return EngineError(f"{self.format} engine failed on input shape {shapes}: {one_line(e)}")

    def _submit(self, inputs: List[np.ndarray]) -> Callable[[], List[np.ndarray]]:
        outs = self._run(inputs)
        return lambda: outs

    def _load(self) -> None:
        raise NotImplementedError

    def _run(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        raise NotImplementedError


class OnnxEngine(Engine):
    format = "onnx"

    def _load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        if os.environ.get(SPINNING_ENV) == "0":
            # a model worker (dlmodel.worker) sets this: threads that spin-wait after a run keep
            # the cores from the client and the worker's own reply (8 ms of 10 per image set on 2 cores)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: List[Any] = ["CPUExecutionProvider"]
        if not self.device.startswith("cuda"):
            # the memory pattern plans one block holding every activation of a tile shape at once;
            # without it the arena reuses freed activations: 88 of 184 MB less for the zoo U-Net's
            # 512x512 tile, 1% slower (docs/performance.md, "Memory"); on a GPU it stays on (not measured)
            opts.enable_mem_pattern = False
        else:
            idx = int(self.device.split(":")[1]) if ":" in self.device else 0
            providers = [("CUDAExecutionProvider", {"device_id": idx}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_types = [_ONNX_DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        feed = {n: np.ascontiguousarray(a, dtype=t) for n, a, t in zip(self.input_names, inputs, self.input_types)}
        return list(self.session.run(self.output_names, feed))


_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


class TorchEngine(Engine):
    def _torch_device(self):
        import torch

        torch.set_num_threads(self.threads)
        return torch.device(self.device)

    def _run(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(_torch_safe(a))).to(self.tdev) for a in inputs]
        with torch.inference_mode():
            out = self.module(*tensors)
        return [t.detach().cpu().numpy() for t in _as_list(out)]

    @property
    def asynchronous(self) -> bool:  # type: ignore[override]
        return self.tdev.type == "cuda"

    def _unload(self) -> None:
        _release_torch(self)

    def _submit(self, inputs: List[np.ndarray]) -> Callable[[], List[np.ndarray]]:
        if not self.asynchronous:
            return super()._submit(inputs)
        import torch

        # Through page-locked (pinned) host buffers both copies are asynchronous: this returns
        # once the work is queued, and the host buffers come from torch's pinned-memory cache.
        with torch.inference_mode():
            tensors = []
            for a in inputs:
                host = torch.from_numpy(np.ascontiguousarray(_torch_safe(a)))
                tensors.append(torch.empty(host.shape, dtype=host.dtype, pin_memory=True).copy_(host)
                               .to(self.tdev, non_blocking=True))
            outs = []
            for t in _as_list(self.module(*tensors)):
                outs.append(torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True))
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.tdev))  # the model's GPU, not the current one

        def result() -> List[np.ndarray]:
            done.synchronize()
            return [o.numpy() for o in outs]

        return result


def _release_torch(engine: "TorchEngine") -> None:
    cuda = getattr(engine, "tdev", None) is not None and engine.tdev.type == "cuda"
    Engine._unload(engine)
    if cuda:
        import torch

        torch.cuda.empty_cache()  # the freed weights' memory goes back to the GPU


def _torch_safe(a: np.ndarray) -> np.ndarray:
    # torch has no uint16/uint32 arithmetic worth using; models expect float anyway
    return a.astype(np.float32) if a.dtype in (np.uint16, np.uint32, np.float64) else a


def _as_list(out: Any) -> List[Any]:
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


class TorchscriptEngine(TorchEngine):
    format = "torchscript"

    def _load(self) -> None:
        import torch

        self.tdev = self._torch_device()
        self.module = torch.jit.load(str(self.path), map_location=self.tdev).eval()


class PytorchStateDictEngine(TorchEngine):
    format = "pytorch_state_dict"

    def _load(self) -> None:
        import torch

        self.tdev = self._torch_device()
        arch = self.spec.architecture
        module = _import_architecture(self.spec, arch, self.gate)(**arch.kwargs)
        state = torch.load(str(self.path), map_location=self.tdev, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and not any(k.endswith("weight") for k in state):
            state = state["state_dict"]
        load = module.load_state_dict
        # some architectures (Cellpose's CPnet) override load_state_dict without torch's strict
        # argument: theirs is called as it is
        if "strict" in inspect.signature(load).parameters:
            load(state, strict=arch.strict)
        else:
            load(state)
        self.module = module.to(self.tdev).eval()


def _import_architecture(spec: ModelSpec, arch: Any, gate: Gate) -> Any:
    """The architecture callable, from the package's own file (through the trust gate) or from
    an installed library."""
    from .spec import local_path

    name = str(arch.callable)
    source = arch.source
    if source is None:  # from an installed library: package code too, through the gate
        module_name = str(arch.import_from)
        try:
            return gate.library_class(module_name, name)
        except ImportError as e:
            raise EngineError(_missing_library(spec, module_name, name, e)) from e
        except AttributeError as e:
            raise EngineError(f"architecture {module_name}.{name} is not importable: {one_line(e)}") from e
    path = local_path(spec.root, source)
    module = gate.load_module(path, "its pytorch_state_dict weights' architecture",
                              "engine='onnx' or 'torchscript' if it has those weights")
    try:
        return getattr(module, name)
    except AttributeError as e:
        raise EngineError(f"architecture file {path} defines no {name!r}") from e


def _missing_library(spec: ModelSpec, module_name: str, name: str, error: ImportError) -> str:
    """One line for an architecture from a library that is not installed (CAREamics' packages
    name ``careamics.models.unet.UNet``): what to install, from the package's own environment
    file when it has one."""
    top = (getattr(error, "name", None) or module_name).split(".")[0]
    try:
        pinned = environment_packages(spec)
    except SpecError:  # an unreadable environment file must not hide the real error
        pinned = []
    wanted = [d for d in pinned if d.split("=")[0].split("<")[0].split(">")[0].strip().replace("-", "_").lower()
              == top.replace("-", "_").lower()]
    install = wanted[0] if wanted else top
    return (f"model {spec.name!r} builds its network with {module_name}.{name} from the {top!r} library, which is not "
            f"installed here: pip install '{install}'" + (" (as the package's environment file pins it)" if wanted else ""))


def environment_packages(spec: ModelSpec) -> List[str]:
    """The pip and conda requirements in the state dict's conda environment file, if any, read
    under the rdf's limits (a package's file: an alias bomb is refused, SpecError)."""
    if spec.environment_file is None:
        return []
    from .spec import load_package_yaml

    env = load_package_yaml(spec.environment_file, f"{spec.environment_file} of model {spec.name!r}",
                            "environment file") or {}
    found: List[str] = []
    deps = env.get("dependencies", []) if isinstance(env, dict) else []
    for item in deps if isinstance(deps, list) else []:
        if isinstance(item, str):
            found.append(item.split("::")[-1].replace(" ", ""))
        elif isinstance(item, dict) and isinstance(item.get("pip", []), list):
            found += [str(p).replace(" ", "") for p in item.get("pip", [])]
    return found


class TensorflowEngine(Engine):
    format = "tensorflow_saved_model_bundle"

    def _load(self) -> None:
        tf = _import_tf()
        _tf_threads(tf, self.threads)
        path = self.path
        if path.suffix == ".zip":  # a zipped bundle: unpack once into the cache
            from .sources import unpack_to_cache

            path = unpack_to_cache(path)
        # every op the graph could run must be on the allowlist derived from TensorFlow's registry
        refusal = saved_model_refusal(path)
        if refusal:
            self.gate.require(refusal, "its ONNX weights, if any")
        with tf.device(_tf_device(self.device)):
            loaded = tf.saved_model.load(str(path))
        self._loaded = loaded  # keep the trackable objects alive
        self.fn = loaded.signatures["serving_default"]
        _, kw = self.fn.structured_input_signature
        self.input_names = _pair_names("input", [t.id for t in self.spec.inputs], list(kw), path)
        self.output_names = _pair_names("output", [t.id for t in self.spec.outputs], list(self.fn.structured_outputs), path)
        self.input_dtypes = [kw[n].dtype.as_numpy_dtype for n in self.input_names]

    def _run(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        import tensorflow as tf

        with tf.device(_tf_device(self.device)):
            res = self.fn(**{n: tf.constant(a.astype(d, copy=False)) for n, a, d in zip(self.input_names, inputs, self.input_dtypes)})
        return [res[n].numpy() for n in self.output_names]


def _pair_names(kind: str, ids: Sequence[str], names: Sequence[str], where: Any) -> List[str]:
    """The SavedModel signature's name for each rdf tensor, in rdf order: by name, or the only
    one; several tensors named otherwise cannot be paired safely (a signature's names carry no
    order), so they are refused rather than guessed."""
    if set(ids) == set(names):
        return list(ids)
    if len(ids) == len(names) == 1:
        return list(names)
    raise EngineError(
        f"the SavedModel {where} names its {kind}s {', '.join(sorted(names))} and the rdf {', '.join(ids)}: "
        f"cannot tell which is which; give the rdf's {kind} tensors the signature's names"
    )


def _import_tf() -> Any:
    # TensorFlow prints start-up banners to stderr unless told not to; keep CLI output clean.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def _tf_device(device: str) -> str:
    return "/GPU:" + (device.split(":")[1] if ":" in device else "0") if device.startswith("cuda") else "/CPU:0"


def _tf_threads(tf: Any, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process: its setting stays
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            LOGGER.warning("dlmodel: TensorFlow was started earlier in this process with %s threads; "
                           "it keeps them (%d asked for)", current or "all", threads)


class KerasEngine(Engine):
    format = "keras_v3"

    def _load(self) -> None:
        _tf_threads(_import_tf(), self.threads)
        import keras

        # Lambda, custom and other code-carrying layers: found in the saved config, before
        # anything is built; safe_mode stays on as Keras' own second guard
        refusal = keras_refusal(self.path)
        if refusal:
            self.gate.require(refusal, "its ONNX weights, if any")
        try:
            self.model = keras.models.load_model(str(self.path), compile=False, safe_mode=not self.gate.trusted)
        except Exception as e:
            if self.format != "keras_hdf5":
                raise
            # an .h5 written by tf.keras 2.x (ZeroCostDL4Mic, deepImageJ-era packages) that Keras 3
            # cannot rebuild (Conv2DTranspose's 'groups', say): tf_keras is tf.keras 2.x on this TensorFlow
            self.model = _load_tf_keras(self.path, keras.__version__, e)

    def _run(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        x = inputs[0] if len(inputs) == 1 else inputs
        out = self.model(x, training=False)
        return [np.asarray(o) for o in _as_list(out)]


def _load_tf_keras(path: Path, keras_version: str, error: Exception) -> Any:
    try:
        import tf_keras
    except ImportError:
        raise EngineError(
            f"Keras {keras_version} cannot read {path.name}, written by tf.keras 2.x ({one_line(error)}); "
            "pip install --no-deps 'tf_keras==<your TensorFlow version>.*' (tf.keras 2.x for this TensorFlow) and "
            "dlmodel loads it with that") from error
    LOGGER.info("dlmodel: %s: Keras %s cannot read it (%s); loaded with tf_keras %s", path.name, keras_version,
                one_line(error), tf_keras.__version__)
    return tf_keras.models.load_model(str(path), compile=False)


class KerasHdf5Engine(KerasEngine):
    format = "keras_hdf5"


# ------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class EngineRow:
    """One weight format dlmodel runs: everything else (``ENGINES``, ``AUTO_ORDER``, ``ALIASES``,
    ``ENGINE_EXTRA``, the spec view's formats, ``dlmodel env``'s engines, the catalog, RunDLModel's
    *Engine* choices and the CLI's ``--engine`` help) is derived from these rows."""

    format: str  # the rdf's weight format name
    engine: type  # the Engine subclass that runs it
    name: str  # the short name users type (CLI) and the engine argument RunDLModel passes
    label: str  # RunDLModel's *Engine* choice
    aliases: Tuple[str, ...]  # further names accepted for it
    rank_cpu: int  # engine="auto"'s order on a CPU (lower first)
    rank_cuda: int  # ... and on a CUDA GPU
    extra: str  # the pip extra that installs its framework: pip install 'dlmodel[extra]'
    modules: Tuple[str, ...]  # what must be importable for it to run (checked without importing)


# On CPU onnxruntime ran the shared nuclei U-Net (2048x2048) in 3.9 s against 7.7 s for TorchScript
# on this project's machines; on a GPU torch's CUDA path is the most used and tested.
# engine="fastest" measures instead of trusting this order (dlmodel.fastest).
REGISTRY: Tuple[EngineRow, ...] = (
    EngineRow("onnx", OnnxEngine, "onnx", "ONNX", ("onnxruntime",), 0, 2, "onnx", ("onnxruntime",)),
    EngineRow("torchscript", TorchscriptEngine, "torchscript", "TorchScript", (), 1, 0, "torch", ("torch",)),
    EngineRow("pytorch_state_dict", PytorchStateDictEngine, "pytorch", "PyTorch", ("pytorch_state_dict", "torch"),
              2, 1, "torch", ("torch",)),
    EngineRow("tensorflow_saved_model_bundle", TensorflowEngine, "tensorflow", "TensorFlow",
              ("tensorflow_saved_model_bundle",), 3, 3, "tensorflow", ("tensorflow",)),
    EngineRow("keras_v3", KerasEngine, "keras", "Keras", ("keras_v3",), 4, 4, "tensorflow", ("tensorflow", "keras")),
    EngineRow("keras_hdf5", KerasHdf5Engine, "keras", "Keras", ("keras_hdf5",), 5, 5, "tensorflow",
              ("tensorflow", "keras")),
)
ROWS: Dict[str, EngineRow] = {r.format: r for r in REGISTRY}
ENGINES: Dict[str, type] = {r.format: r.engine for r in REGISTRY}
# the pip extra per weight format (spec.ENGINE_EXTRA is this)
ENGINE_EXTRA: Dict[str, str] = {r.format: r.extra for r in REGISTRY}
# What ``engine="auto"`` tries, in order, per device kind.
AUTO_ORDER: Dict[str, List[str]] = {
    "cpu": [r.format for r in sorted(REGISTRY, key=lambda r: r.rank_cpu)],
    "cuda": [r.format for r in sorted(REGISTRY, key=lambda r: r.rank_cuda)],
}


def _aliases() -> Dict[str, str]:
    table: Dict[str, List[str]] = {}
    for r in REGISTRY:
        for alias in (r.name, r.format, *r.aliases):
            if r.format not in table.setdefault(alias, []):
                table[alias].append(r.format)
    return {alias: "|".join(formats) for alias, formats in table.items()}


# Names users may type for a weight format; "keras" -> "keras_v3|keras_hdf5" (the first the package has).
ALIASES: Dict[str, str] = _aliases()
# engine= values that are not a format: the fixed order, or measured (dlmodel.fastest)
CHOOSERS = (("Automatic", "auto"), ("Fastest", "fastest"))


def engine_choices() -> List[Tuple[str, str]]:
    """(label, engine argument) for every choice an adapter offers: *Automatic*, *Fastest*, then
    one per engine name in registry order (RunDLModel's *Engine* setting, the CLI's help)."""
    seen: Dict[str, str] = {}
    for r in REGISTRY:
        seen.setdefault(r.label, r.name)
    return list(CHOOSERS) + list(seen.items())


def engine_text(model: Any) -> str:
    """The engine that ran, and why when ``engine="fastest"`` measured it (RunDLModel's
    *DLModel_Engine*), e.g. ``onnx (fastest: onnx 0.09 s vs torchscript 0.23 s per tile ...)``."""
    choice = getattr(model, "engine_choice", None)
    return model.weights_format if choice is None else f"{model.weights_format} ({choice.reason})"


def engine_help() -> str:
    """The CLI's ``--engine`` help, from the registry."""
    return ", ".join(arg for _, arg in engine_choices())


def load_engine(spec: ModelSpec, weights_format: str, device: str, threads: Optional[int] = None,
                gate: Optional[Gate] = None) -> Engine:
    return ENGINES[weights_format](spec, device=device, threads=threads, gate=gate)


# the TensorFlow graph check's earlier name (tests/test_security.py imports it from here)
saved_model_risky_ops = saved_model_unsafe_ops
