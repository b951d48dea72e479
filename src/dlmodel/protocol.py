"""What a model offers, wherever it runs.

:class:`dlmodel.api.Model` runs a model in this process; :class:`dlmodel.client.RemoteModel` runs
the same model in a worker of another Python environment. Callers (RunDLModel, the CLI, the batch
engine) hold either and must not care which: :class:`ModelInterface` is that contract, and
:data:`METHODS` the requests a worker answers for it (``tests/test_protocol.py`` checks both
classes have every method with the same parameters, and calls each through a real worker).

:class:`RunOptions` is the one schema of how an image is run (tiles, batch, padding, the name in
messages): a new option is added there, and travels to a worker and back without another change
to the wire.

This module needs numpy and the standard library only (RunDLModel imports it in CellProfiler 4.2's
own Python, where the engines are absent).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from .confidence import Confidence
    from .results import Prediction, TestReport

Image = Union[np.ndarray, Mapping[str, np.ndarray]]
Axes = Union[None, str, Mapping[str, str]]
TileArg = Union[None, bool, int, Sequence[int], Mapping[str, int]]

# the requests of the interface a worker answers (dlmodel.worker.Server.OPS), one per method
METHODS = ("predict", "labels", "confidence", "test", "info", "check_file_fits", "unload")


@dataclass(frozen=True)
class RunOptions:
    """How one image is run, for :meth:`ModelInterface.predict` and
    :meth:`ModelInterface.confidence`; None means the core decides.

    >>> RunOptions.from_wire(RunOptions(tile=[256, 256], name="a.tif").to_wire())
    RunOptions(tile=(256, 256), batch_size=None, pad_mode=None, max_tile_pixels=None, name='a.tif')
    """

    tile: TileArg = None
    batch_size: Optional[int] = None
    pad_mode: Optional[str] = None
    max_tile_pixels: Optional[int] = None
    name: str = "image"

    def to_wire(self) -> Dict[str, Any]:
        """As plain data for a request (JSON)."""
        out = asdict(self)
        if isinstance(self.tile, Mapping):
            out["tile"] = dict(self.tile)
        elif isinstance(self.tile, (list, tuple)):
            out["tile"] = list(self.tile)
        return out

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> "RunOptions":
        """From a request; JSON's lists become tuples again (a sequence of tile lengths)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("tile"), list):
            values["tile"] = tuple(values["tile"])
        return cls(**values)

    def kwargs(self) -> Dict[str, Any]:
        """As keyword arguments of :meth:`dlmodel.api.Model.predict` (an unset tile budget is
        left to the model's default)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["max_tile_pixels"] is None:
            del out["max_tile_pixels"]
        return out


@runtime_checkable
class ModelInterface(Protocol):
    """A loaded model: its facts and what it does. See :class:`dlmodel.api.Model` for each
    method's documentation."""

    spec: Any  # dlmodel.spec.ModelSpec here, dlmodel.client.RemoteSpec through a worker
    weights_format: str
    device: str
    threads: Optional[int]  # engine threads (None: all cores)

    @property
    def local(self) -> bool: ...

    @property
    def instance_recipe(self) -> Optional[Dict[str, Any]]: ...

    @property
    def left_out(self) -> List[str]: ...

    @property
    def makes_objects(self) -> bool: ...

    def predict(self, image: Image, axes: Axes = None, *, tile: TileArg = None, batch_size: Optional[int] = None,
                pad_mode: Optional[str] = None, max_tile_pixels: Optional[int] = None,
                name: str = "image") -> "Prediction": ...

    def labels(self, prediction: "Prediction", method: str = "auto", output: Optional[str] = None,
               channel: Optional[int] = None, **choices: Any) -> np.ndarray: ...

    def confidence(self, image: Image, axes: Axes = None, *, augmentations: Optional[int] = None, seed: int = 0,
                   objects: Union[None, bool, Mapping[str, Any]] = None, tile: TileArg = None,
                   batch_size: Optional[int] = None, pad_mode: Optional[str] = None,
                   name: str = "image") -> "Confidence": ...

    def test(self, weights_format: Optional[str] = None) -> "TestReport": ...

    def info(self) -> Dict[str, Any]: ...

    def check_file_fits(self, path: Union[str, Path], axes: Optional[str] = None, tile: TileArg = None,
                        batch_size: Optional[int] = None) -> None: ...

    def unload(self) -> None: ...
