"""deepImageJ's ImageJ macros (being split into one module per concern; see macros.py)."""
from .macros import (  # noqa: F401
    MacroStep, _ij_str, _read_macro, complete, describe, distance_transform_watershed, labels, macro_steps, recipe,
    recognise, resize_bicubic, stardist_inputs, step_from_text, unrecognised,
)
