"""What a model gives back, as plain objects that need only numpy: a :class:`Prediction`
(arrays by output id) and a :class:`TestReport`. Shared by the in-process model
(:mod:`dlmodel.api`) and the one in its own environment (:mod:`dlmodel.client`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

import numpy as np

from .errors import InputError


class Prediction(dict):
    """Output arrays by tensor id, with ``axes`` (letters per output) and the tile ``plan``."""

    def __init__(self, arrays: Mapping[str, np.ndarray], axes: Mapping[str, str], plan: Optional[Any]):
        super().__init__(arrays)
        self.axes = dict(axes)
        self.plan = plan

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
        return "\n".join(lines)
