"""Mapping user arrays (with an axes string such as ``"yx"`` or ``"czyx"``) onto model tensors.

Axes the model lacks (a time or z axis given to a 2D model, a batch of images) become *loop*
axes: each slice is predicted on its own and the outputs are stacked back along them.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

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


def output_axes(tensor: Tensor, loop: str, given: str) -> Tuple[str, List[int]]:
    """Axes letters of an output as returned to the user, and which model dims to squeeze.

    ``given``: the axes the user gave for the input this output follows. Batch is always
    dropped; so are a single channel and a z axis the user's input did not have (a 2D image
    through a model whose tensors have a z axis of 1, as Cellpose's exports do): ``yx`` in,
    ``yx`` out.
    """
    squeeze = [i for i, a in enumerate(tensor.axes) if a.type == "batch"]
    letters = []
    for i, a in enumerate(tensor.axes):
        if a.type == "batch":
            continue
        if a.letter not in given and ((a.type == "channel" and a.size == 1) or (a.id == "z" and a.ref is not None)):
            squeeze.append(i)
            continue
        letters.append(a.letter)
    return loop + "".join(letters), sorted(squeeze)


def assign_images(
    tensors: Sequence[Tensor], images: Sequence[Tuple[np.ndarray, str]], names: Sequence[str]
) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Feed a list of images to a model's inputs, in order.

    Each input takes as many images as it has channels (grey images stacked as its channels),
    or one colour image with exactly that many channels. ``images`` are ``(array, axes)``
    with axes such as ``yx``, ``yxc``, ``zyx``; ``names`` name them in errors.
    Returns arrays and axes per input tensor id."""
    arrays: Dict[str, np.ndarray] = {}
    axes_out: Dict[str, str] = {}
    i = 0
    wanted = ", ".join(f"{t.id!r}: {t.n_channels or 1} channel(s)" for t in tensors)
    for t in tensors:
        n = t.n_channels or 1
        if i >= len(images):
            raise InputError(f"the model has inputs {wanted}; {len(images)} image(s) given ({', '.join(names)})")
        arr, ax = images[i]
        if "c" in ax:
            if arr.shape[ax.index("c")] != n:
                raise InputError(
                    f"image {names[i]!r} has {arr.shape[ax.index('c')]} channels; model input {t.id!r} wants {n}"
                )
            arrays[t.id], axes_out[t.id] = arr, ax
            i += 1
            continue
        group = images[i:i + n]
        if len(group) < n or any("c" in a for _, a in group):
            raise InputError(
                f"model input {t.id!r} wants {n} channel(s): give {n} grey images or one image with {n} channels "
                f"(given: {', '.join(names[i:i + n])})"
            )
        shapes = {g.shape for g, _ in group}
        if len(shapes) != 1:
            raise InputError(f"images {', '.join(names[i:i + n])} differ in size {sorted(shapes)}; model input {t.id!r} needs them equal")
        arrays[t.id] = group[0][0] if n == 1 else np.stack([g for g, _ in group])
        axes_out[t.id] = ax if n == 1 else "c" + ax
        i += n
    if i != len(images):
        raise InputError(f"the model has inputs {wanted}; {len(images)} image(s) given ({', '.join(names)}): too many")
    return arrays, axes_out
