"""``engine="fastest"``: the engine chosen by measurement, not by a fixed order.

Each installed engine for which the package has weights first runs the package's own test
(its test input against its test outputs, within the rdf's reproducibility tolerance): an engine
whose outputs do not match is never picked. The ones that pass are timed on the tile shape the
image will use (one warm-up pass, then the best of a few), and the fastest is kept. The choice is
remembered in a small JSON file in the dlmodel cache (``fastest.json``), keyed by the package's
rdf sha256, this machine, the device, the engines' versions and the tile shape, so that the
measurement is paid once.

bioimageio.core and deepImageJ pick by a fixed priority; ``engine="auto"`` still does (see
docs/performance.md for why).
"""
from __future__ import annotations

import datetime
import json
import logging
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import engines
from .errors import DLModelError, EngineError, one_line

if TYPE_CHECKING:
    from .api import Model

LOGGER = logging.getLogger("dlmodel")

WARMUP = 1  # passes before timing: the first carries graph building, allocation and caches
PASSES = 3  # timed passes; the best is kept (the least disturbed by other work on the machine)
CACHE_FILE = "fastest.json"
_LOCK = threading.Lock()


@dataclass
class Choice:
    """Which engine ``engine="fastest"`` ran, and why."""

    weights_format: str
    seconds: Dict[str, float] = field(default_factory=dict)  # best pass per engine that passed its test
    refused: Dict[str, str] = field(default_factory=dict)  # engine -> why it was not a candidate
    tile: Tuple[int, ...] = ()  # the first input's shape per pass (model layout)
    measured: str = ""  # UTC date and time of the measurement
    cached: bool = False  # read from the cache file, not measured in this process

    @property
    def reason(self) -> str:
        """One line: e.g. ``fastest: onnx 0.21 s vs torchscript 0.34 s per tile 1x1x512x512, measured 2026-12-04``."""
        ranked = sorted(self.seconds.items(), key=lambda kv: kv[1])
        times = " vs ".join(f"{_short(f)} {s:.3g} s" for f, s in ranked)
        tile = "x".join(str(n) for n in self.tile)
        text = f"fastest: {times} per tile {tile}, measured {self.measured[:10]}"
        if len(ranked) == 1:
            text = f"fastest: {_short(ranked[0][0])} ({ranked[0][1]:.3g} s per tile {tile}), the only engine that could run"
        if self.refused:
            text += "; not used: " + "; ".join(f"{_short(f)} ({why})" for f, why in self.refused.items())
        return text


def _short(fmt: str) -> str:
    return engines.ROWS[fmt].name if fmt in engines.ROWS else fmt


def cache_path() -> Path:
    """Where the measured choices are kept: ``fastest.json`` in the dlmodel cache."""
    from .sources import cache_dir

    return cache_dir() / CACHE_FILE


def cache_key(model: "Model", formats: Sequence[str], tile: Sequence[int]) -> str:
    """The package (rdf sha256), the machine (host, processor, cores, device), the engines'
    versions and the tile shape: a change to any of them measures again."""
    versions = sorted({f"{m}={_version(m)}" for f in formats for m in engines.ROWS[f].modules})
    machine = f"{platform.node()}/{platform.machine()}/{engines.cores()}cores/{model.threads or engines.default_threads()}threads"
    return "|".join([model.spec.rdf_sha256, machine, model.device, ",".join(versions), "x".join(map(str, tile))])


def _version(module: str) -> str:
    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "?"


def _read_cache() -> Dict[str, Any]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # a damaged file is measured again, not fatal
        LOGGER.warning("dlmodel: %s is unreadable (%s); engines are measured again", path, one_line(e))
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, choice: Choice) -> None:
    from .io import atomic_path

    with _LOCK:
        data = _read_cache()
        entry = asdict(choice)
        entry.pop("cached")
        data[key] = entry
        try:
            with atomic_path(cache_path()) as tmp:  # never a half-written file under the real name
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        except DLModelError as e:  # a read-only cache: the choice holds for this process only
            LOGGER.warning("dlmodel: %s", e)


def tile_feeds(model: "Model", sample: Mapping[str, np.ndarray], tile: Any = None,
               max_tile_pixels: Optional[int] = None) -> List[np.ndarray]:
    """Engine inputs of the shape one pass over ``sample`` (model layout) will have: the
    planner's first tile (one tile per pass), filled with noise of unit variance."""
    from . import tiling

    kw = {} if max_tile_pixels is None else {"max_tile_pixels": max_tile_pixels}
    plan = tiling.make_plan(model.spec, sample, tile, 1, **kw)
    first = plan.tiles[0]
    rng = np.random.default_rng(0)
    feeds = []
    for t in model.spec.inputs:
        arr = sample[t.id]
        shape = tuple(first.axes[a.id].size if (a.id in first.axes and a.tileable) else arr.shape[i]
                      for i, a in enumerate(t.axes))
        feeds.append(rng.standard_normal(shape).astype(np.float32))
    return feeds


def time_engine(engine: engines.Engine, feeds: Sequence[np.ndarray], warmup: int = WARMUP, passes: int = PASSES) -> float:
    """The best of ``passes`` forward passes (after ``warmup`` untimed ones), in seconds."""
    for _ in range(warmup):
        engine.run(feeds)
    best = float("inf")
    for _ in range(passes):
        t0 = time.perf_counter()
        engine.run(feeds)
        best = min(best, time.perf_counter() - t0)
    return best


def choose(model: "Model", sample: Mapping[str, np.ndarray], tile: Any = None,
           max_tile_pixels: Optional[int] = None) -> Choice:
    """The fastest engine for this model, machine and tile shape, from the cache or measured.

    Candidates: the weight formats the package has whose engine is installed. Each must pass
    the package's own test (:meth:`dlmodel.Model.test`); the ones that do are timed with
    :func:`time_engine` on :func:`tile_feeds`. Engines loaded only to be measured are unloaded."""
    formats = [f for f in model.spec.weights if f in engines.ROWS and engines.engine_installed(f)]
    feeds = tile_feeds(model, sample, tile, max_tile_pixels)
    key = cache_key(model, formats, feeds[0].shape)
    hit = _read_cache().get(key)
    if isinstance(hit, dict) and hit.get("weights_format") in formats:
        return Choice(hit["weights_format"], {k: float(v) for k, v in hit.get("seconds", {}).items()},
                      dict(hit.get("refused", {})), tuple(hit.get("tile", ())), str(hit.get("measured", "")), cached=True)
    choice = Choice("", tile=tuple(feeds[0].shape),
                    measured=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    loaded_before = {f for f, e in model._engines.items() if e.loaded}
    for fmt in formats:
        try:
            report = model.test(fmt)
            if not report.ok:
                choice.refused[fmt] = _why(report)
                continue
            choice.seconds[fmt] = time_engine(model._engine(fmt), feeds)
        except DLModelError as e:
            choice.refused[fmt] = one_line(e)
    if not choice.seconds:
        raise EngineError(f"engine='fastest': no engine of model {model.spec.name!r} reproduces its test outputs here ("
                          + "; ".join(f"{_short(f)}: {w}" for f, w in choice.refused.items()) + ")")
    choice.weights_format = min(choice.seconds, key=choice.seconds.__getitem__)
    for fmt, engine in list(model._engines.items()):  # keep only the chosen one (and what was loaded before)
        if fmt != choice.weights_format and fmt not in loaded_before:
            engine.unload()
    _write_cache(key, choice)
    LOGGER.info("dlmodel: model %r: %s", model.spec.name, choice.reason)
    return choice


def _why(report: Any) -> str:
    if report.error:
        return one_line(report.error)
    worst = max(report.checks, key=lambda c: c.max_abs_error, default=None)
    return "outputs differ from the package's test outputs" + (
        f" (max abs error {worst.max_abs_error:.3g} on {worst.output!r})" if worst is not None else "")


def clear_cache() -> None:
    """Forget every measured choice (they are measured again when next needed)."""
    with _LOCK:
        cache_path().unlink(missing_ok=True)



def measured_here(rdf_sha256: str) -> List[str]:
    """Every choice measured on this machine for the package with this rdf sha256, one line each
    (``dlmodel info`` shows them): device, tile and :attr:`Choice.reason`."""
    lines = []
    host = platform.node()
    for key, hit in sorted(_read_cache().items()):
        parts = key.split("|")
        if len(parts) != 5 or parts[0] != rdf_sha256 or not parts[1].startswith(host + "/") or not isinstance(hit, dict):
            continue
        try:
            choice = Choice(str(hit["weights_format"]), {k: float(v) for k, v in hit.get("seconds", {}).items()},
                            dict(hit.get("refused", {})), tuple(hit.get("tile", ())), str(hit.get("measured", "")))
        except (KeyError, TypeError, ValueError):
            continue
        lines.append(f"on {parts[2]}: {_short(choice.weights_format)} ({choice.reason})")
    return lines

