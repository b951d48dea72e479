"""Shared fixtures: the shared zoo model and data, and tiny packages built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import zoo

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NUCLEI_MODEL = SHARED / "models" / "unet2d_nuclei_broad"
DSB_VAL = SHARED / "data" / "dsb2018_nuclei_val"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache, and never reach the network."""
    os.environ["DLMODEL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("DLMODEL_HTTP_TIMEOUT", "5")
    # a zoo id or DOI must never resolve to the real internet in tests
    os.environ["DLMODEL_ZOO_URL"] = "http://127.0.0.1:9/{id}/rdf.yaml"
    os.environ["DLMODEL_ZENODO_API"] = "http://127.0.0.1:9/api"
    yield


@pytest.fixture(scope="session")
def nuclei_model() -> Path:
    if not (NUCLEI_MODEL / "bioimageio.yaml").exists():
        pytest.skip("../shared/models/unet2d_nuclei_broad is not there")
    return NUCLEI_MODEL / "bioimageio.yaml"


def _rng(seed: int = 0):
    return np.random.default_rng(seed)


def _torch_module(folder: Path, name: str, *args, **kwargs):
    import torch

    mod = zoo._arch_module(folder)
    torch.manual_seed(0)
    return mod, getattr(mod, name)(*args, **kwargs)


@pytest.fixture(scope="session")
def torch2d(tmp_path_factory) -> Path:
    """2D, parameterized size (min 16, step 8), halo 2; state dict + TorchScript + ONNX;
    zero_mean_unit_variance then sigmoid, like the shared nuclei model."""
    import bioimageio.spec.model.v0_5 as v

    folder = tmp_path_factory.mktemp("torch2d")
    _, net = _torch_module(folder, "TinyConv")
    x = _rng().normal(10, 3, (1, 1, 64, 48)).astype(np.float32)
    weights = zoo.torch_weights(folder, net, [x], ["pytorch_state_dict", "torchscript", "onnx"], {"callable": "TinyConv"})

    def inputs(tf):
        return [v.InputTensorDescr(
            id=v.TensorId("raw"),
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("c0")]),
                  v.SpaceInputAxis(id=v.AxisId("y"), size=v.ParameterizedSize(min=16, step=8)),
                  v.SpaceInputAxis(id=v.AxisId("x"), size=v.ParameterizedSize(min=16, step=8))],
            test_tensor=tf("raw"),
            preprocessing=[v.ZeroMeanUnitVarianceDescr(kwargs=v.ZeroMeanUnitVarianceKwargs(axes=[v.AxisId("y"), v.AxisId("x")]))],
        )]

    def outputs(tf):
        return [v.OutputTensorDescr(
            id=v.TensorId("prob"),
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("p")]),
                  v.SpaceOutputAxisWithHalo(id=v.AxisId("y"), halo=2, size=v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=v.AxisId("y"))),
                  v.SpaceOutputAxisWithHalo(id=v.AxisId("x"), halo=2, size=v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=v.AxisId("x")))],
            test_tensor=tf("prob"),
            postprocessing=[v.SigmoidDescr()],
        )]

    return zoo.build(folder, "tiny torch 2d", inputs, outputs, weights, {"raw": x}, reference_format="torchscript")
