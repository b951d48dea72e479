"""TensorFlow graphs and Keras layers: what runs without trust is an allowlist (issue 25, point 4).

Each hostile model is built here, by TensorFlow or Keras themselves, and served from a real
HTTP server on 127.0.0.1 or zipped (both: someone else's package)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlmodel
import zoo
from test_sources import Server

RNG = np.random.default_rng(25)
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "dlmodel.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLMODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _saved_model_package(folder: Path, serve, title: str) -> Path:
    """A package whose SavedModel's serving function is ``serve(module, raw) -> conv output``
    (built by tf.saved_model.save), zipped as the zoo ships them; the test outputs are computed
    here, not by the graph."""
    import tensorflow as tf
    from conftest import _v, channel, space_in, space_out

    v = _v()
    kernel = RNG.normal(size=(3, 3, 1, 2)).astype(np.float32)

    class Hostile(tf.Module):
        def __init__(self):
            super().__init__()
            self.k = tf.Variable(kernel)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="raw")])
        def serve(self, raw):
            return {"out": serve(tf.nn.conv2d(raw, self.k, 1, "SAME"))}

    module = Hostile()
    folder.mkdir(parents=True)
    tf.saved_model.save(module, str(folder / "saved_model"), signatures={"serving_default": module.serve})
    zoo.zip_folder(folder / "saved_model", folder / "saved_model.zip")
    shutil.rmtree(folder / "saved_model")
    x = RNG.normal(size=(1, 32, 24, 1)).astype(np.float32)
    expected = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    from bioimageio.spec import ValidationContext

    with ValidationContext(root=folder, perform_io_checks=False):
        weights = {"tensorflow_saved_model_bundle": v.TensorflowSavedModelBundleWeightsDescr(
            source="saved_model.zip", sha256=zoo.sha256(folder / "saved_model.zip"),
            tensorflow_version=v.Version(tf.__version__))}

    def inputs(tf_):
        return [v.InputTensorDescr(id=v.TensorId("raw"), axes=[v.BatchAxis(), *space_in("yx"), channel(["c0"])],
                                   test_tensor=tf_("raw"))]

    def outputs(tf_):
        return [v.OutputTensorDescr(id=v.TensorId("out"), axes=[v.BatchAxis(), *space_out("raw", "yx", halo=1),
                                    channel(["o0", "o1"])], test_tensor=tf_("out"))]

    return zoo.build(folder, title, inputs, outputs, weights, {"raw": x}, reference=lambda _: {"out": expected})


def _caching_package(folder: Path, target: Path) -> Path:
    """The attack the denylist missed: the serving function passes its result through a
    ``tf.data`` file cache (CacheDatasetV2), which writes ``target.index`` and
    ``target.data-00000-of-00001`` as the model predicts."""
    import tensorflow as tf

    def serve(out):
        # read to the end, so that the cache is complete and kept
        return tf.data.Dataset.from_tensors(out).cache(str(target)).reduce(tf.zeros_like(out), lambda a, b: a + b)

    return _saved_model_package(folder, serve, "graph caches a dataset to a file")


def _written(target: Path) -> list:
    return sorted(p.name for p in target.parent.glob(target.name + "*"))


# --- the attack: a SavedModel that writes files through tf.data's cache ----------------------------

def test_a_downloaded_savedmodel_that_caches_a_dataset_to_a_file_needs_trust(tmp_path, cache):
    target = tmp_path / "victim" / "cache"
    target.parent.mkdir()
    rdf = _caching_package(tmp_path / "www" / "evil", target)
    server = Server(tmp_path / "www")
    try:
        url = f"{server.url}/evil/bioimageio.yaml"
        image = RNG.normal(size=(32, 32)).astype(np.float32)
        with pytest.raises(dlmodel.TrustError) as err:
            dlmodel.load(url).predict(image, axes="yx")
        message = str(err.value)
        assert "CacheDatasetV2" in message and "was downloaded" in message and "trust=True" in message
        assert "\n" not in message
        assert _written(target) == []
        res = cli("test", url)
        assert res.returncode == 2 and "CacheDatasetV2" in res.stderr and "Traceback" not in res.stderr
        assert _written(target) == []
        assert dlmodel.load(url, trust=True).test().ok  # with consent it runs, and writes its cache
        assert _written(target) == ["cache.data-00000-of-00001", "cache.index"]
    finally:
        server.stop()
    for p in target.parent.iterdir():
        p.unlink()
    zipped = zoo.zip_folder(rdf.parent, tmp_path / "evil.zip")  # a zip is someone else's package too
    res = cli("test", zipped)
    assert res.returncode == 2 and "CacheDatasetV2" in res.stderr and "comes from a zip archive" in res.stderr
    assert _written(target) == []


# --- the TF1 loader runs the saver's restore op: what hangs on it is checked too ---------------------

def _hook_on_restore(package_zip: Path, folder: Path, target: Path) -> Path:
    """StarDist's real export (a TF1 graph, loaded by TensorFlow's v1 loader) with a WriteFile of
    ``target`` hung on the saver's restore op, which the loader runs to read the variables: it
    writes as the model loads. The rdf's sha256 is updated, as an author would."""
    import zipfile

    from tensorflow.core.framework import node_def_pb2
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow import make_tensor_proto

    with zipfile.ZipFile(package_zip) as zf:
        zf.extractall(folder)
    bundle = folder / "TF_SavedModel.zip"
    with zipfile.ZipFile(bundle) as zf:
        files = {name: zf.read(name) for name in zf.namelist() if not name.endswith("/")}
    model = saved_model_pb2.SavedModel()
    model.ParseFromString(files["saved_model.pb"])
    graph = model.meta_graphs[0].graph_def
    for name, value in (("evil/path", str(target)), ("evil/contents", "written by the restore op")):
        node = graph.node.add(name=name, op="Const")
        node.attr["dtype"].type = 7  # DT_STRING
        node.attr["value"].tensor.CopyFrom(make_tensor_proto(value))
    graph.node.append(node_def_pb2.NodeDef(name="evil/write", op="WriteFile", input=["evil/path", "evil/contents"]))
    restore = next(n for n in graph.node if n.name == model.meta_graphs[0].saver_def.restore_op_name)
    restore.input.append("^evil/write")
    files["saved_model.pb"] = model.SerializeToString()
    old = zoo.sha256(bundle)
    with zipfile.ZipFile(bundle, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    rdf = folder / "rdf.yaml"
    rdf.write_text(rdf.read_text().replace(old, zoo.sha256(bundle)))
    return rdf


def test_a_tf1_savedmodel_that_writes_as_its_variables_are_restored_needs_trust(tmp_path, cache):
    target = tmp_path / "victim.txt"
    www = tmp_path / "www"
    rdf = _hook_on_restore(FIXTURES / "stardist2d_tiny" / "stardist2d_tiny.zip", www / "sd", target)
    server = Server(www)
    try:
        url = f"{server.url}/sd/rdf.yaml"
        with pytest.raises(dlmodel.TrustError, match=r"WriteFile.*trust=True"):
            dlmodel.load(url)
        assert not target.exists()
        assert dlmodel.load(url, trust=True).test().ok  # with consent it loads, and writes
        assert target.read_text() == "written by the restore op"
    finally:
        server.stop()
    # the restore side may read the bundle's checkpoint (RestoreV2), nothing else
    from dlmodel import sources, tf_safety

    bundle = sources.unpack_to_cache(rdf.parent / "TF_SavedModel.zip")
    assert tf_safety.saved_model_unsafe_ops(bundle) == {"WriteFile"}


# --- the real exports run without trust, from a zip and from a download ----------------------------

REAL_TF_EXPORTS = ["stardist2d_tiny/stardist2d_tiny.zip", "stardist3d_tiny/stardist3d_tiny.zip",
                   "n2v_tiny/n2v_tiny.bioimage.io.zip"]


def test_real_tensorflow_exports_pass_their_test_without_trust(tmp_path, cache):
    """StarDist's (TF1 graphs, 2D and 3D) and n2v's (a Keras 2 SavedModel) own exporters."""
    for package in REAL_TF_EXPORTS:
        res = cli("test", FIXTURES / package)  # a zip: someone else's package
        assert res.returncode == 0 and "passed (tensorflow_saved_model_bundle)" in res.stdout, res.stdout + res.stderr
        assert "not tested without --trust" not in res.stdout
    server = Server(FIXTURES)
    try:
        for package in REAL_TF_EXPORTS:
            report = dlmodel.load(f"{server.url}/{package}").test()
            assert report.ok and not report.untrusted, report.summary()
    finally:
        server.stop()


def _packaged_h5(h5: Path, sample: np.ndarray, out: Path) -> Path:
    from dlmodel import packaging

    return packaging.package(h5, sample, out, name=h5.stem, description="a tf.keras 2 .h5", authors=["dlmodel tests"],
                             sample_axes="yx", size=(16, 16), formats=())


@pytest.mark.parametrize("name, loader", [("unet_upsampling", "keras"), ("unet_conv2dtranspose", "tf_keras")])
def test_real_tf_keras_2_h5_files_run_without_trust(tmp_path, cache, name, loader):
    """tf.keras 2.15 .h5 U-Nets (tests/fixtures/legacy_keras): one read by Keras 3, one by tf_keras."""
    h5 = FIXTURES / "legacy_keras" / f"{name}.h5"
    sample = np.load(h5.with_suffix(".input.npy"))[0, ..., 0]
    rdf = _packaged_h5(h5, sample, tmp_path / "pkg")
    zipped = zoo.zip_folder(rdf.parent, tmp_path / "pkg.zip")
    model = dlmodel.load(zipped)
    report = model.test()
    assert report.ok and not report.untrusted, report.summary()
    assert type(model._engine(model.weights_format).model).__module__.split(".")[0] == loader
    expected = np.load(h5.with_suffix(".output.npy"))[0, ..., 0]
    np.testing.assert_allclose(model.predict(sample)[model.spec.outputs[0].id], expected, atol=1e-5)


def test_keras_exports_of_this_keras_run_without_trust(keras_v3, keras_h5, tf_saved_model, tmp_path, cache):
    """Keras 3 .keras, .h5 and its SavedModel export, as downloads."""
    www = tmp_path / "www"
    for rdf in (keras_v3, keras_h5, tf_saved_model):
        zoo.copy_package(rdf.parent, www / rdf.parent.name)
    server = Server(www)
    try:
        for rdf in (keras_v3, keras_h5, tf_saved_model):
            report = dlmodel.load(f"{server.url}/{rdf.parent.name}/bioimageio.yaml").test()
            assert report.ok and not report.untrusted, report.summary()
    finally:
        server.stop()


# --- the list: derived from TensorFlow's registry, reviewed by category ------------------------------

# engines.RISKY_TF_OPS, the denylist this allowlist replaces: every one stays refused
OLD_DENYLIST = set("""
ReadFile WriteFile MatchingFiles DeleteFile FileSystemSetConfiguration
Save SaveV2 SaveSlices Restore RestoreV2 RestoreSlice MergeV2Checkpoints
PyFunc PyFuncStateless EagerPyFunc PrintV2 Print
TextLineReader TextLineReaderV2 WholeFileReader WholeFileReaderV2 FixedLengthRecordReader
FixedLengthRecordReaderV2 TFRecordReader TFRecordReaderV2 IdentityReader IdentityReaderV2 LMDBReader
ReaderReadV2 ReaderRead ReaderReadUpToV2 ReaderReadUpTo ReaderRestoreStateV2 ReaderRestoreState
TextLineDataset TFRecordDataset TFRecordDatasetV2 FixedLengthRecordDataset FixedLengthRecordDatasetV2
SqlDataset ExperimentalSqlDataset LMDBDataset ExperimentalLMDBDataset CSVDataset CSVDatasetV2
ExperimentalCSVDataset LoadDataset ExperimentalLoadDataset SaveDataset SaveDatasetV2
ExperimentalSaveDataset SnapshotDataset SnapshotDatasetV2 ExperimentalSnapshotDataset
DatasetToTFRecord ExperimentalDatasetToTFRecord DataServiceDataset DataServiceDatasetV2
DataServiceDatasetV3 DataServiceDatasetV4 InitializeTableFromTextFile InitializeTableFromTextFileV2
CreateSummaryFileWriter CreateSummaryDbWriter WriteSummary WriteRawProtoSummary WriteScalarSummary
WriteHistogramSummary WriteImageSummary WriteAudioSummary WriteGraphSummary ImportEvent
FlushSummaryWriter CloseSummaryWriter DecodeProtoV2 EncodeProto
Rpc TryRpc CollectiveBcastSend CollectiveBcastRecv _Send _Recv _HostSend _HostRecv
DebugIdentity DebugIdentityV2 DebugIdentityV3 DebugNanCount DebugNumericSummary DebugNumericSummaryV2
ImmutableConst LoadAndRemapMatrix GenerateVocabRemapping
""".split())


def test_the_allowlist_is_derived_from_tensorflows_registry_by_category():
    from tensorflow.python.framework import op_def_registry

    from dlmodel import tf_safety as s

    categories = s.op_categories()
    assert {"math_ops", "nn_ops", "array_ops", "io_ops", "dataset_ops", "script_ops"} <= set(categories)
    # every category of this TensorFlow was reviewed: allowed, or refused with its reason
    assert set(categories) <= set(s.ALLOWED_CATEGORIES) | set(s.REFUSED_CATEGORIES)
    assert not set(s.ALLOWED_CATEGORIES) & set(s.REFUSED_CATEGORIES)
    in_allowed = set().union(*(categories[c] for c in s.ALLOWED_CATEGORIES if c in categories))
    in_refused = set().union(*(categories[c] for c in categories if c not in s.ALLOWED_CATEGORIES))
    # the reviewed exclusions are ops of allowed categories (no stale names), and they include
    # every op there whose string arguments name a file, a path, an address or a stream
    assert set(s.EXCLUDED_OPS) <= in_allowed
    assert set(s.reaching_ops(in_allowed)) <= set(s.EXCLUDED_OPS)
    allowed = s.allowed_ops()
    assert allowed == (in_allowed - set(s.EXCLUDED_OPS)) | set(s.EXTRA_OPS)
    assert allowed & in_refused == set(s.EXTRA_OPS) == {"Assert"}
    assert all(op_def_registry.get(op) is not None for op in allowed)
    # what the denylist listed, the tf.data cache it missed, and ops in no category are refused
    missed = {"CacheDataset", "CacheDatasetV2", "AnonymousMemoryCache", "MakeIterator", "ReduceDataset"}
    no_category = {"XlaCallModule", "XlaCustomCall", "RpcCall", "DTensorRestoreV2", "_Arg", "_FusedConv2D"}
    assert all(op_def_registry.get(op) is not None for op in missed | no_category)
    assert not allowed & (OLD_DENYLIST | missed | no_category)
    # the argument-name guard alone finds the file ops of the refused categories
    assert {"WriteFile", "ReadFile", "CacheDatasetV2", "SaveV2", "PrintV2", "DebugIdentityV2", "TFRecordDataset",
            "InitializeTableFromTextFileV2", "CreateSummaryFileWriter"} <= set(s.reaching_ops(in_refused))
    # what real models use is in
    assert {"Conv2D", "Conv3DBackpropInputV2", "FusedBatchNormV3", "ResizeNearestNeighbor", "StatefulPartitionedCall",
            "ReadVariableOp", "VarHandleOp", "StatelessRandomUniformV2", "While", "If", "TensorListReserve"} <= allowed


def _copy_bundle(rdf: Path, folder: Path) -> Path:
    from dlmodel import sources

    return Path(shutil.copytree(sources.unpack_to_cache(rdf.parent / "saved_model.zip"), folder))


def _edit(bundle: Path, change) -> Path:
    from dlmodel import tf_safety

    model = tf_safety.read_saved_model(bundle)
    change(model.meta_graphs[0])
    (bundle / "saved_model.pb").write_bytes(model.SerializeToString())
    return bundle


def test_unknown_ops_and_undefined_functions_are_refused_by_default(tf_saved_model, tmp_path):
    from dlmodel import tf_safety

    bundle = _copy_bundle(tf_saved_model, tmp_path / "bundle")
    assert tf_safety.saved_model_unsafe_ops(bundle) == set()

    def change(meta):
        # a function the model runs (not the saver's _traced_save/_traced_restore, left out)
        body = next(f for f in meta.graph_def.library.function if "_traced_" not in f.signature.name)
        body.node_def.add(name="unknown", op="OpOfATensorFlowToCome")
        body.node_def.add(name="xla", op="XlaCallModule")  # registered, in no category
        call = meta.graph_def.node.add(name="call", op="PartitionedCall")
        call.attr["f"].func.name = "a_function_defined_nowhere"

    _edit(bundle, change)
    found = tf_safety.saved_model_unsafe_ops(bundle)
    assert found == {"OpOfATensorFlowToCome", "XlaCallModule", "function a_function_defined_nowhere (not in the SavedModel)"}
    assert tf_safety.describe_ops(found, shown=2) == "OpOfATensorFlowToCome, XlaCallModule and 1 more"


def test_a_saver_that_claims_the_serving_graph_does_not_hide_it(tmp_path):
    """Only the saver's save side is left out of the check; a SavedModel whose saver names the
    serving call as its own still has the serving graph checked (signatures and restored
    functions are checked whatever the saver says)."""
    import tensorflow as tf

    from dlmodel import tf_safety

    def serve(out):
        tf.io.write_file(str(tmp_path / "x"), "x")
        return out

    rdf = _saved_model_package(tmp_path / "pkg", serve, "writes")
    bundle = _copy_bundle(rdf, tmp_path / "bundle")
    assert tf_safety.saved_model_unsafe_ops(bundle) == {"WriteFile"}

    def claim(meta):
        serving = meta.signature_def["serving_default"].outputs["out"].name
        meta.saver_def.save_tensor_name = serving
        meta.saver_def.restore_op_name = serving.split(":")[0]

    _edit(bundle, claim)
    # (the real saver, no longer claimed, is checked now too: SaveV2, MergeV2Checkpoints, ...)
    found = tf_safety.saved_model_unsafe_ops(bundle)
    assert "WriteFile" in found and found <= {"WriteFile", "SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"}


def test_an_unreadable_saved_model_is_one_line_naming_it(tmp_path):
    from dlmodel import tf_safety

    (tmp_path / "saved_model.pb").write_bytes(b"\xff\xff not a protocol buffer")
    with pytest.raises(dlmodel.EngineError, match=r"cannot read the TensorFlow SavedModel .*saved_model\.pb") as err:
        tf_safety.saved_model_unsafe_ops(tmp_path)
    assert "\n" not in str(err.value)


# --- Keras: built-in layers only ---------------------------------------------------------------------

def test_a_downloaded_keras_model_with_a_registered_custom_layer_needs_trust(tmp_path, cache):
    """Keras builds any class registered in the process under the name a .keras file gives
    (libraries register theirs as they are imported); its code then runs as the model predicts.
    Only Keras' own classes load without trust."""
    import keras

    target = tmp_path / "written.txt"

    @keras.saving.register_keras_serializable(package="AnyLibrary")
    class Stamp(keras.layers.Layer):
        def call(self, x):
            target.write_text("written by a custom layer")  # any Python
            return x

    from dlmodel import packaging, tf_safety

    inp = keras.Input(shape=(None, None, 1))
    model = keras.Model(inp, Stamp(name="stamp")(keras.layers.Conv2D(1, 3, padding="same")(inp)))
    rdf = packaging.package(model, RNG.normal(size=(32, 32)).astype(np.float32), tmp_path / "www" / "custom",
                            name="custom layer", description="a registered custom layer", authors=["T"], halo=1)
    target.unlink()
    assert tf_safety.keras_unsafe_layers(next(rdf.parent.glob("*.keras"))) == [
        "'stamp' (the custom class AnyLibrary>Stamp: code)"]
    server = Server(tmp_path / "www")
    try:
        url = f"{server.url}/custom/bioimageio.yaml"
        with pytest.raises(dlmodel.TrustError, match=r"'stamp' \(the custom class AnyLibrary>Stamp: code\).*trust=True"):
            dlmodel.load(url).predict(RNG.normal(size=(32, 32)).astype(np.float32))
        assert not target.exists()
        assert dlmodel.load(url, trust=True).test().ok
        assert target.exists()
    finally:
        server.stop()


def test_keras_built_ins_that_carry_code_or_reach_files_are_refused(tmp_path):
    """TFSMLayer loads a SavedModel from any path (unchecked), Lambda holds Python: refused,
    named; Keras' own ops (keras.ops in a functional model) are not."""
    import keras
    import tensorflow as tf

    from dlmodel import tf_safety

    class Writes(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(tmp_path / "x"), "x")
            return x

    module = Writes()
    tf.saved_model.save(module, str(tmp_path / "outside"), signatures={"serving_default": module.serve})
    inp = keras.Input(shape=(None, None, 1))
    out = keras.layers.TFSMLayer(str(tmp_path / "outside"), call_endpoint="serving_default", name="outside")(inp)
    keras.Model(inp, list(out.values())[0]).save(tmp_path / "tfsm.keras")
    assert tf_safety.keras_unsafe_layers(tmp_path / "tfsm.keras") == [
        "'outside' (loads a SavedModel from a path, unchecked)"]
    x = keras.ops.image.resize(keras.ops.sigmoid(keras.layers.Conv2D(2, 3, padding="same")(inp)), (8, 8))
    x = keras.ops.concatenate([x[..., :1], keras.layers.Lambda(lambda t: t * 2, name="twice")(x)], axis=-1)
    keras.Model(inp, x).save(tmp_path / "lambda.keras")
    assert tf_safety.keras_unsafe_layers(tmp_path / "lambda.keras") == ["'twice' (Lambda layers hold Python code)"]
    keras.Model(inp, keras.ops.add(keras.ops.sigmoid(inp), 1.0)[..., :1]).save(tmp_path / "ops.keras")
    assert tf_safety.keras_unsafe_layers(tmp_path / "ops.keras") == []


def test_tf_keras_op_layers_may_call_only_tensorflow_functions_of_allowed_categories(tmp_path):
    """tf.keras 2 records tf.* calls on its tensors as TFOpLambda layers naming the function; a
    file, print or Python function there is refused, as a graph op would be."""
    import h5py
    import tensorflow as tf
    import tf_keras

    from dlmodel import tf_safety

    inp = tf_keras.Input((None, None, 1))
    y = tf_keras.layers.Conv2D(2, 3, padding="same")(inp)
    y = tf.nn.relu(tf.concat([y, tf.math.multiply(y, 2.0)], -1))[..., :1]
    tf_keras.Model(inp, tf.image.resize(y, (8, 8))).save(tmp_path / "ops.h5")
    with h5py.File(tmp_path / "ops.h5") as f:
        config = json.loads(f.attrs["model_config"])
    functions = [layer["config"]["function"] for layer in config["config"]["layers"] if "function" in layer["config"]]
    assert functions == ["math.multiply", "concat", "nn.relu", "__operators__.getitem", "image.resize"]
    assert tf_safety.keras_config_refusals(config) == []
    for symbol in ("io.write_file", "io.read_file", "print", "py_function", "numpy_function", "data.Dataset",
                   "saved_model.load", "no.such.function"):
        hostile = json.loads(json.dumps(config))
        layer = hostile["config"]["layers"][2]
        layer["config"]["function"] = symbol
        assert tf_safety.keras_config_refusals(hostile) == [
            f"'{layer['config']['name']}' (a tf.keras layer calling tf.{symbol}, outside the allowed TensorFlow operations)"]


def test_an_unreadable_keras_configuration_is_one_line_naming_it(tmp_path):
    import h5py

    from dlmodel import tf_safety

    for name, value in (("not_json.h5", "{'class_name': "), ("not_text.h5", np.arange(3))):
        with h5py.File(tmp_path / name, "w") as f:
            f.attrs["model_config"] = value
        with pytest.raises(dlmodel.DLModelError, match=f"Keras model configuration in .*{name}") as err:
            tf_safety.keras_unsafe_layers(tmp_path / name)
        assert "\n" not in str(err.value)
