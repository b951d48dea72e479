"""StarDist: star-convex objects from an object probability and ray distances.

A StarDist network outputs, per pixel (or per ``grid`` pixels), the probability that an object
is centred there (channel 0) and the distances to its boundary along ``n_rays`` rays (channels
1..n_rays). StarDist's own non-maximum suppression keeps the best of the overlapping candidate
polygons (polyhedra in 3D) and paints them into a label image. dlmodel runs it with the
``stardist`` package (``pip install 'dlmodel[stardist]'``) on the whole stitched output, as
StarDist's own ``predict_instances`` does after tiling, so no object is cut or doubled at a
tile seam.

Two ways a package asks for it:

- spec 0.5 ``stardist_postprocessing`` (kwargs grid, prob_threshold, nms_threshold, b, n_rays;
  3D: anisotropy, overlap_label), computed as bioimageio.core 0.11 computes it;
- the packages StarDist's own bioimage.io exporter writes: one raw output (probability +
  distances) and thresholds in ``config.stardist``. Their exported network returns its output at
  the input's resolution (StarDist upsamples its grid for deepImageJ), so the grid is read off
  the rdf's output shape, not off the training configuration.
"""
from __future__ import annotations

import importlib.util
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence

import numpy as np

from ..errors import EngineError, SpecError, one_line
from . import number

# the family registry (dlmodel.families): its recipe method, its spec 0.5 op, and its config
# (written by StarDist's own exporter) before macros
METHODS = ("stardist",)
LABEL_OPS = ("stardist_postprocessing",)
PRECEDENCE = 0

if TYPE_CHECKING:
    from ..spec import ModelSpec

# StarDist's own default border (pixels at the output's resolution where no centre is kept)
DEFAULT_B = 2

# 3D ray sets a package may name (``config.stardist.config.rays_json``); StarDist's own
# rays_from_json evaluates the name as Python, so the name is looked up here instead
_RAYS = ("Rays_GoldenSpiral", "Rays_Octo", "Rays_Tetra", "Rays_Cartesian", "Rays_SubDivide")


def recipe(spec: "ModelSpec") -> Optional[Dict[str, Any]]:
    """The instance recipe of a package written by StarDist's exporter (``config.stardist``
    with thresholds), or None."""
    cfg = spec.config.get("stardist")
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("thresholds"), Mapping):
        return None
    out = _raw_output(spec)
    thresholds = cfg["thresholds"]
    net = cfg.get("config") if isinstance(cfg.get("config"), Mapping) else {}
    n_rays = int(out.n_channels or 0) - 1 - int(net.get("n_classes") or 0)
    if n_rays < 3:
        raise SpecError(f"config.stardist: output {out.id!r} has {out.n_channels} channel(s); StarDist needs a "
                        "probability and at least 3 ray distances")
    spatial = [a for a in out.axes if a.type == "space"]
    found: Dict[str, Any] = {
        "method": "stardist", "output": out.id,
        "prob_threshold": number(thresholds.get("prob"), "config.stardist.thresholds.prob", 0, 1),
        "nms_threshold": number(thresholds.get("nms"), "config.stardist.thresholds.nms", 0, 1),
        "n_rays": n_rays, "grid": [_grid(spec, a) for a in spatial],
        "from": "config.stardist",
    }
    if len(spatial) == 3:
        rays = net.get("rays_json")
        if isinstance(rays, Mapping):
            found["rays"] = {"name": str(rays.get("name")), "kwargs": dict(rays.get("kwargs") or {})}
        anisotropy = net.get("anisotropy")
        if anisotropy is not None:
            found["anisotropy"] = [float(a) for a in anisotropy]
    return found


def complete(spec: "ModelSpec") -> "ModelSpec":
    """StarDist's exporter writes its normalisation into the rdf: nothing to add."""
    return spec


def _raw_output(spec: "ModelSpec") -> Any:
    """The output holding probability + distances: the only output, or the one named by StarDist."""
    if len(spec.outputs) == 1:
        return spec.outputs[0]
    for o in spec.outputs:
        if (o.n_channels or 0) > 3:
            return o
    raise SpecError("config.stardist: no output with a probability and ray distances")


def _grid(spec: "ModelSpec", axis: Any) -> int:
    """Input pixels per output pixel along an output axis (1 unless the network subsamples)."""
    if axis.ref is None:
        return 1
    ref = spec.tensor(axis.ref[0]).axis(axis.ref[1])
    factor = Fraction(ref.scale / axis.scale).limit_denominator(64)  # output pixels per input pixel
    return max(1, round(1 / factor)) if factor < 1 else 1


def labels(output: np.ndarray, axes: str, recipe: Mapping[str, Any]) -> np.ndarray:
    """Objects from a whole StarDist output (axes letters: channel and 2 or 3 space axes)."""
    unknown = set(recipe) - {"method", "output", "prob_threshold", "nms_threshold", "n_rays", "grid", "b", "rays",
                             "anisotropy", "overlap_label", "from", "min_size", "fill_holes", "discard_border"}
    if unknown:
        raise SpecError(f"unknown key(s) in the StarDist recipe: {', '.join(sorted(unknown))}")
    space = "".join(a for a in axes if a in "zyx")
    if "c" not in axes or len(space) not in (2, 3):
        raise SpecError(f"a StarDist output needs a channel axis and 2 or 3 space axes; this one has axes {axes!r}")
    x = np.moveaxis(np.asarray(output), [axes.index(a) for a in space + "c"], range(len(space) + 1))
    return _labels(x[..., 0], x[..., 1:], recipe)


def _labels(prob: np.ndarray, dist: np.ndarray, recipe: Mapping[str, Any]) -> np.ndarray:
    from . import require

    sd = require("stardist", "stardist", "StarDist's non-maximum suppression")
    ndim = prob.ndim
    grid = tuple(number(g, "the StarDist grid", 1, 64, integer=True) for g in recipe.get("grid") or (1,) * ndim)
    if len(grid) != ndim:
        raise SpecError(f"StarDist grid {grid} does not fit a {ndim}D output")
    n_rays = recipe.get("n_rays")
    if n_rays is not None and int(n_rays) != dist.shape[-1]:
        raise SpecError(f"the StarDist output has {dist.shape[-1]} distance channels; the package says n_rays={n_rays}")
    b = _border(recipe.get("b", DEFAULT_B))
    shape = tuple(s * g for s, g in zip(prob.shape, grid))
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    # as StarDist's own predict does: no distance below 1e-3 (its polygon code needs them positive)
    dist = np.maximum(np.float32(1e-3), np.asarray(dist, dtype=np.float32))
    kwargs = dict(grid=grid, b=b, prob_thresh=number(recipe["prob_threshold"], "the StarDist probability threshold", 0, 1),
                  nms_thresh=number(recipe["nms_threshold"], "the StarDist overlap (NMS) threshold", 0, 1))
    rays = _rays(sd, recipe, dist.shape[-1]) if ndim == 3 else None
    try:
        if ndim == 2:
            points, probi, disti = sd.non_maximum_suppression(dist, prob, **kwargs)
            result = sd.polygons_to_label(disti, points, prob=probi, shape=shape)
        else:
            points, probi, disti = sd.non_maximum_suppression_3d(dist, prob, rays, **kwargs)
            result = sd.polyhedron_to_label(disti, points, rays=rays, prob=probi, shape=shape,
                                            overlap_label=recipe.get("overlap_label"), verbose=False)
    except Exception as e:
        raise EngineError(f"StarDist's non-maximum suppression failed on an output of shape {prob.shape}: "
                          f"{one_line(e)}") from e
    return np.asarray(result, dtype=np.int32)


def _border(b: Any) -> Any:
    if isinstance(b, (list, tuple)):
        return tuple(tuple(int(v) for v in pair) for pair in b)
    return int(b)


def _rays(sd: Any, recipe: Mapping[str, Any], n: int) -> Any:
    """The 3D rays: the package's named ray set (only StarDist's own classes), else StarDist's
    default, a golden spiral with the package's anisotropy."""
    import stardist.rays3d as rays3d

    named = recipe.get("rays")
    if named:
        name = str(named.get("name"))
        if name not in _RAYS:
            raise SpecError(f"StarDist ray set {name!r} is not one of StarDist's own ({', '.join(_RAYS)})")
        rays = getattr(rays3d, name)(**dict(named.get("kwargs") or {}))
    else:
        anisotropy = recipe.get("anisotropy")
        rays = sd.Rays_GoldenSpiral(n, anisotropy=None if anisotropy is None else tuple(anisotropy))
    if len(rays) != n:
        raise SpecError(f"the StarDist output has {n} distance channels; its ray set has {len(rays)} rays")
    return rays


def op_labels(op: Any, x: np.ndarray, axis_ids: Sequence[str]) -> np.ndarray:
    """spec 0.5 ``stardist_postprocessing`` on a whole output (batch, channel and space axes):
    labels with the tensor's axes, one channel, space axes ``grid`` times the output's."""
    kw = op.kwargs
    space = [a for a in axis_ids if a in ("z", "y", "x")]
    if len(space) != len(kw.grid):
        raise SpecError(f"stardist_postprocessing: grid {tuple(kw.grid)} does not fit space axes {', '.join(space)}")
    if "channel" not in axis_ids:
        raise SpecError("stardist_postprocessing: the output has no channel axis (probability + distances)")
    recipe = {"prob_threshold": kw.prob_threshold, "nms_threshold": kw.nms_threshold, "n_rays": kw.n_rays,
              "grid": list(kw.grid), "b": kw.b}
    if len(space) == 3:
        recipe.update(anisotropy=list(kw.anisotropy), overlap_label=kw.overlap_label)
    order = ["batch"] if "batch" in axis_ids else []
    moved = np.moveaxis(x, [axis_ids.index(a) for a in order + space + ["channel"]], range(len(order) + len(space) + 1))
    batch = moved if order else moved[None]
    stacked = np.stack([_labels(s[..., 0], s[..., 1:], recipe) for s in batch])[..., None]  # (b, *space, 1)
    if not order:
        stacked = stacked[0]
    back = order + space + ["channel"]
    return np.moveaxis(stacked, range(len(back)), [axis_ids.index(a) for a in back])


def describe(recipe: Mapping[str, Any]) -> str:
    grid = recipe.get("grid") or []
    sub = f", grid {'x'.join(str(g) for g in grid)}" if any(int(g) != 1 for g in grid) else ""
    return (f"StarDist: non-maximum suppression of output {recipe.get('output')!r} (probability + "
            f"{recipe.get('n_rays')} rays{sub}), probability threshold {recipe['prob_threshold']:.3g}, overlap "
            f"threshold {recipe['nms_threshold']:.3g} ({recipe.get('from', 'the package')})"
            + ("" if importlib.util.find_spec("stardist") else "; needs pip install 'dlmodel[stardist]'"))

