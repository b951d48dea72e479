"""The Python API: ``load(source) -> Model``; ``Model.predict``, ``Model.info``, ``Model.test``."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Union

import numpy as np

from . import axes as axes_mod
from . import engines, processing
from .errors import DLModelError, EngineError, InputError
from .package import open_spec
from .prediction import run_plan
from .tiling import DEFAULT_TILE_PIXELS, TileArg, check_options, plan_checked, plan_for_engine
from .results import OutputCheck, Prediction, TestReport, require_prediction
from .spec import ModelSpec, Tensor
from .trust import DOWNLOAD, FOLDER, Gate, TrustError

if TYPE_CHECKING:
    from .confidence import Confidence

LOGGER = logging.getLogger("dlmodel")


class Model:
    """A loaded model package, ready to predict. Create it with :func:`load`.

    Thread-safe: several threads may call :meth:`predict` at once (forward passes of one
    engine are serialised; everything else runs in parallel)."""

    def __init__(
        self,
        spec: ModelSpec,
        engine: str = "auto",
        device: str = "auto",
        threads: Optional[int] = None,
        origin: str = "",
        kind: str = FOLDER,
        trust: Optional[bool] = None,
    ):
        self.spec = spec
        self.origin = origin or str(spec.rdf_path)
        self.kind = kind
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise EngineError(f"threads={threads!r}: use a whole number >= 1, or None for all cores")
        # code a package brings runs only for a folder the user made, unless the user says
        # otherwise (trust.py); trust=False means no, for a folder too
        self.gate = Gate.decide(spec.name, spec.root, spec.rdf_sha256, kind, trust)
        self.device = engines.resolve_device(device)
        self.weights_format = engines.choose_format(spec, engine, self.device)
        # engine="fastest": measured on the first image's tile shape (dlmodel.fastest); until then auto's pick
        self.fastest = engine == "fastest"
        self.engine_choice: Optional[Any] = None  # the fastest.Choice once measured: which engine ran and why
        self._fastest_for: Any = None
        self.threads = threads
        self._engines: Dict[str, engines.Engine] = {}
        self._engine_lock = threading.Lock()
        from . import families

        self.left_out = families.left_out(spec)  # package steps dlmodel does not run: warned once
        self._warned = False
        if not self.fastest:  # "fastest" loads and tests every engine at the first image, and skips one that fails
            self._engine(self.weights_format)  # load now: a broken package fails here, not at the first image

    @property
    def engine(self) -> engines.Engine:
        """The engine of :attr:`weights_format`, loaded again if :meth:`unload` released it."""
        return self._engine(self.weights_format)

    @engine.setter
    def engine(self, engine: engines.Engine) -> None:
        with self._engine_lock:
            self._engines[self.weights_format] = engine

    def unload(self) -> None:
        """Release every engine (weights, sessions, GPU memory); the next prediction loads again."""
        with self._engine_lock:
            for engine in self._engines.values():
                engine.unload()
            self._engines.clear()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unload()

    @property
    def trust(self) -> bool:
        """Whether code the package brings may run (see :mod:`dlmodel.trust`)."""
        return self.gate.trusted

    @property
    def local(self) -> bool:
        """Whether the package came from this machine's disk (a folder or a zip), not a download."""
        return self.kind != DOWNLOAD

    def _engine(self, fmt: str) -> engines.Engine:
        with self._engine_lock:
            if fmt not in self._engines or not self._engines[fmt].loaded:
                self._engines[fmt] = engines.load_engine(self.spec, fmt, self.device, self.threads, self.gate)
            return self._engines[fmt]

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        image: Union[np.ndarray, Mapping[str, np.ndarray]],
        axes: Union[None, str, Mapping[str, str]] = None,
        *,
        tile: TileArg = None,
        batch_size: Optional[int] = None,
        pad_mode: Optional[str] = None,
        max_tile_pixels: int = DEFAULT_TILE_PIXELS,
        name: str = "image",
    ) -> Prediction:
        """Run the model, with the package's own pre- and post-processing, on an image of any size.

        Args:
            image: one array for a single-input model, else ``{tensor_id: array}``.
            axes: the array's axes, e.g. ``"yx"``, ``"cyx"``, ``"zyx"``, ``"tyx"`` (one string,
                or one per input). Axes the model lacks (``t`` for a 2D model, ``b``) are looped
                over. Default: guessed from the model when unambiguous.
            tile: ``None`` (auto), ``False`` (whole image in one pass), a length for every
                tiled axis, a sequence, or ``{"y": 512, "x": 512}``. Lengths are rounded up to
                sizes the model accepts.
            batch_size: tiles per forward pass (capped by the model's batch axis).
            pad_mode: override the padding of context outside the image
                (reflect, symmetric, edge, constant); default: the rdf's, else reflect.
            name: how error messages call this image (a file name, say).

        Returns:
            A :class:`Prediction`: ``{output_id: array}`` (float32 for most models), each in
            ``prediction.axes[output_id]`` order: loop axes first, then the output's axes
            without batch; a single channel is dropped when the input the output follows
            was given without a channel axis (``"yx"`` in, ``"yx"`` out).
        """
        check_options(tile, batch_size, pad_mode)
        self._check_axes_arg(axes)
        if self.left_out and not self._warned:
            self._warned = True
            LOGGER.warning("dlmodel: model %r: not run (not recognised): %s", self.spec.name, "; ".join(self.left_out))
        arrays = self._as_inputs(image)
        layouts, loop, given = self._layouts(arrays, axes, name)
        first = self.spec.inputs[0].id
        space = {a: np.shape(arrays[first])[given[first].index(a)] for a in "zyx" if a in given[first]}
        loop_shape = next(iter(layouts.values())).shape[: len(loop)]
        results: Dict[str, List[np.ndarray]] = {o.id: [] for o in self.spec.outputs}
        plan = None
        for idx in np.ndindex(*loop_shape):  # each slice along the loop axes on its own
            sample = {tid: arr[idx] for tid, arr in layouts.items()}
            if self.fastest and self._fastest_for != (sample[first].shape, tile, max_tile_pixels):
                from . import fastest  # measured once per tile shape, then cached on disk

                self.engine_choice = fastest.choose(self, sample, tile, max_tile_pixels)
                self.weights_format, self._fastest_for = self.engine_choice.weights_format, (sample[first].shape, tile, max_tile_pixels)
            engine = self.engine
            plan = plan_for_engine(self.spec, sample, engine.asynchronous, tile, batch_size, max_tile_pixels, name=name)
            outs = run_plan(self.spec, engine, sample, plan, pad_mode, self.gate)
            for oid, arr in outs.items():
                results[oid].append(arr)
        final, out_axes = self._restack(results, loop, loop_shape, given)
        return Prediction(final, out_axes, plan, space)

    def _layouts(self, arrays: Mapping[str, np.ndarray], axes: Any, name: str
                 ) -> "tuple[Dict[str, np.ndarray], str, Dict[str, str]]":
        """Each input mapped onto its tensor's axes (views), the loop axes they share, and
        the axes each was given with (its outputs keep a single channel or z only if given)."""
        layouts: Dict[str, np.ndarray] = {}
        loop: Optional[str] = None
        given: Dict[str, str] = {}
        for t in self.spec.inputs:
            arr = _check_values(np.asarray(arrays[t.id]), name)
            ax = axes.get(t.id) if isinstance(axes, Mapping) else axes
            what = name if len(self.spec.inputs) == 1 else f"{name} (input {t.id!r})"
            ax = ax or axes_mod.guess_axes(arr.ndim, t, what)
            given[t.id] = ax.lower()
            layout, t_loop = axes_mod.to_model_layout(arr, ax, t, what)
            if loop is not None and (t_loop != loop or layout.shape[: len(loop)] != next(iter(layouts.values())).shape[: len(loop)]):
                raise InputError(f"{name}: inputs have different extra axes ({loop!r} vs {t_loop!r})")
            loop = t_loop
            layouts[t.id] = layout
        return layouts, loop or "", given

    def _restack(self, results: Mapping[str, List[np.ndarray]], loop: str, loop_shape: tuple,
                 given: Mapping[str, str]) -> "tuple[Dict[str, np.ndarray], Dict[str, str]]":
        """The per-slice outputs stacked back along the loop axes, batch (and a single channel
        or z axis the input was given without) squeezed; and each output's axes letters."""
        final: Dict[str, np.ndarray] = {}
        out_axes: Dict[str, str] = {}
        for o in self.spec.outputs:
            follows = next((a.ref[0] for a in o.axes if a.ref is not None), None)
            letters, squeeze = axes_mod.output_axes(o, loop, given.get(follows, "".join(given.values())))
            parts = [np.squeeze(a, axis=tuple(squeeze)) if squeeze else a for a in results[o.id]]
            final[o.id] = parts[0] if not loop else np.stack(parts).reshape(loop_shape + parts[0].shape)
            out_axes[o.id] = letters
        return final, out_axes

    def _check_axes_arg(self, axes: Any) -> None:
        ids = [t.id for t in self.spec.inputs]
        if isinstance(axes, Mapping):
            unknown = [k for k in axes if k not in ids]
            bad = [k for k, v in axes.items() if not isinstance(v, str)]
            if unknown:
                raise InputError(f"axes names input {unknown[0]!r}; model {self.spec.name!r} has inputs {', '.join(ids)}")
            if bad:
                raise InputError(f"axes[{bad[0]!r}]={axes[bad[0]]!r}: give the axes as letters, e.g. 'yx' or 'cyx'")
        elif axes is not None and not isinstance(axes, str):
            raise InputError(f"axes={axes!r}: give the axes as letters, e.g. 'yx' or 'cyx' (or one such string per input)")

    def check_file_fits(self, path: Union[str, Path], axes: Optional[str] = None, tile: TileArg = None,
                        batch_size: Optional[int] = None) -> None:
        """Refuse, from the file's header alone (before reading it), an image whose prediction
        cannot fit in memory. Files whose header says too little (PNG, JPEG) are checked
        after reading, as every array is in :meth:`predict`."""
        from . import io

        header = io.image_header(Path(path))
        if header is None or len(self.spec.inputs) != 1:
            return
        shape, dtype, file_axes = header
        t = self.spec.inputs[0]
        if not shape or 0 in shape:
            return  # predict says what is wrong with it
        # a read-only view of one pixel, shaped like the image: planning needs shapes only
        fake = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape), writeable=False)
        ax = axes or file_axes or axes_mod.guess_axes(len(shape), t, str(path))
        layout, loop = axes_mod.to_model_layout(fake, ax, t, str(path))
        samples = int(np.prod(layout.shape[: len(loop)])) if loop else 1
        sample = {t.id: layout[(0,) * len(loop)] if loop else layout}
        plan_checked(self.spec, sample, tile, batch_size, name=str(path),
                     extra_bytes=int(np.prod(shape)) * np.dtype(dtype).itemsize, samples=samples)

    def _as_inputs(self, image: Union[np.ndarray, Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        ids = [t.id for t in self.spec.inputs]
        if isinstance(image, Mapping):
            missing = [i for i in ids if i not in image]
            extra = [k for k in image if k not in ids]
            if missing or extra:
                raise InputError(
                    f"model {self.spec.name!r} takes inputs {ids}; got {list(image)}"
                    + (f" (missing {missing})" if missing else "")
                )
            return dict(image)
        if len(ids) != 1:
            raise InputError(f"model {self.spec.name!r} has {len(ids)} inputs ({', '.join(ids)}); pass a dict of arrays")
        return {ids[0]: image}

    # ------------------------------------------------------------------ objects
    @property
    def instance_recipe(self) -> Optional[Dict[str, Any]]:
        """The package's own recipe for objects (``config: dlmodel: instances``, or its
        family's: :attr:`dlmodel.spec.ModelSpec.instance_recipe`), if any."""
        return self.spec.instance_recipe

    @property
    def makes_objects(self) -> bool:
        """Whether the package's own outputs are only a step towards objects (StarDist's rays,
        Cellpose's flows, an rdf op that makes labels): then ``dlmodel predict`` writes the
        objects without being asked (``--labels``)."""
        from . import families

        recipe = self.instance_recipe or {}
        return recipe.get("method") in families.methods() or (
            recipe.get("method") == "labels" and families.package_recipe(self.spec) is not None)

    def labels(self, prediction: "Prediction", method: str = "auto", output: Optional[str] = None,
               channel: Optional[int] = None, **choices: Any) -> np.ndarray:
        """Objects (int32 labels) from a prediction: by the package's own recipe (``auto``),
        else by :data:`dlmodel.instances.DEFAULT_RECIPE`, with the caller's ``choices``
        (threshold, diameter, min_size, fill_holes, discard_border) as
        :func:`dlmodel.instances.resolve_recipe` says."""
        from . import instances

        require_prediction(prediction, "Model.labels")
        recipe = instances.resolve_recipe(self.instance_recipe, method, output, channel, **choices)
        oid = recipe.pop("output", None) or self.spec.outputs[0].id
        if oid not in prediction:
            raise InputError(f"the recipe names output {oid!r}; the model has {', '.join(prediction)}")
        labels = instances.from_recipe(prediction[oid], prediction.axes[oid], recipe)
        return instances.fit_to_image(labels, prediction.axes[oid], getattr(prediction, "space", {}), recipe.get("grid"))

    # ------------------------------------------------------------------ confidence
    def confidence(
        self,
        image: Union[np.ndarray, Mapping[str, np.ndarray]],
        axes: Union[None, str, Mapping[str, str]] = None,
        *,
        augmentations: Optional[int] = None,
        seed: int = 0,
        objects: Union[None, bool, Mapping[str, Any]] = None,
        tile: TileArg = None,
        batch_size: Optional[int] = None,
        pad_mode: Optional[str] = None,
        name: str = "image",
    ) -> "Confidence":
        """How far to trust this model's prediction of ``image``, without ground truth.

        Predicts the image and ``augmentations`` flipped or rotated copies (only the transforms
        the model's axes and tiles allow), and measures their disagreement, how far the image
        lies from the package's test input after pre-processing, and how undecided the
        probabilities are (:mod:`dlmodel.confidence`, docs/confidence.md).

        Args:
            augmentations: transformed copies to predict (default
                :data:`dlmodel.confidence.DEFAULT_AUGMENTATIONS`); each costs one prediction.
            seed: which copies are drawn when fewer than all are asked for.
            objects: None: compare objects when the package has a recipe for them; True: with
                the default recipe otherwise; a dict: :meth:`labels`' keyword arguments; False:
                compare outputs only.
            tile, batch_size, pad_mode, name: as in :meth:`predict`.

        Returns:
            A :class:`dlmodel.confidence.Confidence`: ``confidence`` in [0, 1], its components,
            per object the fraction of copies that found it again, the transforms used (and
            why others were not), and the plain ``prediction`` and ``labels``.
        """
        from . import confidence as conf

        check_options(tile, batch_size, pad_mode)
        self._check_axes_arg(axes)
        k = conf.DEFAULT_AUGMENTATIONS if augmentations is None else augmentations
        return conf.measure(self, image, axes, augmentations=k, seed=seed, objects=objects, tile=tile,
                            batch_size=batch_size, pad_mode=pad_mode, name=name)

    # ------------------------------------------------------------------ test
    def test(self, weights_format: Optional[str] = None) -> TestReport:
        """Run the package's own test inputs and compare with its test outputs, using the
        rdf's reproducibility tolerance (default: abs 1e-3 + rel 1e-3, 100 per million)."""
        fmt = weights_format or self.weights_format
        report = TestReport(fmt)
        try:
            engine = self._engine(fmt)
            inputs = {}
            for t in self.spec.inputs:
                if t.test_tensor is None:
                    raise DLModelError(f"input {t.id!r} has no test tensor in the rdf")
                inputs[t.id] = np.load(t.test_tensor, allow_pickle=False)
            outs = None
            undeclared = _undeclared_sizes(self.spec, inputs)
            if undeclared:
                # some exporters write a test input below the minimum their rdf declares (a 3D StarDist
                # export): run it as given, as bioimageio.core does, where the network takes it
                try:
                    outs = self._run_test(engine, inputs, as_given=True)
                    report.note = (f"the test input has {undeclared}, a size the rdf does not declare: run as given, "
                                   "unpadded")
                except DLModelError as e:  # the network needs a declared size: padded as any image is
                    LOGGER.info("dlmodel: test input of %r as given: %s; padded instead", self.spec.name, e)
            if outs is None:
                outs = self._run_test(engine, inputs, tile=False)
            for o in self.spec.outputs:
                if o.test_tensor is None:
                    raise DLModelError(f"output {o.id!r} has no test tensor in the rdf")
                expected = np.load(o.test_tensor, allow_pickle=False)
                report.checks.append(compare(outs[o.id], expected, self.spec.tolerance(fmt, o.id), o.id))
        except TrustError as e:
            report.error, report.untrusted = str(e), True
        except DLModelError as e:
            report.error = str(e)
        return report

    def _run_test(self, engine: engines.Engine, inputs: Mapping[str, np.ndarray], **how: Any) -> Dict[str, np.ndarray]:
        """The package's test input through ``engine`` with no halo: how :meth:`test` checks the
        test outputs, and how :mod:`dlmodel.packaging` makes them."""
        plan = plan_for_engine(self.spec, inputs, engine.asynchronous, use_halo=False, name="test input", **how)
        return run_plan(self.spec, engine, inputs, plan, gate=self.gate)

    # ------------------------------------------------------------------ info

    def info(self) -> Dict[str, Any]:
        """Name, id, version, authors, licence, citation, tensors and available engines."""
        return {**describe(self.spec), "source": self.origin, "engine": self.weights_format, "device": self.device,
                "engine_reason": self.engine_choice.reason if self.engine_choice is not None else None}

    def __repr__(self) -> str:
        return f"<dlmodel.Model {self.spec.name!r} ({self.weights_format} on {self.device})>"


def _undeclared_sizes(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> str:
    """The axes along which test inputs have a length the rdf does not allow (``"y 40 (smallest
    allowed 64)"``), or ''."""
    from .tiling import tiled_axes

    return ", ".join(f"{a.id} {a.length} (smallest allowed {a.constraint.smallest_valid(a.length)})"
                     for a in tiled_axes(spec, inputs, True, False)
                     if a.constraint.smallest_valid(a.length) != a.length)


def describe(s: ModelSpec) -> Dict[str, Any]:
    """A model's metadata and tensors as plain data (what ``dlmodel info`` prints)."""
    return {
        "name": s.name,
        "id": s.id,
        "version": s.version,
        "description": s.description,
        "authors": list(s.authors),
        "license": s.license,
        "cite": list(s.cite),
        "tags": list(s.tags),
        "rdf": str(s.rdf_path),
        "rdf_sha256": s.rdf_sha256,
        "format_version": s.format_version,
        "format_note": s.format_note,
        "notes": list(s.notes),
        "inputs": [_tensor_info(t, s) for t in s.inputs],
        "outputs": [_tensor_info(t, s) for t in s.outputs],
        "weights": {f: {"installed": engines.engine_installed(f), "path": str(p)} for f, p in s.weight_paths.items()},
        "objects": _objects_info(s),
    }


def _objects_info(s: ModelSpec) -> str:
    """How "Automatic" makes objects for this package (the package's own step, or the default)."""
    from . import instances

    recipe = s.instance_recipe
    if recipe:
        return "the package's own step: " + instances.describe_recipe(recipe)
    return "the default step: " + instances.describe_recipe(instances.DEFAULT_RECIPE)


def _tensor_info(t: Tensor, s: ModelSpec) -> Dict[str, Any]:
    return {
        "id": t.id,
        "description": t.description,
        "axes": t.letters,
        "shape": {a.id: _size(a, s) for a in t.axes},
        "halo": {a.id: a.halo for a in t.axes if a.halo},
        "dtype": t.dtype,
        "channel_names": next((list(a.channel_names) for a in t.axes if a.type == "channel"), []),
        "preprocessing": [processing.describe(p) for p in t.preprocessing],
        "postprocessing": [processing.describe(p) for p in t.postprocessing],
    }


def _size(a: Any, s: ModelSpec) -> str:
    """An axis' size as ``describe_size`` says it, with the factor of a referenced axis
    (``raw.y/2`` for an output at half the input's resolution)."""
    from fractions import Fraction

    text = a.describe_size()
    if a.ref is None:
        return text
    ref = s.tensor(a.ref[0]).axis(a.ref[1])
    factor = Fraction(ref.scale / a.scale).limit_denominator(64) if ref is not None else Fraction(1)
    if factor == 1:
        return text
    scaled = f"{a.ref[0]}.{a.ref[1]}" + (f"*{factor.numerator}" if factor.numerator != 1 else "") + (
        f"/{factor.denominator}" if factor.denominator != 1 else "")
    return text.replace(f"{a.ref[0]}.{a.ref[1]}", scaled, 1)


def compare(actual: np.ndarray, expected: np.ndarray, tol: Any, name: str) -> OutputCheck:
    """Compare like bioimageio.core: |a-e| > abs + rel*|e| counts as a mismatch."""
    a = np.asarray(actual, dtype=np.float32)
    e = np.asarray(expected, dtype=np.float32)
    if a.shape != e.shape:
        # only singleton axes may differ (a batch or channel of 1 kept or dropped): a different
        # shape of the same size (transposed, say) is a mismatch, not something to reshape away
        if np.squeeze(a).shape != np.squeeze(e).shape:
            return OutputCheck(name, float("inf"), 1e6, tol, False)
        a = a.reshape(e.shape)
    diff = np.abs(a - e)
    mismatched = diff > tol.absolute + tol.relative * np.abs(e)
    ppm = float(mismatched.sum()) / max(1, e.size) * 1e6
    return OutputCheck(name, float(diff.max()) if diff.size else 0.0, ppm, tol, ppm <= tol.mismatched_per_million)


def _check_values(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == bool:
        return arr.view(np.uint8)
    if arr.dtype.kind == "c" or arr.dtype.kind not in "biuf":
        raise InputError(f"{name}: pixel type {arr.dtype} is not supported (use integers or floats)")
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InputError(f"{name} has {bad} NaN or infinite pixel(s); replace them (e.g. np.nan_to_num) before predicting")
    return arr


def load(
    source: Union[str, Path],
    engine: str = "auto",
    device: str = "auto",
    threads: Optional[int] = None,
    trust: Optional[bool] = None,
) -> Model:
    """Load a model package from a path, folder, .zip, URL, zoo id or DOI.

    Every file the rdf names is checked against its sha256 before use.

    Args:
        engine: ``auto`` (the first installed format in ``engines.AUTO_ORDER`` for the device),
            ``fastest`` (each installed engine tested and timed on the first image's tile, the
            choice remembered: :mod:`dlmodel.fastest`), or ``onnx``, ``torchscript``, ``pytorch``,
            ``tensorflow``, ``keras`` (or a spec weight format name).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: engine threads (default: ``DLMODEL_THREADS`` or all cores of this process).
        trust: run code shipped in the package (a PyTorch architecture file, custom
            processing, Keras Lambda layers, TensorFlow graph operations that reach files or
            Python). Default (None): only for a package folder you made; a zip or a download
            (URL, zoo id, DOI) needs ``trust=True``; ``False`` refuses it for folders too.
            ONNX and TorchScript weights never need it.
    """
    spec, resolved = open_spec(source)
    return Model(spec, engine=engine, device=device, threads=threads, origin=resolved.origin, kind=resolved.kind,
                 trust=trust)


_CACHE: Dict[tuple, Model] = {}
_CACHE_LOCK = threading.Lock()


def load_cached(source: Union[str, Path], engine: str = "auto", device: str = "auto", threads: Optional[int] = None,
                trust: Optional[bool] = None) -> Model:
    """Like :func:`load`, but one Model per (source, engine, device, threads, trust) per process."""
    key = (str(source), engine, device, threads, trust)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            t0 = time.perf_counter()
            model = _CACHE[key] = load(source, engine=engine, device=device, threads=threads, trust=trust)
            LOGGER.info("dlmodel: loaded model %r (%s on %s, %d engine threads) in %.2f s", model.spec.name,
                        model.weights_format, model.device, model.engine.threads, time.perf_counter() - t0)
        return model


def clear_cache() -> None:
    """Release every model :func:`load_cached` holds, and their engines' memory (GPU included)."""
    with _CACHE_LOCK:
        for model in _CACHE.values():
            model.unload()
        _CACHE.clear()
