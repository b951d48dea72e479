"""What a TensorFlow graph or a Keras model may run without trust: an allowlist, not a denylist.

**TensorFlow graphs.** TensorFlow registers every operation with a generated Python module per op
library, ``tensorflow/python/ops/gen_<category>.py`` (``gen_math_ops``, ``gen_io_ops``,
``gen_dataset_ops``, ...). A SavedModel runs without trust only when every operation that
loading or calling it could run is either

- in one of :data:`ALLOWED_CATEGORIES` (ops that compute on tensors in memory), and not one of
  :data:`EXCLUDED_OPS` (the few there that reach outside, reviewed one by one) nor an op whose
  string arguments name a file, a path, an address or a stream (:func:`reaching_ops`, a guard
  for ops a newer TensorFlow adds), or
- one of :data:`EXTRA_OPS` (``Assert``).

Everything else is refused: the categories of :data:`REFUSED_CATEGORIES`, a category a newer
TensorFlow adds, an operation registered in C++ with no generated module (XLA, TPU, DTensor,
RPC, oneDNN-internal and test ops), an operation this TensorFlow does not know, and a function
the graph calls but does not define. The list is computed from the installed TensorFlow
(:func:`allowed_ops`, once per process), so it follows TensorFlow's own registry;
``python -m dlmodel.tf_safety`` prints it.

What is checked (:func:`saved_model_unsafe_ops`): every node of every meta graph and every
function of its library, read from ``saved_model.pb`` before TensorFlow loads it. The saver's
*save* side (``SaveV2``, ...) is never run by loading or predicting and is left out, unless
something that does run reaches it; its *restore* side (run by the TF1 loader with the bundle's
own ``variables/`` path) may also read a checkpoint (:data:`RESTORE_OPS`).

**Keras models** (``.keras`` and ``.h5``; Keras 3 or tf_keras): the saved configuration is read
as JSON, without deserialising anything, and every object in it must be one of Keras' own
built-in classes (layers, Keras ops, initializers, regularizers, constraints, dtype policies,
models), minus the built-ins that carry code or reach files (:data:`KERAS_EXCLUDED`), and a
tf.keras ``TFOpLambda`` may name only a TensorFlow function from an allowed category
(:func:`keras_unsafe_layers`).

Not covered, as with any framework: bugs in TensorFlow's or Keras' own kernels and loaders.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Set, Tuple

from .errors import EngineError, one_line

# --- TensorFlow: categories ---------------------------------------------------------------------

# Op libraries whose operations compute on tensors in memory: arithmetic, shapes, layers, images,
# control flow, variables, random numbers. Keys are TensorFlow's own names (gen_<key>.py).
ALLOWED_CATEGORIES: Dict[str, str] = {
    "array_ops": "shapes, slicing, constants, placeholders",
    "math_ops": "arithmetic, reductions, comparisons, casts",
    "nn_ops": "convolutions, pooling, activations, normalisation",
    "image_ops": "resizing, cropping, colour; image encoding and decoding of tensors in memory",
    "functional_ops": "calls, if, while, case (their functions are checked too)",
    "control_flow_ops": "TF1 control flow (Switch, Merge, Enter, Exit), NoOp",
    "resource_variable_ops": "the model's variables",
    "state_ops": "TF1 reference variables",
    "list_ops": "tensor lists (while loops)",
    "map_ops": "tensor maps",
    "data_flow_ops": "TensorArray, dynamic partition/stitch, in-memory queues and stacks",
    "random_ops": "random numbers",
    "stateful_random_ops": "random numbers",
    "stateless_random_ops": "random numbers",
    "stateless_random_ops_v2": "random numbers (Keras dropout and noise layers)",
    "random_index_shuffle_ops": "random permutations",
    "linalg_ops": "linear algebra",
    "bitwise_ops": "bitwise arithmetic",
    "manip_ops": "roll",
    "spectral_ops": "FFTs",
    "special_math_ops": "special functions",
    "sparse_ops": "sparse tensors",
    "set_ops": "set operations",
    "ragged_array_ops": "ragged tensors",
    "ragged_conversion_ops": "ragged tensors",
    "ragged_math_ops": "ragged tensors",
    "string_ops": "string tensors (formatting, regex, hashing)",
    "parsing_ops": "decoding tensors from strings in memory",
    "audio_ops": "audio decoding and spectrograms in memory",
    "ctc_ops": "CTC loss and decoders",
    "rnn_ops": "LSTM and GRU blocks",
    "cudnn_rnn_ops": "cuDNN recurrent layers",
    "count_ops": "bincounts",
    "uniform_quant_ops": "quantised arithmetic",
    "composite_tensor_ops": "composite tensor encoding",
    "optional_ops": "optional values",
    "training_ops": "optimiser updates of variables",
    "sdca_ops": "SDCA optimiser",
    "candidate_sampling_ops": "candidate samplers",
    "clustering_ops": "k-means initialisation",
    "boosted_trees_ops": "boosted trees in memory",
    "sync_ops": "device synchronisation",
}

# Op libraries refused as a whole (listed for the record: any category not allowed is refused).
REFUSED_CATEGORIES: Dict[str, str] = {
    "io_ops": "reads and writes files (ReadFile, WriteFile, readers, Save/Restore, MatchingFiles)",
    "filesystem_ops": "configures file systems",
    "dataset_ops": "tf.data: file datasets, file caches (CacheDataset), iterators",
    "experimental_dataset_ops": "tf.data: save, load, snapshot, CSV/LMDB/SQL files, the tf.data service (network)",
    "lookup_ops": "tables initialised from text files by name",
    "checkpoint_ops": "reads checkpoints and vocabulary files by name",
    "summary_ops": "writes event files and summary databases",
    "logging_ops": "PrintV2 writes to stderr or to a file by name (Assert alone is allowed)",
    "debug_ops": "sends tensors to debug URLs (file://, grpc://)",
    "script_ops": "runs Python (PyFunc, EagerPyFunc)",
    "decode_proto_ops": "its descriptor_source may name a file",
    "encode_proto_ops": "its descriptor_source may name a file",
    "collective_ops": "exchanges tensors with other tasks and hosts",
    "nccl_ops": "exchanges tensors with other devices",
    "sendrecv_ops": "exchanges tensors with other devices and tasks",
    "tpu_ops": "TPU system, infeed and outfeed",
    "tpu_partition_ops": "TPU partitioning",
    "batch_ops": "batches calls from anywhere in the process through shared batchers (serving machinery)",
}

# Operations of allowed categories that still reach outside, reviewed one by one.
EXCLUDED_OPS: Dict[str, str] = {
    "Abort": "ends the process",
    "ImmutableConst": "maps a file by name (memory_region_name)",
    "RecordInput": "reads the files that file_pattern matches",
    "FixedUnigramCandidateSampler": "reads vocab_file",
    "RemoteCall": "runs a function on another task or device (target)",
}

# Operations of refused categories that cannot reach outside and that models use.
EXTRA_OPS: Dict[str, str] = {
    "Assert": "logging_ops: fails the call with its message; writes nothing",
}

# Run only by the TF1 loader's restore of the bundle's own variables (the saver's restore op).
RESTORE_OPS: Dict[str, str] = {
    "RestoreV2": "reads the variables of a checkpoint (the loader gives the bundle's variables/ path)",
}

# Argument and attribute name parts of an op that name something outside the graph.
_REACHING_WORDS = frozenset(
    "file files filename filenames filepath path paths prefix prefixes dir directory logdir url urls address "
    "target stream region descriptor".split())

# Keys of the SavedModel's collections that the TF1 loader runs (init and table ops).
_RUN_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer", "init_op", "local_resources",
                    "saved_model_train_op")
_VARIABLE_COLLECTIONS = ("variables", "local_variables", "trainable_variables", "model_variables")


_DT_STRING = 7  # tensorflow.core.framework.types_pb2.DT_STRING


def _registry() -> Any:
    from tensorflow.python.framework import op_def_registry

    return op_def_registry


@functools.lru_cache(maxsize=None)
def op_categories() -> Dict[str, FrozenSet[str]]:
    """Each of TensorFlow's op categories and its operations, from the generated op modules of
    the installed TensorFlow (``tensorflow.python.ops.gen_*``): the module attributes that are
    an op's wrapper and name a registered op."""
    import tensorflow.python.ops as tf_ops

    registry = _registry()
    categories: Dict[str, FrozenSet[str]] = {}
    for info in pkgutil.iter_modules(tf_ops.__path__):
        if not info.name.startswith("gen_"):
            continue
        module = importlib.import_module(f"{tf_ops.__name__}.{info.name}")
        categories[info.name[4:]] = frozenset(
            name for name, value in vars(module).items()
            if callable(value) and getattr(value, "__module__", None) == module.__name__
            and registry.get(name) is not None)
    return categories


def reaching_ops(ops: Iterable[str]) -> Dict[str, List[str]]:
    """The operations among ``ops`` whose string inputs or attributes are named like a file, a
    path, a directory, a URL, an address, a target or a stream (from TensorFlow's op
    definitions), with those names: a guard for ops a newer TensorFlow adds to an allowed
    category."""
    registry = _registry()
    found: Dict[str, List[str]] = {}
    for op in ops:
        op_def = registry.get(op)
        if op_def is None:
            continue
        # string inputs and attributes only: a file name is a string (a ``recall_target`` is not)
        names = ([a.name for a in op_def.input_arg if a.type == _DT_STRING]
                 + [a.name for a in op_def.attr if a.type in ("string", "list(string)")])
        hits = [n for n in names if _REACHING_WORDS & set(n.lower().split("_"))]
        if hits:
            found[op] = hits
    return found


@functools.lru_cache(maxsize=None)
def allowed_ops() -> FrozenSet[str]:
    """The operations a graph may run without trust, for the installed TensorFlow."""
    categories = op_categories()
    allowed = set().union(*(categories.get(c, ()) for c in ALLOWED_CATEGORIES))
    allowed -= set(EXCLUDED_OPS) | set(reaching_ops(allowed))
    registry = _registry()
    return frozenset(allowed | {op for op in EXTRA_OPS if registry.get(op) is not None})


# --- TensorFlow: the SavedModel walk -------------------------------------------------------------

def read_saved_model(path: Any) -> Any:
    """The ``SavedModel`` protocol buffer of a SavedModel folder (``saved_model.pb`` or
    ``.pbtxt``), read without loading it; EngineError naming the file when unreadable."""
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(path)
    model = saved_model_pb2.SavedModel()
    pb = path / "saved_model.pb"
    try:
        if pb.is_file():
            model.ParseFromString(pb.read_bytes())
        else:
            pb = path / "saved_model.pbtxt"
            text_format.Parse(pb.read_text(), model)
    except (OSError, UnicodeDecodeError, message.DecodeError, text_format.ParseError) as e:
        raise EngineError(f"cannot read the TensorFlow SavedModel {pb}: {one_line(e)}") from e
    return model


def _tensor_node(name: str) -> str:
    return name.lstrip("^").split(":")[0]


class _Graph:
    """One meta graph's nodes and functions, and what each one reaches."""

    def __init__(self, meta: Any):
        self.meta = meta
        self.nodes = {n.name: n for n in meta.graph_def.node}
        self.functions = {f.signature.name: f for f in meta.graph_def.library.function}

    def _called(self, node: Any) -> Iterator[str]:
        """The functions (or ops) that a node calls: as its op, or through function attributes."""
        if node.op in self.functions:
            yield node.op
        for attr in node.attr.values():
            if attr.HasField("func") and attr.func.name:
                yield attr.func.name
            yield from (f.name for f in attr.list.func if f.name)

    def reach(self, nodes: Iterable[str] = (), functions: Iterable[str] = ()) -> Tuple[Set[str], Set[str], Set[str]]:
        """The graph nodes, library functions and undefined names reachable from ``nodes``
        (through inputs and calls) and ``functions`` (through their bodies' calls)."""
        todo_nodes, todo_funcs = [_tensor_node(n) for n in nodes], list(functions)
        seen_nodes: Set[str] = set()
        seen_funcs: Set[str] = set()
        missing: Set[str] = set()
        while todo_nodes or todo_funcs:
            while todo_nodes:
                name = todo_nodes.pop()
                if name in seen_nodes or name not in self.nodes:
                    continue
                seen_nodes.add(name)
                node = self.nodes[name]
                todo_nodes.extend(_tensor_node(i) for i in node.input)
                todo_funcs.extend(self._called(node))
            while todo_funcs:
                name = todo_funcs.pop()
                if name in seen_funcs:
                    continue
                if name not in self.functions:
                    missing.add(name)
                    continue
                seen_funcs.add(name)
                for node in self.functions[name].node_def:
                    todo_funcs.extend(self._called(node))
        return seen_nodes, seen_funcs, missing

    def run_roots(self) -> List[str]:
        """Graph nodes that loading or calling the SavedModel runs by name: signature tensors
        (the init op's too), the loader's collections and the TF1 variables' initialisers."""
        from google.protobuf import message
        from tensorflow.core.framework import variable_pb2

        meta = self.meta
        roots = [info.name for sig in meta.signature_def.values()
                 for info in list(sig.inputs.values()) + list(sig.outputs.values())]
        for key, collection in meta.collection_def.items():
            if key in _RUN_COLLECTIONS:
                roots += list(collection.node_list.value)
            elif key in _VARIABLE_COLLECTIONS:
                for raw in collection.bytes_list.value:
                    var = variable_pb2.VariableDef()
                    try:
                        var.ParseFromString(raw)
                    except message.DecodeError:  # TensorFlow's loader cannot read it either
                        continue
                    roots += [var.initializer_name, var.snapshot_name, var.initial_value_name]
        return [r for r in roots if r]

    def ops(self, nodes: Iterable[str], functions: Iterable[str]) -> Iterator[str]:
        """The operations of ``nodes`` and of the bodies of ``functions`` (calls of the
        graph's own functions are not operations: their bodies are walked)."""
        for node in [self.nodes[n] for n in nodes] + [d for f in functions for d in self.functions[f].node_def]:
            if node.op not in self.functions:
                yield node.op


def _unsafe_in(graph: _Graph, allowed: FrozenSet[str]) -> Set[str]:
    saver = graph.meta.saver_def if graph.meta.HasField("saver_def") else None
    save = graph.reach([saver.save_tensor_name] if saver else [])
    restore = graph.reach([saver.restore_op_name] if saver else [])
    saver_nodes, saver_funcs = save[0] | restore[0], save[1] | restore[1]
    # everything but the saver's two sides, plus whatever loading or calling runs by name (so
    # that a saver claiming the serving graph as its own still has that graph checked)
    nodes, funcs, missing = graph.reach(
        [n for n in graph.nodes if n not in saver_nodes] + graph.run_roots(),
        [f for f in graph.functions if f not in saver_funcs] + list(graph.meta.object_graph_def.concrete_functions))
    found = {op for op in graph.ops(nodes, funcs) if op not in allowed}
    # the restore side, run by the TF1 loader with the bundle's variables path, may also read them
    on_restore = allowed | set(RESTORE_OPS)
    found |= {op for op in graph.ops(restore[0] - nodes, restore[1] - funcs) if op not in on_restore}
    registry = _registry()
    for name in missing | restore[2]:  # named by a function attribute: an op, or undefined
        if name not in allowed:
            found.add(name if registry.get(name) is not None else f"function {name} (not in the SavedModel)")
    return found


def saved_model_unsafe_ops(path: Any) -> Set[str]:
    """The operations off the allowlist (:func:`allowed_ops`) that a SavedModel folder's graph
    holds where loading or calling it could run them; empty: it runs without trust."""
    allowed = allowed_ops()
    found: Set[str] = set()
    for meta in read_saved_model(path).meta_graphs:
        found |= _unsafe_in(_Graph(meta), allowed)
    return found


def describe_ops(ops: Iterable[str], shown: int = 5) -> str:
    """A short, stable list of op names for a one-line message: the first ``shown``, sorted,
    and how many more."""
    ops = sorted(ops)
    more = f" and {len(ops) - shown} more" if len(ops) > shown else ""
    return ", ".join(ops[:shown]) + more


def saved_model_refusal(path: Any) -> Optional[str]:
    """What a SavedModel would run that needs trust (for :meth:`dlmodel.trust.Gate.require`),
    or None when every operation is on the allowlist."""
    unsafe = saved_model_unsafe_ops(path)
    if not unsafe:
        return None
    return (f"its TensorFlow graph has operations off the allowlist of those that cannot reach files, "
            f"the network, other processes or Python ({describe_ops(unsafe)})")


# --- Keras ---------------------------------------------------------------------------------------

# Keras' own layers that carry code or reach files: refused without trust like any custom layer.
KERAS_EXCLUDED: Dict[str, str] = {
    "Lambda": "Lambda layers hold Python code",
    "TFSMLayer": "loads a SavedModel from a path, unchecked",
    "TorchModuleWrapper": "holds a pickled PyTorch module",
    "JaxLayer": "calls JAX functions it holds",
    "FlaxLayer": "calls a Flax module it holds",
    "StringLookup": "may read its vocabulary from a file",
    "IntegerLookup": "may read its vocabulary from a file",
    "TextVectorization": "may read its vocabulary from a file",
    "DenseFeatures": "tf.keras feature columns may read vocabulary files",
}

# Values in a Keras configuration that are data, not classes (Keras' own markers).
_KERAS_DATA = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"})
# tf.keras layers that call a TensorFlow function named in the configuration.
_TF_OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})
# TensorFlow Python modules that only compose allowed ops (for TFOpLambda), beside the
# op categories' own modules (math_ops, gen_math_ops, image_ops_impl, array_ops_stack, nn_impl, ...).
_TF_HELPER_MODULES = frozenset({"clip_ops", "sort_ops", "check_ops", "tensor_getitem_override"})


def _classes(module: Any) -> Dict[str, type]:
    return {n: v for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_")}


@functools.lru_cache(maxsize=None)
def _keras_builtins() -> Dict[str, type]:
    """Keras 3's own classes that a model configuration may name: its public layers,
    initializers, regularizers, constraints and dtype policies, its models, and the Keras
    operations (``keras.ops``) that functional models record."""
    import keras

    found: Dict[str, type] = {}
    for module in (keras.layers, keras.initializers, keras.regularizers, keras.constraints, keras.dtype_policies):
        found.update(_classes(module))
    found.update({"Model": keras.Model, "Sequential": keras.Sequential, "Functional": keras.Model})
    from keras.src.models.functional import Functional

    found["Functional"] = Functional
    import keras.src.ops as keras_ops

    for info in pkgutil.iter_modules(keras_ops.__path__):
        if not info.name.endswith("_test"):
            module = importlib.import_module(f"{keras_ops.__name__}.{info.name}")
            found.update({n: c for n, c in _classes(module).items()
                          if issubclass(c, keras.Operation) and c.__module__ == module.__name__})
    return found


@functools.lru_cache(maxsize=None)
def _tf_keras_builtins() -> Dict[str, type]:
    """tf.keras 2's own classes (tf_keras), for ``.h5`` files that Keras 3 cannot read."""
    try:
        import tf_keras
    except ImportError:
        return {}
    found: Dict[str, type] = {}
    for module in (tf_keras.layers, tf_keras.initializers, tf_keras.regularizers, tf_keras.constraints):
        found.update(_classes(module))
    found.update({"Model": tf_keras.Model, "Sequential": tf_keras.Sequential, "Functional": tf_keras.Model,
                  "Policy": tf_keras.mixed_precision.Policy})
    return found


def _keras_class(class_name: str, module: Optional[str]) -> Optional[type]:
    """The built-in class a configuration entry names, resolved as Keras resolves it (an
    attribute of a ``keras.*`` module, or by name; tf_keras's by name for what Keras 3 lacks),
    or None when it is not one of Keras' own built-ins."""
    builtins = _keras_builtins()
    if module is not None:
        if not (module == "keras" or module.startswith("keras.")):
            return None
        # every built-in's module is imported by now: nothing the package names is imported
        loaded = sys.modules.get(module)
        cls = vars(loaded).get(class_name) if loaded is not None else None
        if cls in set(builtins.values()):
            return cls
    elif class_name in builtins:
        return builtins[class_name]
    return _tf_keras_builtins().get(class_name)


def _tf_function_allowed(symbol: str) -> bool:
    """Whether a ``TFOpLambda``'s TensorFlow API name (``math.add``, ``nn.relu``,
    ``__operators__.getitem``) is a function of an allowed op category's modules."""
    from tensorflow.python.util import tf_decorator
    from tensorflow.python.util.tf_export import get_symbol_from_name

    function = get_symbol_from_name(symbol) if isinstance(symbol, str) else None
    if function is None:
        return False
    module = getattr(tf_decorator.unwrap(function)[1], "__module__", "") or ""
    package, _, name = module.rpartition(".")
    if package != "tensorflow.python.ops":
        return False
    stem = re.sub(r"^gen_", "", name)
    stem = re.sub(r"_(impl|stack)$", "", stem)
    candidates = {stem, stem + "_ops"}
    return bool(candidates & set(ALLOWED_CATEGORIES)) or name in _TF_HELPER_MODULES


def _reaching_keys(config: Any) -> List[str]:
    """Keys of a layer's own configuration whose string value names a file or a path."""
    if not isinstance(config, dict):
        return []
    return [k for k, v in config.items()
            if isinstance(k, str) and isinstance(v, str) and v and _REACHING_WORDS & set(k.lower().split("_"))]


def keras_config_refusals(config: Any) -> List[str]:
    """Each entry of a Keras model configuration (parsed JSON) that needs trust, as
    ``'name' (why)``: Lambda and other code-carrying built-ins, custom or registered classes,
    Python functions, a TFOpLambda naming a TensorFlow function outside the allowed op
    categories, a configuration value that names a file. Every object entry (a dict with
    ``class_name``) is checked, nested models' too; not what a refused entry holds, and not the
    compile configuration (losses, metrics), which loading with compile=False never builds."""
    refusals: List[str] = []
    todo = [config]  # a stack, not recursion: the JSON is the package's
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(reversed(node))
        elif isinstance(node, dict):
            if "class_name" in node:
                inner = node.get("config")
                why = _keras_entry_refusal(node, node["class_name"], inner)
                if why:
                    name = (inner.get("name") if isinstance(inner, dict) else None) or node.get("name")
                    refusals.append(f"{name or node['class_name']!r} ({why})")
                    continue
            todo.extend(v for k, v in reversed(list(node.items())) if k != "compile_config")
    return list(dict.fromkeys(refusals))


def _keras_entry_refusal(entry: dict, class_name: Any, inner: Any) -> Optional[str]:
    if not isinstance(class_name, str):
        return "an entry without a class name"
    if class_name in _KERAS_DATA:
        return None
    if class_name == "__lambda__":
        return "a Python lambda: code"
    if class_name == "function":  # a function given by name: only Keras' own activations
        import keras

        fn = getattr(keras.activations, inner, None) if isinstance(inner, str) else None
        registered = entry.get("registered_name")
        if not callable(fn) or inner in ("get", "serialize", "deserialize") or registered not in (None, "function", inner):
            return f"the Python function {inner!r}: code"
        return None
    module = entry.get("module")
    registered = entry.get("registered_name")
    if registered not in (None, class_name):
        return f"the custom class {registered}: code"
    if class_name in KERAS_EXCLUDED:
        return KERAS_EXCLUDED[class_name]
    if class_name in _TF_OP_LAYERS and module is None:
        symbol = inner.get("function") if isinstance(inner, dict) else None
        if _tf_function_allowed(symbol):
            return None
        return f"a tf.keras layer calling tf.{symbol}, outside the allowed TensorFlow operations"
    cls = _keras_class(class_name, module if isinstance(module, str) else None)
    if cls is None:
        where = f" from {module}" if module else ""
        return f"the class {class_name}{where}, not one of Keras' own: code"
    if cls.__name__ in KERAS_EXCLUDED:
        return KERAS_EXCLUDED[cls.__name__]
    keys = _reaching_keys(inner)
    if keys:
        return f"its {', '.join(keys)} names a file"
    return None


def read_keras_config(path: Any) -> Any:
    """The model configuration a ``.keras`` zip (``config.json``) or an ``.h5`` file (attribute
    ``model_config``) holds, parsed as JSON under the rdf's size limit, without building
    anything; EngineError (or SpecError: too large, not JSON) naming the file."""
    from .spec import MAX_RDF_BYTES, load_package_json

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf, zf.open("config.json") as f:
                raw = f.read(MAX_RDF_BYTES + 1)  # a zip member stops at its stated size
        else:
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
            if raw is None:
                return {}
            if not isinstance(raw, (bytes, str)):
                raise ValueError(f"its model_config attribute is {type(raw).__name__}, not text")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise EngineError(f"cannot read the Keras model configuration in {path}: {one_line(e)}") from e
    return load_package_json(raw, str(path), "the Keras model configuration in")


def keras_unsafe_layers(path: Any) -> List[str]:
    """The entries of a ``.keras`` or ``.h5`` model that need trust (see
    :func:`keras_config_refusals`); empty: it loads without trust."""
    return keras_config_refusals(read_keras_config(path))


def keras_refusal(path: Any, shown: int = 3) -> Optional[str]:
    """What a Keras model would run that needs trust (for :meth:`dlmodel.trust.Gate.require`),
    or None."""
    unsafe = keras_unsafe_layers(path)
    if not unsafe:
        return None
    more = f" and {len(unsafe) - shown} more" if len(unsafe) > shown else ""
    return f"its Keras model has layers that carry code or reach files: {', '.join(unsafe[:shown])}{more}"


# --- the list, for the documentation ------------------------------------------------------------

def summary() -> Mapping[str, Any]:
    """The allowlist of the installed TensorFlow, by category, and what is refused."""
    import tensorflow as tf

    categories = op_categories()
    allowed = allowed_ops()
    everything = set().union(*categories.values())
    candidates = set().union(*(categories.get(c, ()) for c in ALLOWED_CATEGORIES))
    return {
        "tensorflow": tf.__version__,
        "allowed": {c: sorted(categories[c] & allowed) for c in sorted(categories) if c in ALLOWED_CATEGORIES},
        "refused categories": {c: REFUSED_CATEGORIES.get(c, "not reviewed: refused") for c in sorted(categories)
                               if c not in ALLOWED_CATEGORIES},
        "excluded": dict(sorted({**{op: "its argument " + ", ".join(args) for op, args in reaching_ops(candidates).items()},
                                 **EXCLUDED_OPS}.items())),
        "extra": dict(EXTRA_OPS),
        "categorised ops": len(everything),
    }


def main() -> None:
    info = summary()
    print(f"TensorFlow {info['tensorflow']}: {sum(map(len, info['allowed'].values()))} operations allowed "
          f"of {info['categorised ops']} in TensorFlow's op categories (ops in no category are refused)")
    for category, ops in info["allowed"].items():
        print(f"\n{category} ({len(ops)}): {' '.join(ops)}")
    print("\nrefused categories:")
    for category, why in info["refused categories"].items():
        print(f"  {category}: {why}")
    print("\nexcluded from allowed categories:")
    for op, why in info["excluded"].items():
        print(f"  {op}: {why}")
    print("\nallowed from refused categories:")
    for op, why in info["extra"].items():
        print(f"  {op}: {why}")


if __name__ == "__main__":
    main()
