"""Fine-tune a zoo model on your own annotated images and write the result as a new zoo package.

``finetune(model, images, labels, out)`` reads image + label-image pairs (same file name in two
folders, as ``example_pipelines/make_training_data.cppipe`` saves them), derives training
targets from the instance labels to fit the model's own output, trains the package's trainable
weights (``pytorch_state_dict`` through the trust gate, or TorchScript) on random crops of a
size the model accepts, with flips and rotations, keeps the weights that score best on a
held-out part of the user's images (F1 at IoU 0.5 through the same prediction and instance step
as ``Model.predict`` / ``Model.labels``), re-tunes the package's instance recipe on the held-out
images and writes a new package with :func:`dlmodel.packaging.package` (validated, test tensors
reproduced by every weight format, ``parent`` and the training facts in ``config``).

Supported outputs (others are refused with one line):

- one channel with ``sigmoid`` post-processing: foreground probability. Targets: the objects,
  with the pixels where two objects touch set to background, so that a threshold separates them.
- three channels with ``softmax`` post-processing named (or used by the package's seeded
  watershed recipe as) background / interior / boundary, like the default model. Targets: the
  inner boundary of each object is ``boundary``, the rest of it ``interior``.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage as ndi

from . import instances, io
from .errors import InputError, SpecError
from .outputs import check_replaceable

LOGGER = logging.getLogger("dlmodel")
PathLike = Union[str, os.PathLike]

# label files may carry one of these after the image's name (CellProfiler's SaveImages appends
# what the user types; these are the common ones)
LABEL_SUFFIXES = ("", "_labels", "_label", "_masks", "_mask", "_objects")
BOUNDARY_WEIGHT = 3.0  # boundaries are rare and decide the splits (as the default model was trained)


# ---------------------------------------------------------------------------------------- data
@dataclass
class Pair:
    """One annotated image: the file names, the image (channels first, ``cyx``) and its labels."""

    image_path: Path
    labels_path: Path
    image: np.ndarray
    labels: np.ndarray


def pair_files(images: PathLike, labels: PathLike) -> List[Tuple[Path, Path]]:
    """Image files and their label files, paired by name (``a.tif`` with ``a.tif``, or with
    ``a_labels.tif``, ``a_mask.tif`` ...). Every image needs its labels and every label file
    its image: a file left over is refused, naming it."""
    folders = {"images": Path(images), "labels": Path(labels)}
    for what, folder in folders.items():
        if not folder.is_dir():
            raise InputError(f"{what} folder {folder} does not exist (or is not a folder)")
    image_files = io.find_images([str(folders["images"])])
    label_files = io.find_images([str(folders["labels"])])
    if not image_files:
        raise InputError(f"no images in {folders['images']} (tif, png, jpg or npy)")
    by_stem: Dict[str, Path] = {}
    for p in label_files:
        if p.stem in by_stem:
            raise InputError(f"labels {p} and {by_stem[p.stem]} have the same name; keep one")
        by_stem[p.stem] = p
    pairs: List[Tuple[Path, Path]] = []
    used = set()
    for img in image_files:
        match = next((by_stem[img.stem + s] for s in LABEL_SUFFIXES if img.stem + s in by_stem
                      and img.stem + s not in used), None)
        if match is None:
            raise InputError(f"image {img} has no label image in {folders['labels']} (expected {img.stem}.tif "
                             f"or {img.stem}_labels.tif)")
        used.add(match.stem)
        pairs.append((img, match))
    left = sorted(set(by_stem) - used)
    if left:
        raise InputError(f"labels {by_stem[left[0]]} have no image of the same name in {folders['images']}")
    return pairs


def read_pair(image_path: Path, labels_path: Path, channels: int) -> Pair:
    """Read one pair; the image as ``cyx`` with the model's channel count (colour made grey for a
    one-channel model), the labels as int32. Bad files are refused with one line naming them."""
    img, axes = io.read_image(image_path)
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[np.newaxis]
    elif img.ndim == 3:
        axes = axes or ("yxc" if img.shape[-1] <= 4 else "cyx")
        if axes.replace("c", "") != "yx":
            raise InputError(f"image {image_path}: axes {axes!r}; fine-tuning takes 2D images (yx, or with channels)")
        img = np.moveaxis(img, axes.index("c"), 0)
        if channels == 1 and img.shape[0] > 1:
            img = img.astype(np.float32).mean(axis=0, keepdims=True)  # colour made grey, as predict's inputs
    else:
        raise InputError(f"image {image_path} has shape {img.shape}; fine-tuning takes 2D images")
    if img.shape[0] != channels:
        raise InputError(f"image {image_path} has {img.shape[0]} channel(s); the model takes {channels}")
    lab, _ = io.read_image(labels_path)
    lab = np.squeeze(np.asarray(lab))
    if lab.ndim != 2 or lab.dtype.kind not in "iub":
        raise InputError(f"labels {labels_path}: not a label image (shape {lab.shape}, {lab.dtype}); save objects "
                         "as integer labels (uint16), one number per object")
    if lab.shape != img.shape[1:]:
        raise InputError(f"labels {labels_path} are {lab.shape[0]}x{lab.shape[1]}; image {image_path.name} is "
                         f"{img.shape[1]}x{img.shape[2]}")
    if not lab.any():
        raise InputError(f"labels {labels_path} have no objects; annotate at least one (or leave the pair out)")
    if lab.dtype.kind == "i" and lab.min() < 0:
        raise InputError(f"labels {labels_path} have negative numbers; use 0 for background and 1..N for objects")
    return Pair(image_path, labels_path, img, exact_labels(lab))


def exact_labels(labels: np.ndarray) -> np.ndarray:
    """Objects numbered 1..N as int32, one number per distinct value of ``labels`` (0 stays
    background): exact for any integer type, where a cast would wrap (int64 labels 1 and 2**32+1
    would become one object) or overflow (2**31 and above).

    >>> exact_labels(np.array([[0, 2**32 + 1], [1, 2**40]], dtype=np.int64))
    array([[0, 2],
           [1, 3]], dtype=int32)
    """
    values, inverse = np.unique(labels, return_inverse=True)
    numbered = inverse.reshape(labels.shape).astype(np.int32)
    return numbered if values[0] == 0 else numbered + 1


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Targets:
    """How labels become the model's training targets, and the loss that compares them."""

    kind: str  # "foreground" | "classes"
    channels: Tuple[int, ...] = ()  # for classes: the channel index of background, interior, boundary
    description: str = ""

    def make(self, labels: np.ndarray) -> np.ndarray:
        """The target for one label image: float32 foreground (yx) or int64 channel index (yx)."""
        if self.kind == "foreground":
            return ((labels > 0) & ~touching(labels)).astype(np.float32)
        from skimage.segmentation import find_boundaries

        bg, interior, boundary = self.channels
        out = np.full(labels.shape, bg, np.int64)
        out[labels > 0] = interior
        out[find_boundaries(labels, mode="inner") & (labels > 0)] = boundary
        return out

    def loss(self, logits: Any, target: Any, mask: Any) -> Any:
        """Mean loss over the pixels ``mask`` marks (image pixels outside the output's halo)."""
        import torch.nn.functional as F

        if self.kind == "foreground":
            per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
        else:
            weight = logits.new_ones(logits.shape[1])
            weight[self.channels[2]] = BOUNDARY_WEIGHT
            per_pixel = F.cross_entropy(logits, target, weight=weight, reduction="none")
        return (per_pixel * mask).sum() / mask.sum().clamp(min=1)


def touching(labels: np.ndarray) -> np.ndarray:
    """Object pixels next to (8-connected) a pixel of another object."""
    big = np.where(labels > 0, labels, np.iinfo(np.int32).max)
    return (labels > 0) & ((ndi.maximum_filter(labels, 3) > labels) | (ndi.minimum_filter(big, 3) < labels))


def targets_for(spec: Any) -> Targets:
    """The targets this package's output can learn from instance labels, or a one-line refusal."""
    out = spec.outputs[0]
    ops = [op.id for op in out.postprocessing if op.id != "ensure_dtype"]
    n = out.n_channels or 1
    if ops == ["sigmoid"] and n == 1:
        return Targets("foreground", description="foreground probability (sigmoid); touching objects' shared "
                       "border as background; binary cross-entropy")
    if ops == ["softmax"] and n == 3:
        names = [c.lower() for c in out.axis("channel").channel_names]
        if sorted(names) == ["background", "boundary", "interior"]:
            order = tuple(names.index(k) for k in ("background", "interior", "boundary"))
        else:  # the package's seeded watershed says which channel seeds (interior)
            recipe = spec.instance_recipe or {}
            fg = [int(c) for c in recipe.get("foreground", [])]
            seeds = recipe.get("seeds")
            if recipe.get("method") != "seeded_watershed" or seeds is None or len(fg) != 2 or int(seeds) not in fg:
                raise SpecError(f"model {spec.name!r}: output {out.id!r} has 3 softmax channels ({', '.join(names)}); "
                                "fine-tuning needs them named background, interior, boundary")
            interior = int(seeds)
            boundary = next(c for c in fg if c != interior)
            order = (3 - interior - boundary, interior, boundary)
        return Targets("classes", order, description="softmax over background / interior / boundary (the inner "
                       f"boundary of each object); cross-entropy with class weights 1, 1, {BOUNDARY_WEIGHT:g}")
    raise SpecError(f"model {spec.name!r}: output {out.id!r} ({n} channel(s), post-processing "
                    f"{' -> '.join(ops) or 'none'}) cannot be fine-tuned from labels; supported: 1 channel with sigmoid "
                    "(foreground) or 3 channels with softmax (background, interior, boundary)")


# -------------------------------------------------------------------------------------- model
TRAINABLE = ("pytorch_state_dict", "torchscript")


def trainable_module(spec: Any, gate: Any, device: str) -> Tuple[Any, str]:
    """The package's network as a trainable torch module, and the weights format it came from:
    a state dict's architecture (its code runs only through the trust gate), else TorchScript."""
    fmt = next((f for f in TRAINABLE if f in spec.weights), None)
    if fmt is None:
        raise SpecError(f"model {spec.name!r} has no trainable weights ({', '.join(spec.weights)}); fine-tuning needs "
                        "pytorch_state_dict or torchscript weights")
    from .engines import PytorchStateDictEngine, TorchscriptEngine

    engine_cls = PytorchStateDictEngine if fmt == "pytorch_state_dict" else TorchscriptEngine
    engine = engine_cls(spec, device=device, gate=gate)
    module = engine.module
    for p in module.parameters():
        p.requires_grad_(True)
    return module, fmt


def _check_layout(spec: Any) -> None:
    if len(spec.inputs) != 1 or len(spec.outputs) != 1:
        raise SpecError(f"model {spec.name!r} has {len(spec.inputs)} input(s) and {len(spec.outputs)} output(s); "
                        "fine-tuning takes models with one of each")
    inp, out = spec.inputs[0], spec.outputs[0]
    if inp.letters != "bcyx" or out.letters != "bcyx":
        raise SpecError(f"model {spec.name!r}: axes {inp.letters} -> {out.letters}; fine-tuning takes 2D models "
                        "(batch, channel, y, x)")
    if not spec.follows_input(out.id):
        raise SpecError(f"model {spec.name!r}: output {out.id!r} is not on its input's pixel grid; fine-tuning "
                        "needs an output as large as the input")


def _eval_engine(module: Any, device: str, threads: Optional[int]) -> Any:
    """The module being trained behind the engine interface, so held-out images run through the
    same tiling, pre- and post-processing as ``Model.predict``."""
    from .engines import TorchEngine
    from .trust import local_gate

    class TrainingEngine(TorchEngine):
        format = "torchscript"

        def _load(self) -> None:
            self.tdev = self._torch_device()
            self.module = module

        def _unload(self) -> None:  # the module belongs to the training loop
            pass

    return TrainingEngine(None, device=device, threads=threads, gate=local_gate(), path=".")


# ---------------------------------------------------------------------------------- training
@dataclass
class Prepared:
    """One training image after the package's pre-processing (``cyx`` float32), its target and
    the mask of real image pixels, padded by the output's halo on each side."""

    x: np.ndarray
    target: np.ndarray
    valid: np.ndarray


def preprocess(spec: Any, image: np.ndarray, name: str) -> np.ndarray:
    """The package's pre-processing of one whole image (``cyx``), fitted on the whole image as
    :meth:`Model.predict` fits it (deepImageJ macros included); returns ``cyx`` float32."""
    from . import axes as axes_mod
    from .prediction import fit_preprocessing, to_float

    t = spec.inputs[0]
    layout, _ = axes_mod.to_model_layout(image if "c" in t.letters else image[0], "cyx" if "c" in t.letters else "yx",
                                         t, name)
    prepared, pre = fit_preprocessing(spec, {t.id: layout}, ["y", "x"])
    x = np.asarray(pre[t.id](to_float(prepared[t.id], t)), dtype=np.float32)
    return x.reshape((-1,) + x.shape[-2:])


def _prepare(spec: Any, pair: Pair, targets: Targets, halo: int) -> Prepared:
    x = preprocess(spec, pair.image, str(pair.image_path))
    mode = spec.inputs[0].pad_mode or "reflect"
    pad = ((0, 0), (halo, halo), (halo, halo))
    x = np.pad(x, pad, mode=mode if mode in ("reflect", "symmetric", "edge") else "constant")
    t = np.pad(targets.make(pair.labels), pad[1:])
    valid = np.pad(np.ones(pair.labels.shape, np.float32), pad[1:])
    return Prepared(x, t, valid)


def _crop(p: Prepared, crop: int, halo: int, rng: np.random.Generator) -> Tuple[np.ndarray, ...]:
    """A random ``crop`` x ``crop`` window with a random rotation by 90 degrees and flip; images
    smaller than the window are padded (mask 0 there). The loss mask leaves out the halo."""
    x, t, v = p.x, p.target, p.valid
    h, w = x.shape[1:]
    if h < crop or w < crop:
        py, px = max(0, crop - h), max(0, crop - w)
        oy, ox = int(rng.integers(py + 1)), int(rng.integers(px + 1))
        pad = ((oy, py - oy), (ox, px - ox))
        x = np.pad(x, ((0, 0),) + pad, mode="reflect" if min(h, w) > 1 else "edge")
        t, v = np.pad(t, pad), np.pad(v, pad)
        h, w = x.shape[1:]
    y0, x0 = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
    xs, ts, vs = (a[..., y0:y0 + crop, x0:x0 + crop] for a in (x, t, v))
    vs = vs.copy()
    if halo:
        vs[:halo], vs[-halo:], vs[:, :halo], vs[:, -halo:] = 0, 0, 0, 0
    k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    xs, ts, vs = (np.rot90(a, k, axes=(-2, -1)) for a in (xs, ts, vs))
    if flip:
        xs, ts, vs = (a[..., ::-1] for a in (xs, ts, vs))
    return tuple(np.ascontiguousarray(a) for a in (xs, ts, vs))


def predict_outputs(spec: Any, engine: Any, pairs: Sequence[Pair]) -> List[np.ndarray]:
    """The model's output (``cyx``) for each pair's image, by :func:`dlmodel.prediction.run_plan`
    (tiling, pre- and post-processing exactly as in ``Model.predict``)."""
    from . import axes as axes_mod
    from .prediction import run_plan
    from .tiling import plan_for_engine

    t, o = spec.inputs[0], spec.outputs[0]
    outs = []
    for pair in pairs:
        img = pair.image if "c" in t.letters else pair.image[0]
        layout, _ = axes_mod.to_model_layout(img, "cyx" if "c" in t.letters else "yx", t, str(pair.image_path))
        sample = {t.id: layout}
        plan = plan_for_engine(spec, sample, engine.asynchronous, name=str(pair.image_path))
        result = run_plan(spec, engine, sample, plan)
        arr = result[o.id][0]
        outs.append(arr if "c" in o.letters else arr[np.newaxis])
    return outs


def score(outputs: Sequence[np.ndarray], truths: Sequence[np.ndarray], recipe: Dict[str, Any]) -> float:
    """Pooled F1 at IoU 0.5 of a recipe's objects against the truths."""
    return instances.pooled_f1(
        (instances.from_recipe(out, "cyx", recipe), truth) for out, truth in zip(outputs, truths))[0]


def recipe_grid(base: Dict[str, Any], targets: Targets) -> List[Dict[str, Any]]:
    """The recipes tried when re-tuning: the package's seeded watershed thresholds, or for a
    foreground probability the watershed and threshold steps over thresholds, diameters and
    minimum sizes."""
    import itertools

    grid: List[Dict[str, Any]] = [dict(base)]
    if targets.kind == "classes":
        for st, th, ms, mss in itertools.product([0.5, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7], [15, 30], [4, 10]):
            grid.append({**base, "seed_threshold": st, "threshold": th, "min_size": ms, "min_seed_size": mss})
        return grid
    common = {k: base[k] for k in ("output", "channel") if k in base}
    for th, ms in itertools.product([0.3, 0.4, 0.5, 0.6, 0.7], [0, 15, 30]):
        grid.append({**common, "method": "threshold", "threshold": th, "min_size": ms, "fill_holes": True})
    for th, d, ms in itertools.product([0.4, 0.5, 0.6], [12, 16, 20, 28], [15, 30]):
        grid.append({**common, "method": "watershed", "threshold": th, "diameter": d, "min_size": ms,
                     "fill_holes": True})
    return grid


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the new package's rdf and the training facts it records."""

    rdf: Path
    facts: Dict[str, Any] = field(default_factory=dict)

    @property
    def f1_before(self) -> float:
        return self.facts["held_out_f1_before"]

    @property
    def f1_after(self) -> float:
        return self.facts["held_out_f1_after"]


def finetune(
    model: PathLike,
    images: PathLike,
    labels: PathLike,
    out: PathLike,
    *,
    epochs: int = 50,
    minutes: Optional[float] = None,
    batch_size: int = 2,
    crop: Optional[int] = None,
    learning_rate: float = 1e-4,
    holdout: float = 0.2,
    patience: int = 10,
    seed: int = 0,
    device: str = "auto",
    threads: Optional[int] = None,
    trust: Optional[bool] = None,
    name: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = True,
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> FinetuneResult:
    """Fine-tune a package on annotated images and write the result as a new zoo package.

    Parameters
    ----------
    model
        The package to start from (folder, rdf, zip, URL, zoo id): it needs ``pytorch_state_dict``
        or ``torchscript`` weights and an output this module supports (see the module docstring).
    images, labels
        Folders of images and of their label images (0 background, 1..N objects), paired by name.
    out
        The new package folder (or ``.zip``). Written only when complete and tested.
    epochs
        At most this many passes over the training images (each image gives one random crop per pass).
    minutes
        Stop training after this many minutes (the package is then written from the best epoch).
    batch_size
        Crops per optimiser step.
    crop
        Side of the training crops; rounded up to a size the model accepts (default: the
        smallest valid size of at least 256, or the model's fixed size).
    learning_rate
        Adam's learning rate.
    holdout
        Fraction of the pairs held out (at least one) to choose the best epoch, stop early and
        re-tune the instance recipe; never trained on.
    patience
        Stop after this many epochs without a better held-out F1.
    seed
        Seeds the split, crops, augmentations and torch: the same seed gives the same weights
        on the same machine (unless ``minutes`` cuts training short at a different point).
    device
        ``auto`` (a GPU when present), ``cpu``, ``cuda`` or ``cuda:N``.
    threads
        Torch CPU threads (default: all cores of this process).
    trust
        As in :func:`dlmodel.load`: a state dict's architecture file is package code.
    name
        The new package's name (default: the parent's name + " (fine-tuned)").
    overwrite
        Replace ``out`` if it exists.
    progress
        Show a tqdm bar with the loss and held-out F1 of each epoch.
    on_epoch
        Called with each epoch's record (epoch, loss, held-out F1, seconds).

    Returns
    -------
    FinetuneResult
        The rdf path and the training facts (also in the rdf's ``config: dlmodel: finetune``).

    Ctrl-C (KeyboardInterrupt) during training stops it; the best weights so far are packaged.
    """
    out = Path(out)
    _check_request(out, (model, images, labels), overwrite, epochs=epochs, batch_size=batch_size,
                   learning_rate=learning_rate, holdout=holdout, patience=patience, minutes=minutes, crop=crop)
    t_start = time.monotonic()
    spec, gate, targets, pairs = _open_checked(model, images, labels, trust)
    dev, rng = _seeded(device, seed, threads)
    held, train = split_pairs(pairs, holdout, rng)
    module, fmt = trainable_module(spec, gate, dev)
    side, halo = _crop_side(spec, crop)
    prepared = [_prepare(spec, p, targets, halo) for p in train]
    base = instances.resolve_recipe(spec.instance_recipe)
    base.setdefault("output", spec.outputs[0].id)
    engine = _eval_engine(module, dev, threads)
    run = train_loop(module, targets, prepared, lambda: held_out_f1(spec, engine, module, held, base), side=side,
                     halo=halo, epochs=epochs, minutes=minutes, batch_size=batch_size, learning_rate=learning_rate,
                     patience=patience, device=dev, rng=rng, title=f"fine-tuning {spec.name}", progress=progress,
                     on_epoch=on_epoch)
    module.load_state_dict(run.best_state)
    module.eval()
    recipe, f1_after = tune_recipe(spec, engine, held, base, targets)
    facts = _facts(spec, model, pairs, held, fmt, targets, run, batch_size=batch_size, crop=side,
                   learning_rate=learning_rate, seed=seed, f1_after=f1_after, device=dev, patience=patience,
                   minutes=minutes)
    rdf = _write_package(spec, module, fmt, held[0], out, recipe, facts, name, overwrite)
    facts["seconds_total"] = round(time.monotonic() - t_start, 1)
    return FinetuneResult(rdf, facts)


# ------------------------------------------------------------------------------ finetune's steps
def _check_request(out: Path, sources: Sequence[PathLike], overwrite: bool, **numbers: Any) -> None:
    """The checks made before anything is read: ``out`` may be written (never one of the
    ``sources``, their folders, '.', or anything not ours) and each number is in its range."""
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise SpecError(f"{out} exists; pass overwrite=True (or --overwrite) to replace it")
    check_replaceable(out, [p for p in sources if Path(str(p)).exists()])
    n = numbers
    for arg, ok in (("epochs", isinstance(n["epochs"], int) and n["epochs"] >= 1),
                    ("batch_size", isinstance(n["batch_size"], int) and n["batch_size"] >= 1),
                    ("learning_rate", n["learning_rate"] > 0),
                    ("holdout", 0 < n["holdout"] < 1),
                    ("patience", isinstance(n["patience"], int) and n["patience"] >= 1),
                    ("minutes", n["minutes"] is None or n["minutes"] > 0),
                    ("crop", n["crop"] is None or (isinstance(n["crop"], int) and n["crop"] >= 1))):
        if not ok:
            raise InputError(f"{arg}={n[arg]!r} is out of range")


def _open_checked(model: PathLike, images: PathLike, labels: PathLike,
                  trust: Optional[bool]) -> Tuple[Any, Any, Targets, List[Pair]]:
    """The package (a layout fine-tuning takes, targets for its output, its trust decision) and
    the annotated pairs, at least two (one is held out)."""
    from .package import open_spec
    from .trust import Gate

    spec, resolved = open_spec(model)
    _check_layout(spec)
    targets = targets_for(spec)
    gate = Gate.decide(spec.name, spec.root, spec.rdf_sha256, resolved.kind, trust)
    channels = spec.inputs[0].n_channels or 1
    pairs = [read_pair(i, la, channels) for i, la in pair_files(images, labels)]
    if len(pairs) < 2:
        raise InputError(f"{images}: {len(pairs)} annotated image(s); fine-tuning needs at least 2 (one is held out)")
    return spec, gate, targets, pairs


def _seeded(device: str, seed: int, threads: Optional[int]) -> Tuple[str, np.random.Generator]:
    """The torch device, and the random generator of the split, crops and augmentations; torch
    seeded too (and its CPU threads set) so that a seed gives the same weights."""
    import torch

    from . import engines

    dev = engines.resolve_device(device)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    if dev == "cpu" and threads:
        torch.set_num_threads(threads)
    return dev, rng


def split_pairs(pairs: Sequence[Pair], holdout: float, rng: np.random.Generator) -> Tuple[List[Pair], List[Pair]]:
    """(held-out, training) pairs: a random ``holdout`` fraction held out, at least one, and at
    least one left to train on; each part in the pairs' order."""
    order = rng.permutation(len(pairs))
    n_hold = min(len(pairs) - 1, max(1, int(round(holdout * len(pairs)))))
    return [pairs[i] for i in sorted(order[:n_hold])], [pairs[i] for i in sorted(order[n_hold:])]


def _crop_side(spec: Any, crop: Optional[int]) -> Tuple[int, int]:
    """(side of the training crops, the output's halo): ``crop`` (default 256) rounded up to a
    size the model accepts, refused if the halo leaves nothing inside it."""
    side = spec.inputs[0].axis("y").smallest_valid(crop or 256)
    halo = max(a.halo for a in spec.outputs[0].axes)
    if 2 * halo >= side:
        raise SpecError(f"model {spec.name!r}: a {side}-pixel crop leaves nothing inside its halo of {halo}; choose a larger crop")
    return side, halo


def held_out_f1(spec: Any, engine: Any, module: Any, held: Sequence[Pair], recipe: Dict[str, Any]) -> float:
    """The pooled F1 of the module's objects (by ``recipe``) on the held-out pairs, predicted as
    ``Model.predict`` would."""
    module.eval()
    return score(predict_outputs(spec, engine, held), [p.labels for p in held], recipe)


@dataclass
class TrainingRun:
    """What the training loop did: the held-out F1 before training, the best epoch (0: the
    parent's weights), its F1 and weights, each epoch's record and why it stopped."""

    f1_before: float
    best_f1: float
    best_epoch: int
    best_state: Dict[str, Any]
    steps: int  # optimiser steps per epoch
    history: List[Dict[str, Any]] = field(default_factory=list)
    stopped: str = "epochs"
    seconds: float = 0.0


def _state(module: Any) -> Dict[str, Any]:
    """A copy of the module's weights (the best epoch's are kept while training goes on)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_loop(module: Any, targets: Targets, prepared: Sequence[Prepared], evaluate: Callable[[], float], *,
               side: int, halo: int, epochs: int, minutes: Optional[float], batch_size: int, learning_rate: float,
               patience: int, device: str, rng: np.random.Generator, title: str, progress: bool,
               on_epoch: Optional[Callable[[Dict[str, Any]], None]]) -> TrainingRun:
    """Train ``module`` with Adam on random crops of the ``prepared`` images, scoring each epoch
    with ``evaluate`` (held-out F1) and keeping the best epoch's weights, until ``epochs``,
    ``minutes``, ``patience`` epochs without a better F1, or Ctrl-C."""
    import torch
    from tqdm.auto import tqdm

    f1_before = evaluate()
    run = TrainingRun(f1_before, f1_before, 0, _state(module), math.ceil(len(prepared) / batch_size))
    optimiser = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=learning_rate)
    deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
    bar = tqdm(total=epochs, desc=title, unit="epoch", disable=not progress)
    bar.set_postfix_str(f"held-out F1 {f1_before:.3f} (before)")
    t_train = time.monotonic()
    try:
        for epoch in range(1, epochs + 1):
            losses = _epoch(module, optimiser, targets, prepared, run.steps, batch_size, side, halo, device, rng, deadline)
            f1 = evaluate()
            record = {"epoch": epoch, "loss": round(float(np.mean(losses)), 5), "held_out_f1": round(f1, 4),
                      "seconds": round(time.monotonic() - t_train, 1)}
            run.history.append(record)
            if f1 > run.best_f1:
                run.best_f1, run.best_epoch, run.best_state = f1, epoch, _state(module)
            bar.update(1)
            bar.set_postfix_str(f"loss {record['loss']:.4f}, held-out F1 {f1:.3f} (best {run.best_f1:.3f}, "
                                f"epoch {run.best_epoch})")
            if on_epoch is not None:
                on_epoch(record)
            if deadline is not None and time.monotonic() > deadline:
                run.stopped = f"time limit ({minutes:g} min)"
                break
            if epoch - run.best_epoch >= patience:
                run.stopped = f"early stop (no better held-out F1 for {patience} epochs)"
                break
    except KeyboardInterrupt:
        run.stopped = "interrupted (Ctrl-C)"
        LOGGER.warning("dlmodel: fine-tuning interrupted; packaging the best epoch (%d)", run.best_epoch)
    finally:
        bar.close()
    run.seconds = time.monotonic() - t_train
    return run


def _epoch(module: Any, optimiser: Any, targets: Targets, prepared: Sequence[Prepared], steps: int, batch_size: int,
           side: int, halo: int, device: str, rng: np.random.Generator, deadline: Optional[float]) -> List[float]:
    """One pass: ``steps`` optimiser steps of ``batch_size`` crops (each image once, in a random
    order, wrapping round to fill the last batch); the loss of each step. Stops at ``deadline``."""
    import torch

    module.train()
    picks = rng.permutation(len(prepared))
    losses = []
    for s in range(steps):
        chosen = [prepared[picks[(s * batch_size + b) % len(prepared)]] for b in range(batch_size)]
        crops = [_crop(p, side, halo, rng) for p in chosen]
        x, t, v = (torch.from_numpy(np.stack(a)).to(device) for a in zip(*crops))
        optimiser.zero_grad()
        loss = targets.loss(module(x), t, v)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if deadline is not None and time.monotonic() > deadline:
            break
    return losses


def tune_recipe(spec: Any, engine: Any, held: Sequence[Pair], base: Dict[str, Any],
                targets: Targets) -> Tuple[Dict[str, Any], float]:
    """The instance recipe re-tuned on the held-out images with the kept weights: the best of
    :func:`recipe_grid` (the first best, so the package's own on a tie) and its F1."""
    outputs = predict_outputs(spec, engine, held)
    truths = [p.labels for p in held]
    tried = [(score(outputs, truths, r), i, r) for i, r in enumerate(recipe_grid(base, targets))]
    f1, _, recipe = max(tried, key=lambda s: (s[0], -s[1]))
    return recipe, f1


def _facts(spec: Any, source: Any, pairs: Sequence[Pair], held: Sequence[Pair], fmt: str, targets: Targets,
           run: TrainingRun, **kw: Any) -> Dict[str, Any]:
    """The training facts the new package records (``config: dlmodel: finetune``) and its README tells."""
    import torch

    held_names = {p.image_path for p in held}
    return {
        "parent": {"name": spec.name, "id": spec.id, "version": spec.version, "rdf_sha256": spec.rdf_sha256,
                   "source": str(source), "weights": fmt},
        "images": [{"image": p.image_path.name, "image_sha256": sha256_of(p.image_path), "labels": p.labels_path.name,
                    "labels_sha256": sha256_of(p.labels_path), "objects": int(len(np.unique(p.labels)) - 1),
                    "use": "held-out" if p.image_path in held_names else "training"} for p in pairs],
        "targets": targets.description,
        "loss": "binary cross-entropy with logits" if targets.kind == "foreground" else
                f"cross-entropy, class weights 1/1/{BOUNDARY_WEIGHT:g}",
        "optimiser": "Adam",
        "epochs": len(run.history), "best_epoch": run.best_epoch, "steps_per_epoch": run.steps,
        "batch_size": kw["batch_size"], "crop": kw["crop"], "learning_rate": kw["learning_rate"], "seed": kw["seed"],
        "patience": kw["patience"], "minutes": kw["minutes"], "augmentation": "random crops, rotations by 90 degrees, flips",
        "stopped": run.stopped,
        "held_out_f1_before": round(run.f1_before, 4),
        "held_out_f1_best_epoch": round(run.best_f1, 4),
        "held_out_f1_after": round(kw["f1_after"], 4),
        "seconds": round(run.seconds, 1), "device": kw["device"], "torch": torch.__version__,
        "history": run.history,
    }


def _write_package(spec: Any, module: Any, fmt: str, sample: Pair, out: Path, recipe: Dict[str, Any],
                   facts: Dict[str, Any], name: Optional[str], overwrite: bool) -> Path:
    from .packaging import Architecture, package
    from .spec import local_path

    inp, o = spec.inputs[0], spec.outputs[0]
    module = module.to("cpu")  # packaging runs and exports it on the CPU
    if fmt == "pytorch_state_dict":
        formats = tuple(f for f in ("onnx", "torchscript", "pytorch_state_dict")
                        if f in spec.weights or f == "pytorch_state_dict")
        arch = spec.architecture
        if arch.source is None:
            raise SpecError(f"model {spec.name!r}: its architecture comes from a library ({arch.import_from}); "
                            "fine-tuning writes packages whose architecture file they carry")
        architecture = Architecture(local_path(spec.root, arch.source), arch.callable, dict(arch.kwargs))
    else:
        formats = tuple(f for f in ("onnx", "torchscript") if f in spec.weights or f == "torchscript")
        architecture = None
    y = inp.axis("y")
    size = y.size if y.size is not None else (y.min, y.step)
    halo = max(a.halo for a in o.axes)
    recipe = {k: v for k, v in recipe.items() if k != "output"}
    channel_names = list(o.axis("channel").channel_names) if o.axis("channel") else None
    new_name = name or f"{spec.name} (fine-tuned)"
    return package(
        module, sample.image if sample.image.shape[0] > 1 else sample.image[0], out,
        sample_axes="cyx" if sample.image.shape[0] > 1 else "yx",
        name=new_name,
        description=f"{spec.name} fine-tuned with RunDLModel on {len(facts['images'])} annotated images.",
        authors=[{"name": a} for a in spec.authors] or [{"name": "RunDLModel finetune"}],
        license=spec.license or "MIT",
        cite=[{"text": c, "url": "https://bioimage.io"} for c in spec.cite],
        tags=sorted(set(spec.tags) | {"fine-tuned"}),
        preprocessing=list(inp.preprocessing), postprocessing=list(o.postprocessing),
        architecture=architecture, formats=formats, input_id=inp.id, output_id=o.id,
        output_channel_names=channel_names, size=size, halo=halo, instances=recipe,
        documentation=readme(new_name, spec, facts, recipe),
        parent=spec.id, config={"finetune": facts}, overwrite=overwrite,
    )


def readme(name: str, spec: Any, facts: Dict[str, Any], recipe: Dict[str, Any]) -> str:
    """The new package's README: where it comes from, how it was trained, and how well it does."""
    used = [i for i in facts["images"] if i["use"] == "training"]
    held = [i for i in facts["images"] if i["use"] == "held-out"]
    parent = facts["parent"]
    rows = "\n".join(f"| {h['epoch']} | {h['loss']:.4f} | {h['held_out_f1']:.3f} | {h['seconds']:.0f} |"
                     for h in facts["history"])
    return f"""# {name}

Fine-tuned with RunDLModel (`dlmodel finetune`) from **{parent['name']}**
({'id ' + parent['id'] if parent['id'] else 'no zoo id'}; parent rdf sha256 `{parent['rdf_sha256']}`;
its {parent['weights']} weights were trained further).

## Training
- Images: {len(used)} for training, {len(held)} held out (never trained on; they chose the best epoch and
  the instance recipe). Every file and its sha256 is listed in the rdf under `config: dlmodel: finetune: images`.
- Targets: {facts['targets']}. Loss: {facts['loss']}.
- {facts['epochs']} epoch(s) of {facts['steps_per_epoch']} step(s) of {facts['batch_size']} random {facts['crop']}x{facts['crop']}
  crops ({facts['augmentation']}), {facts['optimiser']} at learning rate {facts['learning_rate']:g}, seed {facts['seed']},
  on {facts['device']} with torch {facts['torch']}, {facts['seconds']:.0f} s; stopped: {facts['stopped']}.
  The weights are those of epoch {facts['best_epoch']} (0: the parent's).
- Pre- and post-processing are the parent's, unchanged.

## Held-out F1 at IoU 0.5 (pooled)
- parent, with its instance step: {facts['held_out_f1_before']:.3f}
- best epoch, same step: {facts['held_out_f1_best_epoch']:.3f}
- best epoch with the re-tuned recipe ({instances.describe_recipe(recipe)}): {facts['held_out_f1_after']:.3f}

These numbers come from the held-out images that also chose the epoch and the recipe: measure on
images of your own that played no part before trusting them.

| epoch | loss | held-out F1 | seconds |
| --- | --- | --- | --- |
{rows}
"""
