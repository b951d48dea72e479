"""Reading deepImageJ's macros: the steps a package lists, each macro's code recognised among
the known macros and its numbers read, and the step that runs it.

Packages made with deepImageJ (2020-2022) list ImageJ macros in their rdf, under
``config.deepimagej.prediction.preprocess`` / ``.postprocess``::

    preprocess:  [{spec: "ij.IJ::runMacroFile", kwargs: per_sample_scale_range.ijm}]
    postprocess: [{spec: null}]

The ``.ijm`` file is attached to the package and is what deepImageJ ran; its numbers are in its
text, never in the rdf's kwargs (the package's spec ops may even disagree with it). dlmodel
reads each macro, recognises the common ones of deepimagej/imagej-macros by their code (not by
their file name, so an edited macro with other numbers is honoured and a macro that does more
is not claimed) and runs a numpy equivalent that reproduces what ImageJ 1.x computes
(:mod:`.imagej`, :mod:`.watershed`, :mod:`.resize`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ...errors import SpecError
from .imagej import INTENSITY_RUNNERS, IJImage, Runner, ij_str
from .resize import run_stardist
from .watershed import run_contours

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
        image = IJImage.of(x, axes)
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
                f"scale the first plane's [min, max] to [0, 1], then subtract {ij_str(p['mean'])} and divide by "
                f"{ij_str(p['std'])} (the macro's {_g(p['mean'])} and {_g(p['std'])} as ImageJ passes them)"),
            "zero_mean_unit_variance": lambda: (
                "subtract the mean, divide by the sample std (n - 1) of the image's first plane, "
                "both to 4 decimals as ImageJ passes them"),
            "fixed_zero_mean_unit_variance": lambda: (
                f"subtract {ij_str(p['mean'])}, divide by {ij_str(p['std'])} "
                f"(the macro's {_g(p['mean'])} and {_g(p['std'])} as ImageJ passes them)"),
            "scale_linear": lambda: f"multiply by {ij_str(p['gain'])}, add {ij_str(p['offset'])}",
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
                steps.append(step_from_text(name, stage, read_macro(Path(root), name)))
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


def read_macro(root: Path, name: str) -> str:
    """The text of macro ``name`` of the package in ``root``: inside the package, at most
    :func:`max_macro_bytes`; a one-line SpecError naming the macro otherwise."""
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


# kind -> its numpy equivalent
_RUN: Dict[str, Runner] = {**INTENSITY_RUNNERS, "contours_to_instances": run_contours, "stardist_2d": run_stardist}
