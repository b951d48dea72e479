"""Every engine and every kind of tensor layout, on tiny real packages (see conftest.py)."""
import shutil

import numpy as np
import pytest

import dlmodel
import zoo

RNG = np.random.default_rng(42)


@pytest.mark.parametrize(
    "fixture, engine",
    [
        ("torch2d", "onnx"),
        ("torch2d", "torchscript"),
        ("torch2d", "pytorch"),
        ("torch3d", "torchscript"),
        ("two_io", "onnx"),
        ("two_io", "torchscript"),
        ("upsample2", "torchscript"),
        ("allops", "torchscript"),
        ("keras_h5", "keras"),
        ("keras_v3", "keras"),
        ("tf_saved_model", "tensorflow"),
    ],
)
def test_package_reproduces_its_test_outputs(fixture, engine, request):
    model = dlmodel.load(request.getfixturevalue(fixture), engine=engine)
    report = model.test()
    assert report.ok, report.summary()
    assert report.checks and all(c.max_abs_error < 1e-3 for c in report.checks)


def test_auto_engine_prefers_onnx_on_cpu(torch2d):
    assert dlmodel.load(torch2d, device="cpu").weights_format == "onnx"


def test_onnx_sessions_on_cpu_reuse_activation_memory(torch2d):
    # with the memory pattern a session holds every activation of a tile at once: 8192x8192 with the
    # zoo U-Net peaked at 710 MB, without it 615 (benchmarks/run.py --memory, docs/performance.md)
    session = dlmodel.load(torch2d, engine="onnx", device="cpu").engine.session
    assert session.get_session_options().enable_mem_pattern is False


class _Payload:
    """Unpickling this runs open(marker, "w"): what a hostile pickle could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pytorch_state_dict_is_loaded_weights_only(torch2d, tmp_path):
    import torch

    # the state dict holds tensors only: it loads, and computes what the TorchScript weights do
    x = RNG.normal(size=(40, 40)).astype(np.float32)
    model = dlmodel.load(torch2d, engine="pytorch")
    assert model.weights_format == "pytorch_state_dict"
    # the architecture file is imported without writing __pycache__ into the package's folder
    fresh = zoo.copy_package(torch2d.parent, tmp_path / "fresh")
    for cache in list(fresh.rglob("__pycache__")):
        shutil.rmtree(cache)
    dlmodel.load(fresh, engine="pytorch", trust=True).predict(x)
    assert not list(fresh.rglob("__pycache__")), "importing the package's code wrote into it"
    np.testing.assert_allclose(model.predict(x)["prob"], dlmodel.load(torch2d, engine="torchscript").predict(x)["prob"],
                               rtol=1e-5, atol=1e-6)
    # a state dict that carries a pickled payload is refused, and the payload never runs
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    marker = tmp_path / "payload_ran"
    state = torch.load(pkg / "weights_state.pt", weights_only=True)
    old_sha = zoo.sha256(pkg / "weights_state.pt")
    torch.save({**state, "extra": _Payload(marker)}, pkg / "weights_state.pt")
    rdf = pkg / "bioimageio.yaml"
    rdf.write_text(rdf.read_text().replace(old_sha, zoo.sha256(pkg / "weights_state.pt")))
    with pytest.raises(dlmodel.EngineError, match="weights_state.pt"):
        dlmodel.load(pkg, engine="pytorch", trust=True)
    assert not marker.exists()


@pytest.mark.parametrize("shape", [(203, 311), (16, 16), (5, 3), (1, 1), (1000, 17)])
@pytest.mark.parametrize("tile", [32, (24, 64), {"y": 48, "x": 16}])
def test_tiled_equals_untiled_2d(torch2d, shape, tile):
    model = dlmodel.load(torch2d, engine="onnx")
    x = RNG.normal(10, 3, shape).astype(np.float32)
    whole = model.predict(x, tile=False)["prob"]
    tiled = model.predict(x, tile=tile)
    assert tiled["prob"].shape == shape
    np.testing.assert_allclose(tiled["prob"], whole, atol=1e-5)


def test_tiled_equals_untiled_3d(torch3d):
    model = dlmodel.load(torch3d)
    x = RNG.normal(100, 20, (21, 45, 38)).astype(np.float32)
    whole = model.predict(x, axes="zyx", tile=False)
    tiled = model.predict(x, axes="zyx", tile={"z": 12, "y": 16, "x": 20})
    assert len(tiled.plan.tiles) > 8
    assert tiled["out"].shape == x.shape and tiled.axes["out"] == "zyx"
    np.testing.assert_allclose(tiled["out"], whole["out"], atol=1e-4)


def test_two_inputs_two_outputs(two_io):
    model = dlmodel.load(two_io, engine="onnx")
    a = RNG.normal(size=(70, 50)).astype(np.float32)
    b = RNG.normal(size=(2, 70, 50)).astype(np.float32)
    out = model.predict({"a": a, "b": b}, axes={"a": "yx", "b": "cyx"}, tile=24)
    assert set(out) == {"sum", "pair"}
    assert out["sum"].shape == (70, 50) and out["pair"].shape == (2, 70, 50)
    whole = dlmodel.load(two_io, engine="torchscript").predict({"a": a, "b": b}, axes={"a": "yx", "b": "cyx"}, tile=False)
    np.testing.assert_allclose(out["pair"], whole["pair"], atol=1e-4)


def test_output_twice_the_input_size(upsample2):
    model = dlmodel.load(upsample2)
    x = RNG.normal(size=(45, 37)).astype(np.float32)
    whole = model.predict(x, tile=False)
    tiled = model.predict(x, tile=16)
    assert whole["up"].shape == tiled["up"].shape == (90, 74)
    assert len(tiled.plan.tiles) > 4
    np.testing.assert_allclose(tiled["up"], whole["up"], atol=1e-5)


def test_channel_last_keras_model(keras_v3):
    model = dlmodel.load(keras_v3)
    x = RNG.normal(size=(50, 70)).astype(np.float32)
    out = model.predict(x, tile=24)
    assert out.axes["out"] == "yxc" and out["out"].shape == (50, 70, 2)
    np.testing.assert_allclose(out["out"], model.predict(x, tile=False)["out"], atol=1e-5)


def test_batched_tiles_equal_single_tiles(torch2d):
    model = dlmodel.load(torch2d, engine="torchscript")
    x = RNG.normal(size=(100, 90)).astype(np.float32)
    one = model.predict(x, tile=32, batch_size=1)
    four = model.predict(x, tile=32, batch_size=4)
    assert four.plan.batch_size == 4
    np.testing.assert_allclose(one["prob"], four["prob"], atol=1e-6)


def test_same_input_gives_bit_identical_output(torch2d):
    model = dlmodel.load(torch2d, engine="onnx")
    x = RNG.normal(size=(80, 60)).astype(np.float32)
    assert np.array_equal(model.predict(x, tile=32)["prob"], model.predict(x, tile=32)["prob"])


def test_workers_share_the_cores(monkeypatch):
    from dlmodel.engines import cores, threads_for_workers

    monkeypatch.delenv("DLMODEL_THREADS", raising=False)
    n = cores()
    assert threads_for_workers(1) == n
    assert threads_for_workers(n) == 1 and threads_for_workers(4 * n) == 1
    assert all(w * threads_for_workers(w) <= n for w in range(1, n + 1))
    monkeypatch.setenv("DLMODEL_THREADS", "3")
    assert threads_for_workers(n) == 3  # the user's word wins


class _QueuedOnnx(dlmodel.engines.OnnxEngine):
    """ONNX Runtime with a GPU's timing: ``submit`` returns at once and the pass runs when its
    result is awaited. CI has no GPU; this drives dlmodel's queued path (GPU batch default,
    store thread, results in order) with a real engine."""

    asynchronous = True

    def _submit(self, inputs):
        return lambda: self._run(inputs)


def test_queued_engine_path_gives_the_same_outputs(torch2d):
    model = dlmodel.load(torch2d, engine="onnx")
    x = RNG.normal(10, 3, (190, 290)).astype(np.float32)
    direct = model.predict(x, tile=32)
    model.engine = _QueuedOnnx(model.spec)
    queued = model.predict(x, tile=32)
    assert direct.plan.batch_size == 1 and queued.plan.batch_size == 4  # the GPU default
    assert len(queued.plan.tiles) % 4 != 0  # a short last batch too
    np.testing.assert_allclose(queued["prob"], direct["prob"], atol=1e-6)


def test_a_failing_queued_pass_is_a_one_line_error_and_leaves_no_thread(torch2d):
    import threading

    class Failing(_QueuedOnnx):
        calls = 0

        def _submit(self, inputs):
            Failing.calls += 1

            def result():
                if Failing.calls >= 3:  # as a GPU reports a fault when the result is awaited
                    raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
                return self._run(inputs)

            return result

    model = dlmodel.load(torch2d, engine="onnx")
    model.engine = Failing(model.spec)
    before = threading.active_count()
    with pytest.raises(dlmodel.EngineError, match=r"^onnx engine failed on input shape \(4, 1, 32, 32\): CUDA error: an "
                       r"illegal memory access was encountered$"):
        model.predict(RNG.normal(size=(203, 311)).astype(np.float32), tile=32)
    assert threading.active_count() == before


def test_the_gpu_batch_default_falls_back_to_one_tile_when_memory_is_short(torch2d, monkeypatch):
    model = dlmodel.load(torch2d, engine="onnx")
    model.engine = _QueuedOnnx(model.spec)
    x = RNG.normal(10, 3, (180, 285)).astype(np.float32)
    # 32x32 tiles: 0.4 MB of working memory each, 0.2 MB of output: 4 tiles per pass do not fit
    monkeypatch.setenv("DLMODEL_MEMORY_LIMIT", "1000000")
    assert model.predict(x, tile=32).plan.batch_size == 1
    with pytest.raises(dlmodel.InputError, match="use a smaller tile"):
        model.predict(x, tile=32, batch_size=4)  # asked for: refused, not changed


def test_engines_unload_and_models_load_again_when_used(torch2d):
    """unload() releases the session; a Model used as a context manager unloads at the end and
    loads again when it is used after that (issue 17)."""
    x = RNG.normal(size=(40, 40)).astype(np.float32)
    with dlmodel.load(torch2d, engine="onnx") as model:
        first = model.predict(x)["prob"]
        engine = model.engine
    assert not engine.loaded
    with pytest.raises(dlmodel.EngineError, match="was unloaded"):
        engine.run([np.zeros((1, 1, 16, 16), np.float32)])
    engine.unload()  # twice is fine
    np.testing.assert_array_equal(model.predict(x)["prob"], first)
    assert model.engine is not engine and model.engine.loaded
    cached = dlmodel.load_cached(torch2d, engine="onnx")
    held = cached.engine
    dlmodel.clear_cache()  # what RunDLModel's post_run calls
    assert not held.loaded


def test_an_architecture_from_a_missing_library_names_what_to_install(torch2d, tmp_path):
    """CAREamics-style packages name a library class as their architecture; without the library
    the error is one line with the pip command, pinned as the package's environment file says."""
    import bioimageio.spec.model.v0_5 as v
    from bioimageio.spec import ValidationContext, save_bioimageio_yaml_only

    from dlmodel.spec import read_description

    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    (pkg / "environment.yaml").write_text(
        "name: absent\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n    - dlmodel-absent-lib==0.3.5\n")
    descr = read_description(pkg / "bioimageio.yaml")
    with ValidationContext(root=pkg, perform_io_checks=False):
        entry = descr.weights.pytorch_state_dict.model_copy(update={
            "architecture": v.ArchitectureFromLibraryDescr(callable="UNet", import_from="dlmodel_absent_lib.models.unet"),
            "dependencies": v.FileDescr(source="environment.yaml", sha256=zoo.sha256(pkg / "environment.yaml")),
        })
        save_bioimageio_yaml_only(descr.model_copy(update={"weights": descr.weights.model_copy(
            update={"pytorch_state_dict": entry})}), pkg / "bioimageio.yaml")
    with pytest.raises(dlmodel.EngineError) as err:
        dlmodel.load(pkg, engine="pytorch")
    msg = str(err.value)
    assert "\n" not in msg and "dlmodel_absent_lib.models.unet.UNet" in msg
    assert "pip install 'dlmodel-absent-lib==0.3.5'" in msg
    assert dlmodel.load(pkg, engine="onnx").test().ok  # its other weights still run


def test_every_engine_list_is_the_registrys():
    """The registry is the one table: the spec view's formats and extras, dlmodel env's engines,
    RunDLModel's *Engine* choices and the CLI's --engine help are all derived from it."""
    import importlib
    import sys
    from pathlib import Path

    from dlmodel import cli, engines, envs, spec

    rows = engines.REGISTRY
    assert spec.ENGINE_EXTRA == {r.format: r.extra for r in rows}
    assert set(envs.ENGINES) == {r.extra for r in rows}
    assert set(engines.AUTO_ORDER["cpu"]) == set(engines.AUTO_ORDER["cuda"]) == {r.format for r in rows}
    assert all(r.format in engines.ALIASES[r.name].split("|") for r in rows)
    names = [arg for _, arg in engines.engine_choices()]
    assert names[:2] == ["auto", "fastest"] and set(names[2:]) == {r.name for r in rows}
    # the CLI: every --engine flag's help lists the registry's names
    helps = [a.help for p in cli._parser()._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
             for a in p._actions if "--engine" in a.option_strings]
    assert helps and all(h.startswith(", ".join(names)) for h in helps)
    # RunDLModel: its Choice lists the registry's labels, each passing the registry's name
    pytest.importorskip("cellprofiler_core")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    try:
        plugin = importlib.import_module("rundlmodel")
    finally:
        sys.path.pop(0)
    assert plugin.ENGINE_ARG == dict(engines.engine_choices())
    module = plugin.RunDLModel()
    module.create_settings()
    assert list(module.engine.choices) == [label for label, _ in engines.engine_choices()]
