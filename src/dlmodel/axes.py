"""Mapping user arrays (with an axes string such as ``"yx"`` or ``"czyx"``) onto model tensors.

Axes the model lacks (a time or z axis given to a 2D model, a batch of images) become *loop*
axes: each slice is predicted on its own and the outputs are stacked back along them.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .errors import InputError
from .spec import LETTER_TO_AXIS, Tensor


def guess_axes(ndim: int, tensor: Tensor, what: str = "image") -> str:
    """The axes an array of ``ndim`` dimensions most likely has for this input tensor."""
    letters = "".join(a.letter for a in tensor.axes if a.type != "batch")
    if ndim == len(letters):
        return letters
    if "c" in letters and tensor.n_channels == 1 and ndim == len(letters) - 1:
        return letters.replace("c", "")
    raise InputError(
        f"{what}: cannot tell the axes of a {ndim}D image for model input {tensor.id!r} "
        f"(which has axes {letters!r}); pass axes=, e.g. axes={letters!r}"
    )


def check_axes(axes: str, ndim: int, what: str) -> str:
    axes = axes.lower()
    unknown = [a for a in axes if a not in LETTER_TO_AXIS]
    if unknown:
        raise InputError(f"{what}: unknown axis letter(s) {''.join(unknown)!r} in axes {axes!r}; use b, c, t, z, y, x")
    if len(set(axes)) != len(axes):
        raise InputError(f"{what}: axes {axes!r} name an axis twice")
    if len(axes) != ndim:
        raise InputError(f"{what}: axes {axes!r} name {len(axes)} axes but the image has {ndim}")
    return axes


def to_model_layout(image: np.ndarray, axes: str, tensor: Tensor, what: str) -> Tuple[np.ndarray, str]:
    """Rearrange ``image`` to ``loop axes + tensor axes`` (batch of 1 included).

    Returns the array (a view where possible) and the loop axes' letters, outermost first."""
    axes = check_axes(axes, image.ndim, what)
    if image.size == 0:
        raise InputError(f"{what} is empty (shape {image.shape})")
    model_letters = tensor.letters
    loop = "".join(a for a in axes if a not in model_letters)
    arr = image
    cur = axes
    for ax in tensor.axes:
        letter = ax.letter
        if letter in cur:
            continue
        if ax.type == "batch" or ax.is_valid(1):  # batch, one channel, or an axis of length 1
            arr = arr[..., np.newaxis]
            cur += letter
            continue
        raise InputError(_missing_axis(tensor, axes, ax.letter, what))
    # channel count and fixed sizes that cannot be tiled
    for ax in tensor.axes:
        n = arr.shape[cur.index(ax.letter)]
        if ax.type == "channel" and ax.size is not None and n != ax.size:
            raise InputError(
                f"{what}: model input {tensor.id!r} wants {ax.size} channel(s) ({', '.join(ax.channel_names)}), "
                f"the image has {n} (axis 'c' of {axes!r})"
            )
    order = [cur.index(a) for a in loop] + [cur.index(ax.letter) for ax in tensor.axes]
    return np.transpose(arr, order), loop


def _missing_axis(tensor: Tensor, axes: str, letter: str, what: str) -> str:
    model = "".join(a.letter for a in tensor.axes if a.type != "batch")
    kind = {"z": "3D (z)", "t": "a time axis", "c": "channels"}.get(letter, f"axis {letter!r}")
    return f"{what}: model input {tensor.id!r} needs {kind} (axes {model!r}); the image has axes {axes!r}"


def output_axes(tensor: Tensor, loop: str, keep_channel: bool) -> Tuple[str, List[int]]:
    """Axes letters of an output as returned to the user, and which model dims to squeeze.

    Batch is always dropped; a single channel is dropped when the input had no channel axis."""
    squeeze = [i for i, a in enumerate(tensor.axes) if a.type == "batch"]
    letters = []
    for i, a in enumerate(tensor.axes):
        if a.type == "batch":
            continue
        if a.type == "channel" and not keep_channel and a.size == 1:
            squeeze.append(i)
            continue
        letters.append(a.letter)
    return loop + "".join(letters), sorted(squeeze)

