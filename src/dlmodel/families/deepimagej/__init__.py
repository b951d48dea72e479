"""deepImageJ's ImageJ macros: recognised, and run as numpy code that gives ImageJ's numbers.

Packages made with deepImageJ (2020-2022) list ImageJ macros in their rdf
(``config.deepimagej.prediction``); each ``.ijm`` file is what deepImageJ ran. dlmodel
recognises the common macros of deepimagej/imagej-macros by their code and runs a numpy
equivalent that reproduces what ImageJ 1.x computes. One module per concern:

- :mod:`.macros`: reading a package's macros, recognising their code, reading their numbers
  (:func:`macro_steps`, :func:`recognise`, :class:`MacroStep`);
- :mod:`.imagej`: ImageJ's numbers (number-to-string conversion, float32 arithmetic, statistics,
  histograms, the image a macro sees) and the intensity macros on them;
- :mod:`.watershed`: Contours2InstanceSegmentation.ijm with MorphoLibJ's distance-transform
  watershed;
- :mod:`.resize`: StarDist2D_Post-processing.ijm with ImageJ's bicubic resize;
- :mod:`.family`: the family interface ``dlmodel.families`` calls (``complete``, ``recipe``,
  ``labels``, ``describe``) and :func:`unrecognised`.

Checked against ImageJ 1.53t and MorphoLibJ 1.6.1 by ``benchmarks/deepimagej_macros_check.py``;
docs/deepimagej-macros.md has the measured differences.
"""
from .family import complete, describe, labels, recipe, unrecognised
from .imagej import ij_str
from .macros import MacroStep, macro_steps, read_macro, recognise, step_from_text
from .resize import stardist_inputs
from .watershed import distance_transform_watershed

# the family registry (dlmodel.families): its recipe method, no spec 0.5 op, after the
# exporters' own configs, and the macros it recognises but does not run
METHODS = ("deepimagej",)
LABEL_OPS = ()
PRECEDENCE = 1
left_out = unrecognised

__all__ = ["LABEL_OPS", "METHODS", "MacroStep", "PRECEDENCE", "complete", "describe", "distance_transform_watershed", "ij_str", "labels", "macro_steps",
           "read_macro", "recipe", "recognise", "stardist_inputs", "step_from_text", "unrecognised", "left_out"]
