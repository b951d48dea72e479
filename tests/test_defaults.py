"""Defaults are decided once, in the core: RunDLModel's settings, the CLI's flags and the Python
signatures agree for every parameter they share (issue 29).

The CLI's flags default to None (nothing passed, the core decides) or to the core's own value;
RunDLModel's settings start at the core's value, or at *Automatic*, which passes None or "auto".
"""
from __future__ import annotations

import argparse
import inspect

import pytest

import dlmodel
from dlmodel import cli
from dlmodel.api import Model
from dlmodel.instances import DEFAULT_RECIPE, resolve_recipe
from dlmodel.platerun import PlateJob, parse_layout
from dlmodel.training import finetune


def _subparsers() -> dict:
    parser = cli._parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _cli_defaults(command: str) -> dict:
    return {a.dest: a.default for a in _subparsers()[command]._actions if a.dest != "help"}


def _python_defaults(*funcs) -> dict:
    out = {}
    for f in funcs:
        for name, p in inspect.signature(f).parameters.items():
            if p.default is not inspect.Parameter.empty:
                out.setdefault(name, p.default)
    return out


# (command, the core functions its flags reach)
COMMANDS = [
    ("predict", (dlmodel.load, Model.predict, Model.confidence, resolve_recipe)),
    ("test", (dlmodel.load,)),
    ("info", (dlmodel.load,)),
    ("plate", (dlmodel.load, PlateJob, parse_layout, Model.confidence, resolve_recipe)),
    ("finetune", (finetune,)),
]


@pytest.mark.parametrize("command,funcs", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_cli_flags_default_to_none_or_to_the_core(command, funcs):
    core = _python_defaults(*funcs)
    shared = {dest: d for dest, d in _cli_defaults(command).items() if dest in core}
    assert shared, f"{command}: no flag reaches {funcs}"
    differ = {dest: (d, core[dest]) for dest, d in shared.items() if d is not None and d != core[dest]}
    assert not differ, f"dlmodel {command}: flags whose default restates or contradicts the core's: {differ}"


def test_finetune_and_plate_flags_leave_every_default_to_the_core():
    for command, names in (("finetune", ("epochs", "batch_size", "learning_rate", "holdout", "patience", "seed")),
                           ("plate", ("layout", "model_channel", "measure_channel", "ring"))):
        defaults = _cli_defaults(command)
        assert all(defaults[n] is None for n in names), (command, {n: defaults[n] for n in names})


def test_the_help_quotes_the_cores_defaults():
    helps = {a.dest: a.help for a in _subparsers()["finetune"]._actions}
    core = _python_defaults(finetune)
    assert f"({core['epochs']})" in helps["epochs"] and f"({core['patience']})" in helps["patience"]


def test_runDLModel_settings_start_at_the_cores_defaults(cellprofiler_modules):
    import rundlmodel as plugin

    m = cellprofiler_modules("RunDLModel")
    load = _python_defaults(dlmodel.load)
    predict = _python_defaults(Model.predict)
    assert plugin.ENGINE_ARG[m.engine.value] == load["engine"]
    assert plugin.DEVICE_ARG[m.device.value] == load["device"]
    # Automatic tile and batch: None, the core's choice
    assert m.tile_mode.value == plugin.TILE_AUTO and predict["tile"] is None
    assert m.batch_mode.value == plugin.BATCH_AUTO and predict["batch_size"] is None
    from dlmodel.confidence import DEFAULT_AUGMENTATIONS

    assert m.augmentations.value == DEFAULT_AUGMENTATIONS
    g = m.outputs[0]
    assert plugin.METHOD_ARG[g.method.value] == _python_defaults(resolve_recipe)["method"] == "auto"
    resolved = resolve_recipe(None)
    settings = {"threshold": g.threshold.value, "diameter": g.diameter.value, "min_size": g.min_size.value,
                "fill_holes": g.fill_holes.value, "discard_border": g.discard_border.value}
    assert settings == {k: resolved[k] for k in settings} == {k: DEFAULT_RECIPE[k] for k in settings}
