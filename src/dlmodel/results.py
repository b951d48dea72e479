"""What a model gives back, as plain objects that need only numpy: a :class:`Prediction`
(arrays by output id) and a :class:`TestReport`. Shared by the in-process model
(:mod:`dlmodel.api`) and the one in its own environment (:mod:`dlmodel.client`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

import numpy as np

from .errors import InputError


def require_prediction(prediction: Any, method: str) -> None:
    """Refuse, in one line, what is not a :class:`Prediction` (an image passed where its
    prediction belongs is the usual slip).

    >>> require_prediction(np.zeros((4, 4)), "Model.labels")
    Traceback (most recent call last):
    ...
    dlmodel.errors.InputError: Model.labels takes a prediction (what Model.predict returns), not ndarray: model.labels(model.predict(image))
    """
    if not isinstance(prediction, Prediction):
        raise InputError(f"{method} takes a prediction (what Model.predict returns), not {type(prediction).__name__}: "
                         f"model.{method.rsplit('.', 1)[-1]}(model.predict(image))")


class Prediction(dict):
    """Output arrays by tensor id, with ``axes`` (letters per output), the tile ``plan`` and
    ``space``: the input image's length along each space axis (``{"y": 251, "x": 237}``), so
    objects from an output on a coarser grid (StarDist's) come back at the image's size."""

    def __init__(self, arrays: Mapping[str, np.ndarray], axes: Mapping[str, str], plan: Optional[Any],
                 space: Optional[Mapping[str, int]] = None):
        super().__init__(arrays)
        self.axes = dict(axes)
        self.plan = plan
        self.space = {str(k): int(v) for k, v in dict(space or {}).items()}

    def channel(self, output_id: str, index: int = 0) -> np.ndarray:
        """One channel of an output, with the output's other axes (``yx``, ``zyx``, ...): a new
        array, so changing it never changes the prediction."""
        if output_id not in self:
            raise InputError(f"the model has no output {output_id!r} (it has: {', '.join(self)})")
        arr, axes = self[output_id], self.axes[output_id]
        if "c" not in axes:
            if index != 0:
                raise InputError(f"output {output_id!r} has one channel; channel {index + 1} was asked for")
            return arr.copy()
        n = arr.shape[axes.index("c")]
        if not 0 <= index < n:
            raise InputError(f"output {output_id!r} has {n} channel(s); channel {index + 1} was asked for")
        return np.take(arr, index, axis=axes.index("c"))

    def channel_on_input_grid(self, output_id: str, index: int = 0) -> np.ndarray:
        """:meth:`channel`, on the input image's pixels: an output on a coarser whole-number grid
        (StarDist's every 2nd pixel) has each value repeated over the input pixels of its cell
        (cell i covers pixels 2i and 2i + 1, where StarDist puts it), an odd last row or column
        filled from the last cell. Outputs already on the input's pixels come back as :meth:`channel`.

        >>> p = Prediction({"o": np.array([[1.0, 2.0]])}, {"o": "yx"}, None, {"y": 2, "x": 3})
        >>> p.channel_on_input_grid("o")
        array([[1., 1., 2.],
               [1., 1., 2.]])
        """
        arr = self.channel(output_id, index)
        letters = [a for a in self.axes[output_id] if a != "c"]
        for i, a in enumerate(letters):
            want, n = self.space.get(a), arr.shape[i]
            if a not in "zyx" or not want or want == n or n == 0:
                continue
            k = round(want / n)
            if k < 2 or abs(n * k - want) >= k:
                continue  # not a whole-number grid of this image: left as it is
            arr = np.take(np.repeat(arr, k, axis=i), np.arange(want), axis=i, mode="clip")
        return arr


@dataclass
class OutputCheck:
    output: str
    max_abs_error: float
    mismatched_per_million: float
    tolerance: Any
    ok: bool


@dataclass
class TestReport:
    weights_format: str
    checks: List[OutputCheck] = field(default_factory=list)
    error: Optional[str] = None
    untrusted: bool = False  # not run: the format runs the package's code, and the package is not trusted
    note: Optional[str] = None  # how the test input was run, when not as any image would be

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)

    def summary(self) -> str:
        if self.error:
            return f"{'skip' if self.untrusted else 'FAIL'} {self.weights_format}: {self.error}"
        lines = []
        for c in self.checks:
            tol = c.tolerance
            lines.append(
                f"{'ok  ' if c.ok else 'FAIL'} {self.weights_format} output {c.output!r}: max abs error "
                f"{c.max_abs_error:.3g}, {c.mismatched_per_million:.1f} mismatched per million "
                f"(tolerance: abs {tol.absolute:g} + rel {tol.relative:g}, {tol.mismatched_per_million:g} per million)"
            )
        if self.note:
            lines.append(f"     ({self.note})")
        return "\n".join(lines)
