"""Tile planning: cover an image of any size with tiles of sizes the model accepts.

Along each tiled axis an image of length ``L`` (input pixels) is covered by tiles of a valid
length ``T``. A tile needs ``margin`` pixels of context on each side (the output halo and any
size offset, in input pixels); only its inner part is kept. Inner parts are spread evenly so
the last tile ends exactly at the image border, neighbouring tiles overlap a little, and each
tile writes the output up to the middle of the overlap. Context that falls outside the image
is padded; an image shorter than ``T`` is padded up to ``T`` and the output cropped back.

Coordinates are input pixels of the whole image; a tile may start before 0 or end past ``L``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, List, Sequence, Tuple

from .errors import InputError


@dataclass(frozen=True)
class AxisTile:
    start: int  # first input pixel the tile reads (may be < 0: padding)
    size: int  # tile length T
    write_start: int  # first input pixel whose output this tile writes
    write_stop: int  # one past the last


@dataclass(frozen=True)
class AxisPlan:
    axis: str
    length: int
    size: int
    margin: int
    tiles: Tuple[AxisTile, ...]


@dataclass(frozen=True)
class Tile:
    """One N-D tile: per tiled axis id, its AxisTile."""

    axes: Dict[str, AxisTile]


def plan_axis(axis: str, length: int, size: int, margin: int, align: int = 1) -> AxisPlan:
    """Plan tiles of length ``size`` over ``length`` pixels, keeping ``margin`` of context.

    ``align``: tile starts are multiples of it (down-sampling models need even starts so the
    output grid lines up)."""
    if length < 1:
        raise InputError(f"axis {axis!r} has length {length}; images need at least 1 pixel")
    inner = size - 2 * margin
    if inner < align:
        raise InputError(
            f"tile size {size} along {axis!r} leaves no output after cropping a context of "
            f"{margin} pixels on each side; use a tile larger than {2 * margin}"
        )
    if length <= inner:
        return AxisPlan(axis, length, size, margin, (AxisTile(-margin, size, 0, length),))
    n = max(2, math.ceil(length / inner))
    last = length - inner
    while True:
        # inner regions start at evenly spread, aligned positions; the last one ends at or
        # past ``length`` (its extra output is never written)
        starts = [_align_down(round(k * last / (n - 1)), align) for k in range(n - 1)]
        starts.append(last + (-last) % align)
        ends = [s + inner for s in starts]
        if all(starts[k + 1] <= ends[k] for k in range(n - 1)):
            break
        n += 1
    cuts = [0] + [_align_down((ends[k] + starts[k + 1]) // 2, align) for k in range(n - 1)] + [length]
    tiles = tuple(
        AxisTile(starts[k] - margin, size, cuts[k], cuts[k + 1]) for k in range(n) if cuts[k + 1] > cuts[k]
    )
    return AxisPlan(axis, length, size, margin, tiles)


def _align_down(v: int, align: int) -> int:
    return v - v % align


def plan(axis_plans: Sequence[AxisPlan]) -> List[Tile]:
    """All N-D tiles, in C order of the given axes."""
    return [
        Tile({p.axis: t for p, t in zip(axis_plans, combo)})
        for combo in itertools.product(*(p.tiles for p in axis_plans))
    ]


def alignment(factor: Fraction) -> int:
    """Input-pixel step that maps onto whole output pixels for an output/input size ratio."""
    return factor.denominator


def margin_for(halo: int, offset: int, factor: Fraction, align: int) -> int:
    """Context (input pixels per side) a tile needs so its output halo can be cropped.

    ``halo`` and ``offset`` are in output pixels; ``factor`` is output pixels per input pixel.
    A negative offset means the model's output is smaller than its input (valid convolutions).
    """
    need = (Fraction(halo) - Fraction(offset, 2)) / factor
    m = max(0, math.ceil(need))
    return m + (-m) % align
