"""deepImageJ's ImageJ macros: recognised, and run as numpy code that gives ImageJ's numbers.

Packages made with deepImageJ (2020-2022) list ImageJ macros in their rdf, under
``config.deepimagej.prediction.preprocess`` / ``.postprocess``::

    preprocess:  [{spec: "ij.IJ::runMacroFile", kwargs: per_sample_scale_range.ijm}]
    postprocess: [{spec: null}]

The ``.ijm`` file is attached to the package and is what deepImageJ ran; its numbers are in its
text, never in the rdf's kwargs (the package's spec ops may even disagree with it). dlmodel
reads each macro, recognises the common ones of deepimagej/imagej-macros by their code (not by
their file name, so an edited macro with other numbers is honoured and a macro that does more
is not claimed) and runs a numpy equivalent that reproduces what ImageJ 1.x computes:

- a number passed to an ImageJ command (``run("Subtract...", "value="+mean)``) goes through the
  macro language's number-to-string conversion: 4 decimals (``0.23325787`` -> ``0.2333``);
- ``Divide...`` multiplies by ``(float)(1/value)``; pixel arithmetic is float32;
- ``getStatistics`` gives the sample std (n - 1) of the current plane; ``getHistogram`` on a
  32-bit (or 16-bit) plane has its bins over that plane's [min, max] and ``values[i]`` is a bin's
  lower edge;
- in a stack, a command run without the ``stack`` keyword changes only the current (first)
  plane, unless the image is a composite shown in composite mode (then every plane).

The ImageJ image a macro sees: one per sample (``b``), its planes the channels, slices and
frames of the sample in ImageJ's stack order (channel fastest). ``uint8`` (and ``bool``) is an
8-bit image, ``uint16`` a 16-bit image, anything else a 32-bit (float32) image.
Checked against ImageJ 1.53t and MorphoLibJ 1.6.1 by ``benchmarks/deepimagej_macros_check.py``;
docs/deepimagej-macros.md has the measured differences.
"""
from __future__ import annotations

import heapq
import math
import os
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ...errors import InputError, SpecError

MACRO_SPEC = "ij.IJ::runMacroFile"
STAGES = ("preprocess", "postprocess")

# kind -> the spec op it mirrors
EQUIVALENT_OPS = {
    "per_sample_scale_range": "scale_range",
    "percentile_normalization": "scale_range",
    "zero_mean_unit_variance": "zero_mean_unit_variance",
    "fixed_zero_mean_unit_variance": "fixed_zero_mean_unit_variance",
    "scale_linear": "scale_linear",
    "binarize": "binarize",
}
OBJECT_KINDS = ("contours_to_instances", "stardist_2d")


# --------------------------------------------------------------------------------------------
# Recognition: a macro's code (comments, whitespace, semicolons and print() calls aside)
# against templates of the known macros, whose numbers are read into params.
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))
    |(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<ph>\$[A-Za-z_]\w*)
    |(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<name>[A-Za-z_]\w*)
    |(?P<op>==|!=|<=|>=|&&|\|\||\+\+|--|\+=|-=|\*=|/=|.)
    """,
    re.VERBOSE | re.DOTALL,
)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"

Token = Tuple[str, str]


def _tokens(text: str) -> List[Token]:
    """The macro's tokens without whitespace, comments, ';' and ``print(...)`` statements
    (they change no pixel); strings lose their quotes (``'xy'`` is ``"xy"``).

    Linear in the text: an unclosed ``/*`` comments out the rest (as in ImageJ) instead of
    being searched for its end again from every later ``/*``."""
    out: List[Token] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "op"
        value = m.group()
        if kind in ("space", "comment") or value == ";":
            continue
        if kind == "str":
            value = value[1:-1]
        out.append((kind, value))
    return _drop_prints(out)


def _drop_prints(tokens: List[Token]) -> List[Token]:
    out: List[Token] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == ("name", "print") and i + 1 < len(tokens) and tokens[i + 1] == ("op", "("):
            depth, j = 0, i + 1
            while j < len(tokens):
                depth += {"(": 1, ")": -1}.get(tokens[j][1], 0) if tokens[j][0] == "op" else 0
                j += 1
                if depth == 0:
                    break
            i = j
            continue
        out.append(tokens[i])
        i += 1
    return out


def _string_pattern(template: str) -> "re.Pattern[str]":
    """A template string with ``{name}`` number placeholders, as an anchored regex."""
    parts = re.split(r"\{(\w+)\}", template)
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_NUMBER})" for i, p in enumerate(parts))
    return re.compile(rx + r"\Z")


def _match(template: Sequence[Token], tokens: Sequence[Token]) -> Optional[Dict[str, float]]:
    """Captured numbers when ``tokens`` is ``template`` up to its placeholders, else None.

    ``$name`` matches a number, optionally signed; a string with ``{name}`` matches strings of
    that form; other numbers match numbers of equal value."""
    found: Dict[str, float] = {}
    i = 0
    for kind, value in template:
        if i >= len(tokens):
            return None
        tk, tv = tokens[i]
        if kind == "ph":
            sign = 1.0
            if tk == "op" and tv in "+-" and i + 1 < len(tokens) and tokens[i + 1][0] == "num":
                sign = -1.0 if tv == "-" else 1.0
                i += 1
                tk, tv = tokens[i]
            if tk != "num":
                return None
            name = value[1:]
            number = sign * float(tv)
            if found.setdefault(name, number) != number:
                return None
        elif kind == "str" and "{" in value:
            m = _string_pattern(value).match(tv) if tk == "str" else None
            if m is None:
                return None
            for name, text in m.groupdict().items():
                if found.setdefault(name, float(text)) != float(text):
                    return None
        elif kind == "num":
            if tk != "num" or float(tv) != float(value):
                return None
        elif (kind, value) != (tk, tv):
            return None
        i += 1
    return found if i == len(tokens) else None


# ---- the macros of deepimagej/imagej-macros (bioimage.io/ and the top folder), as code ----

_PSR_PERCENT = """
min_percentile = $min_percentile; max_percentile = $max_percentile;
min_percentile = min_percentile/100; max_percentile = max_percentile/100;
"""
# the first version (February 2021) wrote fractions
_PSR_FRACTION = "min_percentile = $min_fraction; max_percentile = $max_fraction;"
_PSR_RGB_HEAD = """
flag_rgb = !is("grayscale");
if (flag_rgb==1){ run("Make Composite"); run("Stack to Images");
  run("Concatenate...", "  title=stack image1=[Red] image2=[Green] image3=[Blue]"); }
"""
_PSR_RGB_TAIL = """
if (flag_rgb==1){
  run("Properties...",
      "channels=3 slices=1 frames=1 pixel_width=1.0000 pixel_height=1.0000 voxel_depth=1.0000"); }
"""
# only for print(); the November 2020 version has no such lines
_PSR_AXES = """
getDimensions(width, height, channels, slices, frames);
if (slices==1){ axes = 'xy'; } else { axes = 'xyz'; }
"""
_PSR_BODY = """
function percentile_normalization(min_percentile, max_percentile, nBins){
  cumHist = newArray(nBins);
  getDimensions(width, height, channels, slices, frames);
  for (s = 1; s < slices+1; s++) {
    setSlice(s); getHistogram(values, counts, nBins);
    for (i = 0; i < nBins; i++) { cumHist[i] = cumHist[i] + counts[i]; }
  }
  for (i = 1; i < nBins; i++) { cumHist[i] = cumHist[i] + cumHist[i-1]; }
  normCumHist = newArray(nBins);
  for (i = 0; i < nBins; i++){ normCumHist[i] = cumHist[i]/cumHist[nBins - 1]; }
  target = min_percentile; i = 0;
  do { i = i + 1; } while (normCumHist[i] < target)
  mi = values[i];
  target = max_percentile;
  do { i = i + 1; } while (normCumHist[i] < target)
  ma = values[i];
  diff = ma-mi+1e-20;
  run("32-bit");
  run("Subtract...", "value="+mi+" stack");
  run("Divide...", "value="+diff+" stack");
}
percentile_normalization(min_percentile, max_percentile, nBins);
"""

_ZMUV = """
run("32-bit");
getStatistics(_, mean, min, max, std,_);
run("Subtract...", "value="+mean);
run("Divide...", "value="+std);
"""

_FIXED_ZMUV = """
paramMean = $mean; paramStd = $std;
run("32-bit");
run("Subtract...", "value="+paramMean);
run("Divide...", "value="+paramStd);
"""

# MeanNormalization.ijm, also fixed_zero_mean_unit_variance.ijm before February 2021
_MIN_MAX_FIXED_ZMUV = """
run("32-bit");
getStatistics(_, _, min, max, _, _);
run("Subtract...", "value=" + min);
diff = max - min + 1e-20
run("Divide...", "value=" + diff);
setMinAndMax(0, 1);
paramMean = $mean; paramStd = $std;
run("Subtract...", "value="+paramMean);
run("Divide...", "value="+paramStd);
"""

# PercentileNormalization.ijm (deepImageJ 1.x): one plane, and cumHist[0] is values[0]
_PERCENTILE_NORMALIZATION = """
function percentile_normalization(){
  nBins = $bins;
  getHistogram(values, counts, nBins);
  cumHist = newArray(nBins);
  cumHist[0] = values[0];
  for (i = 1; i < nBins; i++){ cumHist[i] = counts[i] + cumHist[i-1]; }
  normCumHist = newArray(nBins);
  for (i = 0; i < nBins; i++){ normCumHist[i] = cumHist[i]/cumHist[nBins-1]; }
  target = $min_fraction; i = 0;
  do { i = i + 1; } while (normCumHist[i] < target)
  mi = values[i];
  target = $max_fraction; i = 0;
  do { i = i + 1; } while (normCumHist[i] < target)
  ma = values[i];
  diff = ma-mi+1e-20;
  run("32-bit");
  run("Subtract...", "value="+mi);
  run("Divide...", "value="+diff);
}
percentile_normalization();
"""

_SCALE_LINEAR = """
gain = $gain; offset = $offset;
run("32-bit");
run("Multiply...", "value=" + gain);
run("Add...", "value=" + offset);
"""

_BINARIZE = """
getStatistics(_, _, min, max, _, _);
optimalThreshold = $threshold;
setThreshold(optimalThreshold, max);
setOption("BlackBackground", true);
run("Convert to Mask", "method=Default background=Dark black");
"""
_BINARIZE_DIVIDE = 'run("Divide...", "value=255");'

_CONTOURS = """
rename("output");
Stack.setDisplayMode("grayscale");
setThreshold($threshold, $upper);
setOption("BlackBackground", true);
run("Convert to Mask", "method=Mean background=Dark black");
run("Divide...", "value=255.000 stack");
setSlice(1); run("Multiply...", "value=0 slice");
setSlice(2); run("Multiply...", "value=1 slice");
setSlice(3); run("Multiply...", "value=2 slice");
run("Z Project...", "projection=[Max Intensity]");
rename("argmax");
close( "output" )
run("Select Label(s)", "label(s)=1");
close("argmax")
selectWindow("argmax-keepLabels");
run("Fill Holes (Binary/Gray)");
close("argmax-keepLabels");
run("Multiply...", "value=255.000");
run("Distance Transform Watershed",
    "distances=[Borgefors (3,4)] output=[32 bits] normalize dynamic={dynamic} connectivity={connectivity}");
close("argmax-keepLabels-fillHoles");
run("Label Size Filtering", "operation=Greater_Than size={min_size}");
close("argmax-keepLabels-fillHoles-dist-watershed");
selectWindow("argmax-keepLabels-fillHoles-dist-watershed-sizeFilt");
rename( "segmented-cells" );
run("Set Label Map", "colormap=[Golden angle] background=White shuffle");
resetMinAndMax();
"""

_STARDIST = """
name=getTitle();
grid = $grid; probThresh = $prob_threshold; nmsThresh = $nms_threshold;
getDimensions(width, height, channels, slices, frames);
run("Scale...", "x=" + grid + " y=" + grid + " z=1.0 width=" + grid*width + " height=" + grid*height
    + " depth=" + maxOf(channels, slices) + " interpolation=Bicubic average process create title=upsampled");
selectWindow(name); close();
selectWindow("upsampled"); rename(name);
run("Make Substack...", "channels=1");
rename("scores");
run("Fire");
selectWindow(name);
run("Delete Slice", "delete=channel");
selectWindow(name);
run("Properties...", "channels=" + maxOf(channels, slices) - 1
    + " slices=1 frames=1 pixel_width=1.0000 pixel_height=1.0000 voxel_depth=1.0000");
rename("distances");
run("royal");
run("Command From Macro",
    "command=[de.csbdresden.stardist.StarDist2DNMS], args=['prob':'scores', 'dist':'distances', 'probThresh':'"
    + probThresh + "', 'nmsThresh':'" + nmsThresh
    + "', 'outputType':'Both', 'excludeBoundary':'{exclude_boundary}', 'roiPosition':'Stack', 'verbose':'false'], process=[false]");
"""


def _variants() -> List[Tuple[str, Dict[str, Any], List[Token]]]:
    """(kind, fixed params, template tokens) for every known version of every macro."""
    out: List[Tuple[str, Dict[str, Any], str]] = []
    for head, as_percent in ((_PSR_PERCENT, True), (_PSR_FRACTION, False)):
        for rgb in (False, True):
            for axes in ("", _PSR_AXES):
                text = (head + "nBins = $bins;" + (_PSR_RGB_HEAD if rgb else "") + axes + _PSR_BODY
                        + (_PSR_RGB_TAIL if rgb else ""))
                out.append(("per_sample_scale_range", {"rgb_branch": rgb, "as_percent": as_percent}, text))
    out.append(("zero_mean_unit_variance", {}, _ZMUV))
    out.append(("fixed_zero_mean_unit_variance", {}, _FIXED_ZMUV))
    out.append(("min_max_fixed_zero_mean_unit_variance", {}, _MIN_MAX_FIXED_ZMUV))
    out.append(("percentile_normalization", {}, _PERCENTILE_NORMALIZATION))
    out.append(("scale_linear", {}, _SCALE_LINEAR))
    out.append(("binarize", {"foreground": 255}, _BINARIZE))
    out.append(("binarize", {"foreground": 1}, _BINARIZE + _BINARIZE_DIVIDE))
    out.append(("contours_to_instances", {}, _CONTOURS))
    out.append(("stardist_2d", {}, _STARDIST))
    return [(kind, fixed, _tokens(text)) for kind, fixed, text in out]


_TEMPLATES = _variants()


def recognise(text: str) -> Tuple[Optional[str], Dict[str, Any]]:
    """(kind, params) for a macro's text; ``(None, {})`` when it is not one dlmodel knows.

    The code must be one of the known macros' (any version of deepimagej/imagej-macros' file)
    up to comments, whitespace, semicolons, ``print`` calls and the numbers it sets, which are
    read into params. A macro with one more (or one other) operation is not recognised.

    >>> recognise('run("32-bit"); getStatistics(_, mean, min, max, std,_);'
    ...           'run("Subtract...", "value="+mean); run("Divide...", "value="+std);')
    ('zero_mean_unit_variance', {})
    >>> recognise('run("Invert");')
    (None, {})
    """
    tokens = _tokens(text)
    for kind, fixed, template in _TEMPLATES:
        found = _match(template, tokens)
        if found is not None:
            return kind, _params(kind, fixed, found)
    return None, {}


MAX_BINS = 65536  # ImageJ's own 16-bit histogram; a macro's nBins = 2e7 would take 800 MB per image


def _params(kind: str, fixed: Mapping[str, Any], found: Mapping[str, float]) -> Dict[str, Any]:
    p = _unchecked_params(kind, fixed, found)
    _check_params(p)
    for key in ("bins", "dynamic", "connectivity", "exclude_boundary"):
        if key in p:
            p[key] = int(p[key])
    return p


def _check_params(p: Mapping[str, Any]) -> None:
    """The macro's numbers within what ImageJ's own commands take (they size memory and decide
    objects): one-line SpecError naming the number."""
    from .. import number

    limits = {"bins": (2, MAX_BINS, True), "min_percentile": (0, 100, False), "max_percentile": (0, 100, False),
              "threshold": (None, None, False), "upper": (None, None, False), "dynamic": (0, 1e9, False),
              "connectivity": (4, 26, True), "min_size": (0, 1e9, False), "grid": (1, 64, True),
              "prob_threshold": (0, 1, False), "nms_threshold": (0, 1, False), "exclude_boundary": (0, 1e6, True)}
    for key, (lo, hi, integer) in limits.items():
        if key in p:
            number(p[key], f"the macro's {key}", lo, hi, integer)
    if "min_percentile" in p and not p["min_percentile"] < p["max_percentile"]:
        raise SpecError(f"the macro's percentiles {p['min_percentile']:g}..{p['max_percentile']:g} are not increasing")


def _unchecked_params(kind: str, fixed: Mapping[str, Any], found: Mapping[str, float]) -> Dict[str, Any]:
    p: Dict[str, Any] = {}
    if kind == "per_sample_scale_range":
        if fixed["as_percent"]:
            lo, hi = found["min_percentile"], found["max_percentile"]
            p.update(min_percentile=lo, max_percentile=hi, min_target=lo / 100, max_target=hi / 100)
        else:
            lo, hi = found["min_fraction"], found["max_fraction"]
            p.update(min_percentile=lo * 100, max_percentile=hi * 100, min_target=lo, max_target=hi)
        p.update(bins=found["bins"], rgb_branch=fixed["rgb_branch"])
    elif kind == "percentile_normalization":
        lo, hi = found["min_fraction"], found["max_fraction"]
        p.update(min_percentile=lo * 100, max_percentile=hi * 100, min_target=lo, max_target=hi,
                 bins=found["bins"])
    elif kind == "binarize":
        p.update(threshold=found["threshold"], foreground=fixed["foreground"])
    elif kind == "contours_to_instances":
        p.update(threshold=found["threshold"], upper=found["upper"], dynamic=found["dynamic"],
                 connectivity=found["connectivity"], min_size=found["min_size"])
    elif kind == "stardist_2d":
        p.update(grid=found["grid"], prob_threshold=found["prob_threshold"], nms_threshold=found["nms_threshold"],
                 exclude_boundary=found["exclude_boundary"])
    else:
        p.update(found)
    return p


# --------------------------------------------------------------------------------------------
# The steps of a package
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacroStep:
    """One entry of ``config.deepimagej.prediction``: a macro (recognised or not) or another
    spec (a Java class), with what dlmodel knows of it."""

    file: str
    stage: str
    kind: Optional[str]
    params: Mapping[str, Any] = field(hash=False)
    makes_objects: bool
    equivalent_op: Optional[str]

    def apply(self, x: np.ndarray, axes: str, composite: Optional[bool] = None) -> np.ndarray:
        """The macro's result on a whole image or output ``x`` whose axes are ``axes`` (letters
        in x's order, e.g. ``byxc``, ``bcyx``, ``yx``, ``zyx``; b batch, c channel, z, t).

        Pre-processing (and the intensity macros) return a new float32 array with x's axes, as
        ImageJ's 32-bit image; ``binarize`` a uint8 mask (ImageJ's 8-bit mask: 0/1, or 0/255 in
        the macro's 2021 version). Instance steps return int32 labels numbered 1..N per sample,
        with the axes of x less ``c`` (StarDist2D_Post-processing: y and x ``grid`` times
        larger, as the macro upsamples).

        ``composite``: whether the ImageJ image is a composite in composite mode, where ImageJ
        applies a command without ``stack`` to every plane (else to the first plane only).
        Default: for post-processing, whether there are several channels (deepImageJ builds its
        outputs with IJ.createHyperStack, a composite then); for pre-processing, no."""
        if self.kind is None:
            raise SpecError(f"{self.file}: not recognised; dlmodel does not run it")
        x = np.asarray(x)
        image = _Image.of(x, axes)
        if composite is None:
            composite = self.stage == "postprocess" and image.channels > 1
        return _RUN[self.kind](image, dict(self.params), bool(composite), self.file)

    def summary(self) -> str:
        """One line on what the step does (or that dlmodel does not run it)."""
        p = self.params
        if self.kind is None:
            return f"{self.file}: not recognised; dlmodel does not run it"
        text = {
            "per_sample_scale_range": lambda: (
                f"percentiles {_g(p['min_percentile'])}-{_g(p['max_percentile'])} from a {p['bins']}-bin histogram "
                "(deepImageJ's numbers, not numpy's percentiles)"),
            "percentile_normalization": lambda: (
                f"percentiles {_g(p['min_percentile'])}-{_g(p['max_percentile'])} from a {p['bins']}-bin histogram "
                "of the first plane, ImageJ's numbers (its first cumulative bin is the first bin's value, not "
                "its count, as in the macro); applied to the first plane"),
            "min_max_fixed_zero_mean_unit_variance": lambda: (
                f"scale the first plane's [min, max] to [0, 1], then subtract {_ij_str(p['mean'])} and divide by "
                f"{_ij_str(p['std'])} (the macro's {_g(p['mean'])} and {_g(p['std'])} as ImageJ passes them)"),
            "zero_mean_unit_variance": lambda: (
                "subtract the mean, divide by the sample std (n - 1) of the image's first plane, "
                "both to 4 decimals as ImageJ passes them"),
            "fixed_zero_mean_unit_variance": lambda: (
                f"subtract {_ij_str(p['mean'])}, divide by {_ij_str(p['std'])} "
                f"(the macro's {_g(p['mean'])} and {_g(p['std'])} as ImageJ passes them)"),
            "scale_linear": lambda: f"multiply by {_ij_str(p['gain'])}, add {_ij_str(p['offset'])}",
            "binarize": lambda: (
                f"mask of values >= {_g(p['threshold'])} (up to the first plane's maximum), "
                f"foreground {p['foreground']}"),
            "contours_to_instances": lambda: (
                f"objects from background/foreground/contour channels: foreground >= {_g(p['threshold'])} "
                f"and not contour, holes filled, MorphoLibJ distance-transform watershed (Borgefors 3-4, "
                f"dynamic {p['dynamic']}, {p['connectivity']}-connected), objects over {_g(p['min_size'])} pixels"),
            "stardist_2d": lambda: (
                f"StarDist objects: probability and distances upsampled x{_g(p['grid'])} (ImageJ bicubic), "
                f"StarDist's NMS with prob_thresh {_g(p['prob_threshold'])}, nms_thresh {_g(p['nms_threshold'])}, "
                f"border {p['exclude_boundary']}"),
        }[self.kind]()
        return f"{self.file}: {text}"


def _g(v: float) -> str:
    return f"{v:g}"


def macro_steps(config: Mapping[str, Any], root: Path) -> Tuple[MacroStep, ...]:
    """The steps of ``config['deepimagej']['prediction']`` (pre-processing then
    post-processing, each in order), each macro file read from ``root`` and recognised.

    ``{spec: null}`` entries are nothing; an entry whose spec is not ``ij.IJ::runMacroFile``
    (a Java class or jar) is a step of kind None. Empty tuple when there are none. A listed
    macro file that is missing: SpecError naming it."""
    dij = config.get("deepimagej") if isinstance(config, Mapping) else None
    prediction = dij.get("prediction") if isinstance(dij, Mapping) else None
    if not isinstance(prediction, Mapping):
        return ()
    steps: List[MacroStep] = []
    for stage in STAGES:
        entries = prediction.get(stage) or []
        if isinstance(entries, Mapping):
            entries = [entries]
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise SpecError(f"config.deepimagej.prediction.{stage}: entry {entry!r} is not a mapping")
            spec = entry.get("spec")
            if spec is None:
                continue
            kwargs = entry.get("kwargs")
            names = [str(k) for k in (kwargs if isinstance(kwargs, (list, tuple)) else [kwargs]) if k is not None]
            if str(spec).strip() != MACRO_SPEC:
                label = f"{spec}" + (f" ({', '.join(names)})" if names else "")
                steps.append(MacroStep(label, stage, None, MappingProxyType({}), False, None))
                continue
            if not names:
                raise SpecError(f"config.deepimagej.prediction.{stage}: {MACRO_SPEC} names no macro file")
            for name in names:
                steps.append(step_from_text(name, stage, _read_macro(Path(root), name)))
    return tuple(steps)


def step_from_text(file: str, stage: str, text: str) -> MacroStep:
    """The step for a macro text (``file`` names it in messages)."""
    try:
        kind, params = recognise(text)
    except SpecError as e:
        raise SpecError(f"deepImageJ macro {file}: {e}") from e
    return MacroStep(file, stage, kind, MappingProxyType(params), kind in OBJECT_KINDS,
                     EQUIVALENT_OPS.get(kind) if kind else None)


def max_macro_bytes() -> int:
    """The largest macro read (``DLMODEL_MAX_MACRO_BYTES``, 1 MiB; deepImageJ's are a few KB)."""
    return int(os.environ.get("DLMODEL_MAX_MACRO_BYTES", 1 << 20))


def _read_macro(root: Path, name: str) -> str:
    path = (root / name).resolve()
    base = root.resolve()
    if base != path and base not in path.parents:
        raise SpecError(f"deepImageJ macro {name}: outside the package")
    try:
        size = path.stat().st_size
        if size > max_macro_bytes():
            raise SpecError(f"deepImageJ macro {name} is {size} bytes, more than the limit of {max_macro_bytes()} "
                            "(DLMODEL_MAX_MACRO_BYTES)")
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as e:
        raise SpecError(f"deepImageJ macro {name}: listed in config.deepimagej but not in the package") from e
    except OSError as e:
        raise SpecError(f"deepImageJ macro {name}: cannot be read ({e.strerror})") from e


# --------------------------------------------------------------------------------------------
# ImageJ's numbers
# --------------------------------------------------------------------------------------------


def _java_int(x: float) -> int:
    """Java's ``(int)x``: truncation, saturating, NaN -> 0."""
    if math.isnan(x):
        return 0
    if x >= 2147483647:
        return 2147483647
    if x <= -2147483648:
        return -2147483648
    return int(x)


def _ij_str(x: float) -> str:
    """A number as the ImageJ macro language writes it into a string (``"value="+x``):
    ImageJ 1.53t Interpreter.toString, i.e. IJ.d2s(x, 4, 9) without trailing zeros.

    >>> _ij_str(0.23325787), _ij_str(255.0), _ij_str(1e-20), _ij_str(12345.678901)
    ('0.2333', '255', '1.0000E-20', '12345.6789')
    """
    x = float(x)
    if _java_int(x) == x:
        return str(_java_int(x))
    if math.isnan(x) or math.isinf(x):
        return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")
    magnitude = math.ceil(math.log10(abs(x)) + 0.223 * math.pow(10, -9))
    decimals = 9 - magnitude
    if decimals < 0 or magnitude < 4 + 1 - 9:
        return _java_sci(x, 4)
    if decimals > 4:
        decimals = max(4, decimals - 9 + 4)
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _java_sci(x: float, digits: int) -> str:
    """``DecimalFormat("0.0000E0")``: ``1.2346E-6``."""
    mantissa, exponent = f"{x:.{digits}E}".split("E")
    return f"{mantissa}E{int(exponent)}"


def _ij_value(x: float) -> float:
    """The number an ImageJ command receives for ``"value="+x``."""
    return float(_ij_str(x))


def _f32(v: float) -> np.float32:
    with np.errstate(over="ignore"):
        return np.float32(v)


@dataclass
class _Image:
    """A batch of ImageJ images: planes (b, n, y, x), n in ImageJ's stack order (channel
    fastest, then slice, then frame), and the way back to the caller's axes."""

    planes: np.ndarray
    bits: int
    channels: int
    slices: int
    frames: int
    axes: str
    shape: Tuple[int, ...]

    @classmethod
    def of(cls, x: np.ndarray, axes: str) -> "_Image":
        axes = str(axes)
        if len(axes) != x.ndim:
            raise InputError(f"axes {axes!r} do not fit an array of {x.ndim} dimensions {x.shape}")
        if len(set(axes)) != len(axes) or not set(axes) <= set("btzcyx") or not {"y", "x"} <= set(axes):
            raise InputError(f"axes {axes!r}: a deepImageJ macro needs y and x, and takes only b, t, z, c besides")
        if x.dtype == np.uint8 or x.dtype == np.bool_:
            arr, bits = x.astype(np.uint8, copy=False), 8
        elif x.dtype == np.uint16:
            arr, bits = x, 16
        elif x.dtype.kind in "iuf":
            arr, bits = x.astype(np.float32, copy=False), 32
        else:
            raise InputError(f"a deepImageJ macro takes numbers, not {x.dtype} values")
        order = "btzcyx"
        full = arr
        for a in order:
            if a not in axes:
                full = full[..., None]
        present = axes + "".join(a for a in order if a not in axes)
        full = np.transpose(full, [present.index(a) for a in order])
        b, t, z, c, y, xs = full.shape
        return cls(full.reshape(b, t * z * c, y, xs), bits, c, z, t, axes, tuple(x.shape))

    def back(self, planes: np.ndarray) -> np.ndarray:
        """Planes (b, n, y, x) of any dtype, back in the caller's axes."""
        b, n, y, x = planes.shape
        full = planes.reshape(b, self.frames, self.slices, self.channels, y, x)
        order = "btzcyx"
        kept = [a for a in order if a in self.axes]
        full = full.reshape([full.shape[order.index(a)] for a in kept])
        return np.ascontiguousarray(np.transpose(full, [kept.index(a) for a in self.axes]))

    def back_without_c(self, labels: np.ndarray) -> np.ndarray:
        """Per-sample labels (b, y, x) in the caller's axes less ``c``."""
        out_axes = self.axes.replace("c", "")
        full = labels
        order = "btzyx"
        full = full.reshape(labels.shape[0], 1, 1, labels.shape[1], labels.shape[2])
        kept = [a for a in order if a in out_axes]
        full = full.reshape([full.shape[order.index(a)] for a in kept])
        return np.ascontiguousarray(np.transpose(full, [kept.index(a) for a in out_axes]))


def _to_float(planes: np.ndarray) -> np.ndarray:
    """``run("32-bit")``: a new float32 copy (8- and 16-bit values kept)."""
    return planes.astype(np.float32, copy=True)


def _scope(n: int, stack: bool, composite: bool) -> slice:
    """The planes an ImageJ command changes: all with ``stack`` (or in a composite shown as
    one), else the current (first) plane."""
    return slice(None) if (stack or composite or n == 1) else slice(0, 1)


def _subtract(planes: np.ndarray, value: float, where: slice) -> None:
    """``run("Subtract...", "value=v")`` on float32 planes, in place on the copy."""
    planes[:, where] = planes[:, where] + _f32(-value)


def _add(planes: np.ndarray, value: float, where: slice) -> None:
    planes[:, where] = planes[:, where] + _f32(value)


def _multiply(planes: np.ndarray, value: float, where: slice) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        planes[:, where] = planes[:, where] * _f32(value)


def _divide(planes: np.ndarray, value: float, where: slice) -> None:
    """ImageMath's Divide on a 32-bit image: multiply by ``(float)(1/value)``."""
    with np.errstate(divide="ignore"):
        inverse = 1.0 / value if value != 0 else math.copysign(math.inf, value)
    _multiply(planes, inverse, where)


def _statistics(plane: np.ndarray, bits: int) -> Tuple[int, float, float, float, float]:
    """ImageJ's ``getStatistics`` of one plane: (n, mean, sample std, min, max). NaN and
    infinite 32-bit values are left out, as ImageJ leaves them out."""
    if bits == 32:
        v = plane[np.isfinite(plane)].astype(np.float64)
    else:
        v = plane.astype(np.float64).ravel()
    n = v.size
    if n == 0:
        return 0, math.nan, 0.0, math.nan, math.nan
    s, s2 = float(v.sum()), float(np.square(v).sum())
    var = (n * s2 - s * s) / n
    std = math.sqrt(var / (n - 1.0)) if (var > 0.0 and n > 1) else 0.0
    return n, s / n, std, float(v.min()), float(v.max())


def _histogram(plane: np.ndarray, bits: int, n_bins: int) -> Tuple[np.ndarray, np.ndarray]:
    """ImageJ's ``getHistogram(values, counts, nBins)`` of one plane: bin lower edges (ImageJ
    adds the bin width n times) and counts."""
    if bits == 8 and n_bins == 256:
        counts = np.bincount(plane.ravel(), minlength=256).astype(np.float64)
        return np.arange(256, dtype=np.float64), counts
    if bits == 16 and n_bins == 65536:
        raise InputError("a 65536-bin histogram of a 16-bit image gives the macro no bin values; ImageJ fails")
    if bits == 32:
        v = plane[np.isfinite(plane)].astype(np.float64)
        lo, hi = (float(v.min()), float(v.max())) if v.size else (math.inf, -math.inf)
        scale = n_bins / (hi - lo) if hi != lo else math.inf
    else:
        if bits == 8:  # converted to 16-bit, histogram over [0, 256)
            v = plane.astype(np.float64).ravel()
            lo, hi = 0.0, 256.0
        else:
            v = plane.astype(np.float64).ravel()
            lo, hi = float(v.min()), float(v.max())
        width = (hi - lo) / n_bins
        scale = 1.0 / width if width != 0 else math.inf
    if math.isinf(scale):  # one value: Java's (int)(inf*0) is 0
        index = np.zeros(v.size, dtype=np.int64)
    else:
        index = np.minimum((scale * (v - lo)).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)[:n_bins].astype(np.float64)
    inc = (hi - lo) / n_bins
    values = np.empty(n_bins, dtype=np.float64)
    value = lo
    for i in range(n_bins):
        values[i] = value
        value += inc
    return values, counts


# --------------------------------------------------------------------------------------------
# The intensity macros
# --------------------------------------------------------------------------------------------


def _run_scale_range(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """per_sample_scale_range.ijm: cumulative 256-bin histogram of stack planes 1..(number of
    z slices), the first bin index from 1 whose normalised cumulative count reaches the lower
    target, then (going on from there) the upper; ``values[i]`` are bin lower edges; then
    ``(x - mi) / (ma - mi + 1e-20)`` on every plane, both numbers as ImageJ passes them."""
    # p["rgb_branch"]: the macro's branch for RGB Color images, which dlmodel never hands it
    # (is("grayscale") is true for 8/16/32-bit images and composites alike)
    n_bins = int(p["bins"])
    if n_bins < 2:
        raise InputError(f"{file}: nBins = {n_bins}; ImageJ's search needs at least 2 bins")
    out = _to_float(image.planes)
    for b in range(image.planes.shape[0]):
        cum = np.zeros(n_bins, dtype=np.float64)
        values = np.zeros(n_bins)
        for s in range(image.slices):  # setSlice(s) for s = 1..slices: stack positions, not z
            values, counts = _histogram(image.planes[b, s], image.bits, n_bins)
            cum = cum + counts
        cum = np.cumsum(cum)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = cum / cum[-1]
        i = _walk(norm, 0, p["min_target"], file)
        mi = values[i]
        i = _walk(norm, i, p["max_target"], file)
        ma = values[i]
        diff = ma - mi + 1e-20
        sample = out[b : b + 1]
        _subtract(sample, _ij_value(mi), slice(None))
        _divide(sample, _ij_value(diff), slice(None))
    return image.back(out)


def _walk(norm: np.ndarray, i: int, target: float, file: str) -> int:
    """``do { i = i + 1; } while (normCumHist[i] < target)``."""
    while True:
        i += 1
        if i >= norm.size:
            raise InputError(f"{file}: the histogram search runs past bin {norm.size - 1} (ImageJ fails: "
                             "almost every pixel has the image's maximum)")
        if not norm[i] < target:
            return i


def _run_zmuv(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """zero_mean_unit_variance.ijm: mean and sample std of each sample's first plane; the
    first plane (every plane in a composite) minus the mean, divided by the std."""
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    for b in range(out.shape[0]):
        _, mean, std, _, _ = _statistics(out[b, 0], 32)
        _subtract(out[b : b + 1], _ij_value(mean), where)
        _divide(out[b : b + 1], _ij_value(std), where)
    return image.back(out)


def _run_fixed_zmuv(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    _fixed_zmuv(out, p, where)
    return image.back(out)


def _fixed_zmuv(out: np.ndarray, p: Dict[str, Any], where: slice) -> None:
    """(x - mean) / std with the macro's numbers, as ImageJ passes them, in place."""
    _subtract(out, _ij_value(p["mean"]), where)
    _divide(out, _ij_value(p["std"]), where)


def _run_min_max_fixed_zmuv(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """MeanNormalization.ijm: (x - min) / (max - min + 1e-20) with the first plane's min and
    max, then (x - mean) / std with the macro's numbers; each as ImageJ passes it."""
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    for b in range(out.shape[0]):
        _, _, _, lo, hi = _statistics(out[b, 0], 32)
        _subtract(out[b : b + 1], _ij_value(lo), where)
        _divide(out[b : b + 1], _ij_value(hi - lo + 1e-20), where)
    _fixed_zmuv(out, p, where)
    return image.back(out)


def _run_percentile_normalization(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """PercentileNormalization.ijm: the histogram of the first plane, cumulated from
    ``values[0]`` (the macro's slip) instead of ``counts[0]``, both searches from bin 1."""
    n_bins = int(p["bins"])
    if n_bins < 2:
        raise InputError(f"{file}: nBins = {n_bins}; ImageJ's search needs at least 2 bins")
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    for b in range(out.shape[0]):
        values, counts = _histogram(image.planes[b, 0], image.bits, n_bins)
        counts = counts.copy()
        counts[0] = values[0]
        cum = np.cumsum(counts)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = cum / cum[-1]
        mi = values[_walk(norm, 0, p["min_target"], file)]
        ma = values[_walk(norm, 0, p["max_target"], file)]
        _subtract(out[b : b + 1], _ij_value(mi), where)
        _divide(out[b : b + 1], _ij_value(ma - mi + 1e-20), where)
    return image.back(out)


def _run_scale_linear(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    out = _to_float(image.planes)
    where = _scope(out.shape[1], False, composite)
    _multiply(out, _ij_value(p["gain"]), where)
    _add(out, _ij_value(p["offset"]), where)
    return image.back(out)


def _run_binarize(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """binarize.ijm: 255 where threshold <= value <= the first plane's maximum, on every plane
    (Convert to Mask); the 2023 version then divides by 255, on the first plane only unless
    the image stays a composite (an 8-bit one does; a 16/32-bit one becomes grayscale)."""
    planes = image.planes
    out = np.zeros(planes.shape, dtype=np.uint8)
    for b in range(planes.shape[0]):
        _, _, _, _, top = _statistics(planes[b, 0], image.bits)
        if image.bits == 8:
            v = planes[b].astype(np.float64)
            lo, hi = float(p["threshold"]), top
        else:
            v = planes[b].astype(np.float32)
            lo, hi = _f32(p["threshold"]), _f32(top)
        out[b] = np.where((v >= lo) & (v <= hi), 255, 0)
    if p["foreground"] == 1:
        where = _scope(out.shape[1], False, composite and image.bits == 8)
        out[:, where] = out[:, where] // 255  # ByteProcessor: round(v * (1/255))
    return image.back(out)


# --------------------------------------------------------------------------------------------
# Contours2InstanceSegmentation.ijm: ImageJ, then MorphoLibJ 1.6.1 (its algorithms as written)
# --------------------------------------------------------------------------------------------

_INIT, _INQUEUE, _WSHED = -1, -3, 0


def _run_contours(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """Per sample: masks ``threshold <= v <= upper`` of planes 1..3 times 0, 1, 2 (planes
    beyond keep 1), their maximum; label 1 (foreground, no contour) kept, holes filled
    (4-connected background), MorphoLibJ's Distance Transform Watershed, labels over
    ``min_size`` pixels kept."""
    n = image.planes.shape[1]
    if n < 3:
        raise InputError(f"{file}: needs 3 channels (background, foreground, contours); the output has {n}")
    if sum(d > 1 for d in (image.channels, image.slices, image.frames)) > 1:
        raise InputError(f"{file}: ImageJ's Z Project takes a hyperstack slice by slice here; "
                         "dlmodel runs this macro on 2D outputs only")
    if p["connectivity"] not in (4, 8):
        raise InputError(f"{file}: connectivity must be 4 or 8, not {p['connectivity']}")
    planes = image.planes.astype(np.float32, copy=False)
    lo, hi = _f32(p["threshold"]), _f32(p["upper"])
    result = []
    for b in range(planes.shape[0]):
        masks = ((planes[b] >= lo) & (planes[b] <= hi)).astype(np.uint8)
        masks[0] *= 0
        masks[2] *= 2
        argmax = masks.max(axis=0)
        from scipy import ndimage as ndi

        keep = ndi.binary_fill_holes(argmax == 1)
        labels = distance_transform_watershed(keep, int(p["dynamic"]), int(p["connectivity"]))
        result.append(_relabel(_size_filter(labels, float(p["min_size"]))))
    return image.back_without_c(np.stack(result))


def _chamfer_34(fg: np.ndarray) -> np.ndarray:
    """MorphoLibJ's float chamfer distance with Borgefors weights (3, 4), not normalised:
    distance to the nearest background pixel, pixels outside the image ignored; inf where a
    component has no background at all."""
    h, w = fg.shape
    big = np.int64(1) << 40
    d = np.where(fg, big, 0).astype(np.int64)
    ramp = 3 * np.arange(w, dtype=np.int64)
    for y in range(h):
        row = d[y].copy()
        if y > 0:
            up = d[y - 1]
            row = np.minimum(row, up + 3)
            row[1:] = np.minimum(row[1:], up[:-1] + 4)
            row[:-1] = np.minimum(row[:-1], up[1:] + 4)
        row = np.minimum.accumulate(row - ramp) + ramp  # row[x] = min(row[x], row[x-1] + 3)
        d[y] = np.where(fg[y], row, 0)
    for y in range(h - 1, -1, -1):
        row = d[y].copy()
        if y < h - 1:
            down = d[y + 1]
            row = np.minimum(row, down + 3)
            row[:-1] = np.minimum(row[:-1], down[1:] + 4)
            row[1:] = np.minimum(row[1:], down[:-1] + 4)
        rev = row[::-1]
        rev = np.minimum.accumulate(rev - ramp) + ramp  # row[x] = min(row[x], row[x+1] + 3)
        d[y] = np.where(fg[y], rev[::-1], 0)
    out = d.astype(np.float32)
    out[d >= big // 2] = np.inf
    return out


def distance_transform_watershed(fg: np.ndarray, dynamic: int = 1, connectivity: int = 4) -> np.ndarray:
    """MorphoLibJ 1.6.1's "Distance Transform Watershed" (Borgefors 3-4, normalised, 32-bit
    output) on a 2D binary image, as its code computes it: the inverted distance map, its
    extended minima (dynamic) as markers, minima imposed the way MorphoLibJ's float path does,
    and its priority-queue flooding with watershed lines, restricted to the foreground.
    Returns int32 labels (0 background and lines)."""
    from scipy import ndimage as ndi
    from skimage.morphology import local_minima, reconstruction

    fg = np.asarray(fg, dtype=bool)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    footprint = ndi.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    dist = _chamfer_34(fg) / np.float32(3)
    top = np.float32(dist[fg].max())
    inverted = top - (dist - np.float32(0))  # FloatProcessor.invert over the display range [0, max]
    marker = inverted + np.float32(dynamic)
    rec = reconstruction(marker.astype(np.float64), inverted.astype(np.float64), method="erosion", footprint=footprint)
    minima = local_minima(rec, connectivity=1 if connectivity == 4 else 2, allow_borders=True)
    # imposeMinima with int get/set on a float image: float bits + 1, and 255 as float bits
    bits = inverted.view(np.int32)
    mask = np.where(minima, np.float32(0), (bits + 1).view(np.float32))
    seed = np.where(minima, np.float32(0), np.array([255], dtype=np.int32).view(np.float32)[0])
    imposed = reconstruction(np.maximum(seed, mask).astype(np.float64), mask.astype(np.float64),
                             method="erosion", footprint=footprint)
    markers, _ = ndi.label(minima, structure=footprint)
    return _flood(imposed, markers, fg, connectivity)


def _flood(values: np.ndarray, markers: np.ndarray, fg: np.ndarray, connectivity: int) -> np.ndarray:
    """MarkerControlledWatershedTransform2D.applyWithPriorityQueueAndDams, with a mask."""
    h, w = values.shape
    # flat index i = y * w + x; the Java code walks x (outer) then y (inner)
    val = array("d", values.ravel().tolist())
    seed = array("l", markers.ravel().tolist())
    inside = array("b", fg.ravel().astype(np.int8).tolist())
    tab = array("l", [_INIT]) * (h * w)
    if connectivity == 4:
        steps = ((-1, 0), (0, -1), (1, 0), (0, 1))
    else:
        steps = ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1))

    def neighbours(i: int) -> List[int]:
        y, x = divmod(i, w)
        return [(y + dy) * w + x + dx for dx, dy in steps if 0 <= x + dx < w and 0 <= y + dy < h]

    heap: List[Tuple[float, int, int]] = []
    seq = 0
    seeds = np.flatnonzero((markers > 0).T.ravel() & fg.T.ravel())  # column-major order
    for k in seeds.tolist():
        x, y = divmod(k, h)
        i = y * w + x
        for j in neighbours(i):
            if seed[j] == 0 and tab[j] != _INQUEUE:
                heapq.heappush(heap, (val[j], seq, j))
                seq += 1
                tab[j] = _INQUEUE
        tab[i] = int(seed[i])
    while heap:
        _, _, i = heapq.heappop(heap)
        found: List[int] = []
        waiting: List[int] = []
        for j in neighbours(i):
            t = tab[j]
            if t == _INIT and inside[j]:
                waiting.append(j)
            elif t > 0 and t not in found:
                found.append(t)
        if len(found) == 1:
            tab[i] = found[0]
            for j in waiting:
                tab[j] = _INQUEUE
                heapq.heappush(heap, (val[j], seq, j))
                seq += 1
        elif len(found) > 1:
            tab[i] = _WSHED
    out = np.frombuffer(tab, dtype=np.int64 if tab.itemsize == 8 else np.int32).reshape(h, w)
    return np.where(out > 0, out, 0).astype(np.int32)


def _size_filter(labels: np.ndarray, min_size: float) -> np.ndarray:
    """MorphoLibJ's Label Size Filtering, Greater_Than: labels with more than min_size pixels."""
    counts = np.bincount(labels.ravel())
    keep = counts > min_size
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 1..N in order of first appearance (row by row), 0 stays 0."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    order = [v for _, v in sorted(zip(first.tolist(), values.tolist())) if v != 0]
    lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


# --------------------------------------------------------------------------------------------
# StarDist2D_Post-processing.ijm: ImageJ's bicubic upsampling, then StarDist's own NMS
# --------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """ImageProcessor.cubic (Catmull-Rom, a = 0.5), operation by operation."""
    a = 0.5
    x = np.abs(x)
    near = x * x * (x * (-a + 2.0) + (a - 3.0)) + 1.0
    far = -a * x * x * x + 5.0 * a * x * x - 8.0 * a * x + 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def resize_bicubic(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """ImageJ 1.53t FloatProcessor.resize(width, height) with bicubic interpolation: the
    sampling grid ImageJ uses (centres, plus a quarter of the scale), Catmull-Rom inside and
    ImageJ's clamped bilinear within a pixel of the border. float32 result."""
    src = np.asarray(plane, dtype=np.float32)
    h, w = src.shape
    if (w, h) == (width, height):
        return src.copy()
    if w == 1 or h == 1:
        raise InputError("ImageJ does not interpolate an image one pixel wide or high")
    x_scale, y_scale = width / w, height / h
    cx = width / 2.0 + (x_scale / 4.0 if width != w else 0.0)
    cy = height / 2.0 + (y_scale / 4.0 if height != h else 0.0)
    xs = (np.arange(width) - cx) / x_scale + w / 2.0
    ys = (np.arange(height) - cy) / y_scale + h / 2.0
    X, Y = np.meshgrid(xs, ys)
    u0, v0 = np.floor(X).astype(np.int64), np.floor(Y).astype(np.int64)
    edge = (u0 <= 0) | (u0 >= w - 2) | (v0 <= 0) | (v0 >= h - 2)
    out = np.empty((height, width), dtype=np.float64)
    src64 = src.astype(np.float64)
    inner = ~edge
    if inner.any():
        x0, y0, uu, vv = X[inner], Y[inner], u0[inner], v0[inner]
        q = np.zeros(x0.shape)
        for j in range(4):
            v = vv - 1 + j
            p = np.zeros(x0.shape)
            for i in range(4):
                u = uu - 1 + i
                p = p + src64[v, u] * _cubic(x0 - u)
            q = q + p * _cubic(y0 - v)
        out[inner] = q
    if edge.any():
        out[edge] = _bilinear(src64, X[edge], Y[edge])
    return out.astype(np.float32)


def _bilinear(src: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ImageProcessor.getBilinearInterpolatedPixel on a FloatProcessor (NaN-aware)."""
    h, w = src.shape
    out = np.zeros(x.shape)  # the background value outside [-1, w) x [-1, h)
    ok = (x >= -1) & (x < w) & (y >= -1) & (y < h)
    x, y = x[ok].copy(), y[ok].copy()
    x[x < 0.0] = 0.0
    x[x >= w - 1.0] = w - 1.001
    y[y < 0.0] = 0.0
    y[y >= h - 1.0] = h - 1.001
    xb, yb = x.astype(np.int64), y.astype(np.int64)
    xf, yf = x - xb, y - yb
    ll, lr = src[yb, xb], src[yb, xb + 1]
    ul, ur = src[yb + 1, xb], src[yb + 1, xb + 1]
    upper = np.where(np.isnan(ul) & (xf >= 0.5), ur, np.where(np.isnan(ur) & (xf < 0.5), ul, ul + xf * (ur - ul)))
    lower = np.where(np.isnan(ll) & (xf >= 0.5), lr, np.where(np.isnan(lr) & (xf < 0.5), ll, ll + xf * (lr - ll)))
    out[ok] = np.where(np.isnan(lower) & (yf >= 0.5), upper,
                       np.where(np.isnan(upper) & (yf < 0.5), lower, lower + yf * (upper - lower)))
    return out


def stardist_inputs(image_planes: np.ndarray, grid: float) -> Tuple[np.ndarray, np.ndarray]:
    """What the macro hands StarDist2DNMS for one sample's planes (n, y, x): the probability
    ("scores", plane 1) and distances (planes 2..n as (y, x, n_rays)), upsampled by ``grid``."""
    n, h, w = image_planes.shape
    new_w, new_h = _java_int(grid * w), _java_int(grid * h)
    up = np.stack([resize_bicubic(p, new_w, new_h) for p in image_planes])
    return up[0], np.moveaxis(up[1:], 0, -1)


def _run_stardist(image: _Image, p: Dict[str, Any], composite: bool, file: str) -> np.ndarray:
    """The probability and ray distances (planes 2..n) upsampled x grid with ImageJ's bicubic,
    then StarDist's own NMS (the Python package in place of the Fiji plugin the macro calls)."""
    from .. import require

    n = image.planes.shape[1]
    if n < 4:
        raise InputError(f"{file}: needs the object probability and at least 3 ray distances; "
                         f"the output has {n} plane(s)")
    if sum(d > 1 for d in (image.channels, image.slices, image.frames)) > 1:
        raise InputError(f"{file}: dlmodel runs this macro on 2D outputs (one channel axis) only")
    sd = require("stardist", "stardist", f"{file} (StarDist's non-maximum suppression)")
    planes = image.planes.astype(np.float32, copy=False)
    result = []
    for b in range(planes.shape[0]):
        prob, dist = stardist_inputs(planes[b], float(p["grid"]))
        points, probi, disti = sd.non_maximum_suppression(
            dist, prob, grid=(1, 1), b=int(p["exclude_boundary"]), nms_thresh=float(p["nms_threshold"]),
            prob_thresh=float(p["prob_threshold"]))
        result.append(sd.polygons_to_label(disti, points, shape=prob.shape, prob=probi).astype(np.int32))
    return image.back_without_c(np.stack(result))


_RUN: Dict[str, Callable[[_Image, Dict[str, Any], bool, str], np.ndarray]] = {
    "per_sample_scale_range": _run_scale_range,
    "zero_mean_unit_variance": _run_zmuv,
    "fixed_zero_mean_unit_variance": _run_fixed_zmuv,
    "scale_linear": _run_scale_linear,
    "min_max_fixed_zero_mean_unit_variance": _run_min_max_fixed_zmuv,
    "percentile_normalization": _run_percentile_normalization,
    "binarize": _run_binarize,
    "contours_to_instances": _run_contours,
    "stardist_2d": _run_stardist,
}


# --------------------------------------------------------------------------------------------
# The family protocol (dlmodel.families): what dlmodel does with a package's macros
# --------------------------------------------------------------------------------------------


def _covered(spec: Any, step: MacroStep) -> bool:
    """Whether the rdf's own ops already do what an intensity macro does (then the rdf's op
    runs: the package's test tensors follow the rdf)."""
    tensors = spec.inputs[:1] if step.stage == "preprocess" else spec.outputs[:1]
    ops = [op.id for t in tensors for op in (t.preprocessing if step.stage == "preprocess" else t.postprocessing)]
    return step.equivalent_op is not None and step.equivalent_op in ops


def complete(spec: Any) -> Any:
    """The package's deepImageJ steps in the view: ``spec.macros`` holds those dlmodel runs (an
    intensity macro the rdf's ops do not already do: pre-processing of the first input before
    the rdf's own, post-processing of the first output after them); instance macros become the
    package's instance recipe (:func:`recipe`); every step gets a note saying what is done
    with it, an unrecognised one what is left out."""
    import dataclasses

    steps = macro_steps(spec.config, spec.root)
    if not steps:
        return spec
    run: List[MacroStep] = []
    notes: List[str] = []
    for step in steps:
        where = "its input" if step.stage == "preprocess" else "its output"
        if step.kind is None:
            notes.append(f"deepImageJ {step.stage}ing {step.summary()}: {where} is used without it")
        elif step.makes_objects:
            notes.append(f"deepImageJ {step.stage}ing {step.summary()} (the package's own step for objects)")
        elif _covered(spec, step):
            notes.append(f"deepImageJ {step.stage}ing {step.file}: the rdf's {step.equivalent_op} does the same and "
                         f"runs (the package's test tensors follow the rdf); deepImageJ's macro would give: "
                         f"{step.summary().split(': ', 1)[1]}")
        else:
            run.append(step)
            notes.append(f"deepImageJ {step.stage}ing {step.summary()} (run by dlmodel on the whole image)")
    return dataclasses.replace(spec, macros=tuple(run), notes=spec.notes + tuple(notes))


def unrecognised(spec: Any) -> List[str]:
    """The package's deepImageJ steps that dlmodel does not run, one line each."""
    return [s.summary() for s in macro_steps(spec.config, spec.root) if s.kind is None]


def recipe(spec: Any) -> Optional[Dict[str, Any]]:
    """The package's instance recipe when its deepImageJ post-processing makes objects."""
    for step in macro_steps(spec.config, spec.root):
        if step.makes_objects:
            return {"method": "deepimagej", "output": spec.outputs[0].id, "macro": step.file, "kind": step.kind,
                    "params": dict(step.params), "from": "config.deepimagej"}
    return None


def labels(output: np.ndarray, axes: str, recipe: Mapping[str, Any]) -> np.ndarray:
    """Objects from a whole output by the package's instance macro (recipe from :func:`recipe`)."""
    step = MacroStep(str(recipe["macro"]), "postprocess", str(recipe["kind"]), MappingProxyType(dict(recipe["params"])),
                     True, None)
    return step.apply(output, axes)


def describe(recipe: Mapping[str, Any]) -> str:
    step = MacroStep(str(recipe["macro"]), "postprocess", str(recipe["kind"]), MappingProxyType(dict(recipe["params"])),
                     True, None)
    extra = "; needs pip install 'dlmodel[stardist]'" if recipe["kind"] == "stardist_2d" else ""
    return f"deepImageJ macro {step.summary()} (config.deepimagej){extra}"
