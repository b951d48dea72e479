"""Shipped packages and fixtures carry no absolute path of the machine that made them (issue 28)."""
import importlib.util
import sys

import numpy as np

from conftest import ROOT

spec = importlib.util.spec_from_file_location("check_paths", ROOT / "tests" / "fixtures" / "make" / "check_paths.py")
check_paths = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_paths)


def _hits(*paths):
    hits = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if f.suffix not in (".py", ".md"):
                check_paths.scan(str(f), f.read_bytes(), hits)
    return hits


def test_models_and_fixtures_carry_no_machine_paths():
    hits = _hits(ROOT / "models", ROOT / "tests" / "fixtures")
    assert not hits, "\n".join(f"{name}: {ctx!r}" for name, ctx in hits[:10])


def test_torchscript_written_by_dlmodel_carries_no_machine_paths(tmp_path):
    import torch

    from dlmodel.converters import torch_to_torchscript

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU())
    target = torch_to_torchscript(net, tmp_path / "weights.torchscript.pt")
    assert not [h for h in _hits(target) if b"site-packages" in h[1] or b"/torch/" in h[1]]
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 16, 16)).astype(np.float32))
    assert torch.equal(torch.jit.load(str(target))(x), net(x))
