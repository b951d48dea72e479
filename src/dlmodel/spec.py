"""A small, read-only view of a model's rdf: tensors, axes, sizes, halos, processing, weights.

Everything is read through ``bioimageio.spec``. Format 0.4 packages are converted to 0.5 on
load, as bioimageio.spec does; one that it cannot convert (an output with a fixed size and a
halo, say) is read as 0.4, as bioimageio.core reads it, into the same view. The rest of dlmodel
only sees these plain dataclasses.
"""
from __future__ import annotations

import hashlib
import math
import os
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import SpecError, one_line

# One-letter axis names users type (``axes="cyx"``) and the spec 0.5 axis ids they mean.
LETTER_TO_AXIS = {"b": "batch", "c": "channel", "t": "time", "i": "index", "z": "z", "y": "y", "x": "x"}
AXIS_TO_LETTER = {v: k for k, v in LETTER_TO_AXIS.items()}


def __getattr__(name: str) -> Any:
    # ENGINE_EXTRA (weight formats dlmodel runs -> the pip extra of each engine) is derived from
    # the engine registry, dlmodel.engines.REGISTRY (lazily: engines imports this module)
    if name == "ENGINE_EXTRA":
        from .engines import ENGINE_EXTRA

        return ENGINE_EXTRA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Axis:
    """One tensor axis. Exactly one of ``size``, (``min``, ``step``) or ``ref`` describes its
    length, or none of them for a data-dependent/any-size axis (batch, data-dependent outputs)."""

    id: str
    type: str  # batch | channel | space | time | index
    size: Optional[int] = None
    min: Optional[int] = None
    step: Optional[int] = None
    ref: Optional[Tuple[str, str]] = None  # (tensor id, axis id) this axis' size follows
    offset: int = 0
    scale: float = 1.0
    halo: int = 0
    channel_names: Tuple[str, ...] = ()

    @property
    def letter(self) -> str:
        return AXIS_TO_LETTER.get(self.id, self.id)

    @property
    def tileable(self) -> bool:
        return self.type in ("space", "time")

    def is_valid(self, n: int) -> bool:
        if self.size is not None:
            return n == self.size
        if self.min is not None:
            return n >= self.min and (n - self.min) % self.step == 0
        return n >= 1

    def smallest_valid(self, at_least: int) -> int:
        """Smallest valid length >= ``at_least`` (a fixed size is returned as is)."""
        if self.size is not None:
            return self.size
        if self.min is not None:
            n = max(0, math.ceil((at_least - self.min) / self.step))
            return self.min + n * self.step
        return max(1, at_least)

    def largest_valid(self, at_most: int) -> int:
        """Largest valid length <= ``at_most``, but never below the smallest valid length."""
        if self.size is not None:
            return self.size
        if self.min is not None:
            n = max(0, (at_most - self.min) // self.step)
            return self.min + n * self.step
        return max(1, at_most)

    def describe_size(self) -> str:
        if self.size is not None:
            return str(self.size)
        if self.min is not None:
            return f"{self.min}+n*{self.step}"
        if self.ref is not None:
            sign = "+" if self.offset >= 0 else "-"
            off = f"{sign}{abs(self.offset)}" if self.offset else ""
            return f"{self.ref[0]}.{self.ref[1]}{off}"
        return "any"


@dataclass(frozen=True)
class Tensor:
    id: str
    axes: Tuple[Axis, ...]
    dtype: str
    description: str = ""
    preprocessing: Tuple[Any, ...] = ()  # bioimageio.spec processing descrs, in order
    postprocessing: Tuple[Any, ...] = ()
    test_tensor: Optional[Path] = None
    pad_mode: Optional[str] = None
    pad_value: float = 0.0

    @property
    def axis_ids(self) -> Tuple[str, ...]:
        return tuple(a.id for a in self.axes)

    @property
    def letters(self) -> str:
        return "".join(a.letter for a in self.axes)

    def axis(self, axis_id: str) -> Optional[Axis]:
        return next((a for a in self.axes if a.id == axis_id), None)

    @property
    def n_channels(self) -> Optional[int]:
        ch = self.axis("channel")
        return None if ch is None else ch.size


@dataclass(frozen=True)
class Tolerance:
    relative: float = 1e-3
    absolute: float = 1e-3
    mismatched_per_million: float = 100.0
    weights_formats: Tuple[str, ...] = ()
    output_ids: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Architecture:
    """Where a ``pytorch_state_dict``'s network comes from: a ``callable`` in a ``.py`` file of
    the package (``source``), or in an installed library (``import_from``), with ``kwargs``."""

    callable: str
    kwargs: Dict[str, Any]
    source: Any = None  # the rdf's source of the file (relative to the package)
    import_from: Optional[str] = None
    strict: bool = True  # load_state_dict(strict=...)


@dataclass
class ModelSpec:
    """What dlmodel needs to know about a model package, with every file resolved locally."""

    descr: Any  # the bioimageio.spec v0_5 ModelDescr
    rdf_path: Path
    rdf_sha256: str
    name: str
    id: Optional[str]
    version: Optional[str]
    description: str
    authors: Tuple[str, ...]
    license: str
    cite: Tuple[str, ...]
    inputs: Tuple[Tensor, ...]
    outputs: Tuple[Tensor, ...]
    weights: Dict[str, Any]  # format -> the spec's weights entry
    weight_paths: Dict[str, Path]
    tolerances: Tuple[Tolerance, ...] = ()
    tags: Tuple[str, ...] = ()
    config: Dict[str, Any] = field(default_factory=dict)
    architecture: Optional[Architecture] = None
    environment_file: Optional[Path] = None  # the state dict's pip/conda environment file, if any
    format_version: str = ""
    format_note: str = ""  # how an rdf bioimageio.spec refuses as it is was read (as 0.4; float64 inputs)
    notes: Tuple[str, ...] = ()  # what dlmodel adds to or leaves out of the rdf, and why (info shows them)
    macros: Tuple[Any, ...] = ()  # deepImageJ macro steps dlmodel runs (families.deepimagej.MacroStep)
    family_recipe: Optional[Dict[str, Any]] = None  # the family's own step for objects (families.package_recipe)

    @property
    def root(self) -> Path:
        return self.rdf_path.parent

    @property
    def instance_recipe(self) -> Optional[Dict[str, Any]]:
        """The package's own recipe for objects, if any: ``config: dlmodel: instances`` (written
        by ``dlmodel package``), else its family's (:mod:`dlmodel.families`: StarDist's NMS,
        Cellpose's flow dynamics, an rdf op that makes labels)."""
        recipe = (self.config.get("dlmodel") or {}).get("instances") or self.family_recipe
        return dict(recipe) if recipe else None

    @property
    def input_channels(self) -> int:
        """Channels the model takes in all (a 1-channel input counts 1)."""
        return sum(t.n_channels or 1 for t in self.inputs)

    @property
    def is_3d(self) -> bool:
        """Whether the model's inputs have a z axis (it needs volumes)."""
        return any(a.id == "z" for t in self.inputs for a in t.axes)

    def output(self, tensor_id: str) -> Tensor:
        return _by_id(self.outputs, tensor_id, "output")

    def tensor(self, tensor_id: str) -> Tensor:
        for t in self.inputs + self.outputs:
            if t.id == tensor_id:
                return t
        raise SpecError(f"model {self.name!r} has no tensor {tensor_id!r}")

    def follows_input(self, output_id: str) -> bool:
        """Whether an output's space axes follow an input one to one (same pixel grid): the
        output can stand beside its input as an image of the same size."""
        factors = self.input_grid_factors(output_id)
        return factors is not None and all(k == 1 for k in factors)

    def input_grid_factors(self, output_id: str) -> Optional[Tuple[int, ...]]:
        """Input pixels per output pixel along each space axis, when an output covers an input on
        a whole-number grid (1: the same pixels; 2: every 2nd, as StarDist predicts); else None
        (another size, an offset, a finer grid)."""
        space = [a for a in self.output(output_id).axes if a.type == "space"]
        factors = []
        for a in space:
            if a.ref is None or a.offset:
                return None
            ref = self.tensor(a.ref[0]).axis(a.ref[1])
            if ref is None or ref.type != "space" or not ref.scale or not a.scale:
                return None
            k = a.scale / ref.scale
            if k < 1 or abs(k - round(k)) > 1e-6:
                return None
            factors.append(int(round(k)))
        return tuple(factors) if factors else None

    def tolerance(self, weights_format: str, output_id: str) -> Tolerance:
        for tol in self.tolerances:
            if (not tol.weights_formats or weights_format in tol.weights_formats) and (
                not tol.output_ids or output_id in tol.output_ids
            ):
                return tol
        return Tolerance()


def _by_id(tensors: Sequence[Tensor], tensor_id: str, kind: str) -> Tensor:
    for t in tensors:
        if t.id == tensor_id:
            return t
    known = ", ".join(t.id for t in tensors)
    raise SpecError(f"the model has no {kind} tensor {tensor_id!r} (it has: {known})")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def local_path(root: Path, source: Any) -> Path:
    """Where a file the rdf names lies in the local package folder ``root``.

    Relative sources lie below the rdf; remote sources were downloaded beside it under their
    file name (the name ``bioimageio.spec`` gives them when packaging)."""
    from bioimageio.spec._internal.io import RelativeFilePath

    if isinstance(source, RelativeFilePath):
        return root / Path(str(source))
    if isinstance(source, Path):
        return source
    text = str(source)
    if text.startswith(("http://", "https://")):
        return root / text.rstrip("/").split("/")[-1].split("?")[0]
    return root / text


def _axis_from_descr(ax: Any) -> Axis:
    from bioimageio.spec.model import v0_5

    kind = ax.type
    size: Optional[int] = None
    amin = step = None
    ref = None
    offset = 0
    names: Tuple[str, ...] = ()
    raw_size = getattr(ax, "size", None)
    if kind == "channel":
        names = tuple(str(n) for n in ax.channel_names)
        size = len(names)
    elif isinstance(raw_size, int):
        size = raw_size
    elif isinstance(raw_size, v0_5.ParameterizedSize):
        amin, step = raw_size.min, raw_size.step
    elif isinstance(raw_size, v0_5.SizeReference):
        ref = (str(raw_size.tensor_id), str(raw_size.axis_id))
        offset = int(raw_size.offset)
    return Axis(
        id=str(ax.id),
        type=kind,
        size=size,
        min=amin,
        step=step,
        ref=ref,
        offset=offset,
        scale=float(getattr(ax, "scale", 1.0) or 1.0),
        halo=int(getattr(ax, "halo", 0) or 0),
        channel_names=names,
    )


def _tensor_from_descr(t: Any, root: Path, is_input: bool) -> Tensor:
    data = t.data if not isinstance(t.data, (list, tuple)) else t.data[0]
    pad = getattr(t, "pad", None) if is_input else None
    test = local_path(root, t.test_tensor.source) if t.test_tensor is not None else None
    return Tensor(
        id=str(t.id),
        axes=tuple(_axis_from_descr(a) for a in t.axes),
        dtype=str(data.type),
        description=t.description or "",
        preprocessing=tuple(t.preprocessing) if is_input else (),
        postprocessing=tuple(t.postprocessing) if not is_input else (),
        test_tensor=test,
        pad_mode=None if pad is None else pad.mode,
        pad_value=float(getattr(pad, "value", 0.0) or 0.0),
    )


def spec_from_descr(descr: Any, rdf_path: Path, format_note: str = "") -> ModelSpec:
    """Build the view from a validated format 0.5 ``ModelDescr`` whose files lie beside
    ``rdf_path`` (``format_note``: how bioimageio.spec came to read it). The whole view of any
    package, 0.4 read as 0.4 and its family's steps included, is :func:`dlmodel.package.view`."""
    return dataclasses.replace(_spec_from_v0_5(descr, rdf_path), format_note=format_note)


def follow_fixed_inputs(inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
    """Outputs whose space axes have a fixed size equal to an input's fixed size along the same
    axis, made to follow that input one to one (what deepImageJ-era and n2v packages mean by a
    fixed output as large as their fixed input, and what a fixed size with a halo means): they
    are then tiled like any output that follows its input, so any image size works."""
    fixed: Dict[Tuple[str, int], List[str]] = {}
    for t in inputs:
        for a in t.axes:
            if a.type == "space" and a.size is not None:
                fixed.setdefault((a.id, a.size), []).append(t.id)
    result = []
    for o in outputs:
        axes = []
        for a in o.axes:
            same = fixed.get((a.id, a.size), []) if a.type == "space" and a.size is not None else []
            axes.append(dataclasses.replace(a, size=None, ref=(same[0], a.id)) if len(same) == 1 else a)
        result.append(dataclasses.replace(o, axes=tuple(axes)))
    return tuple(result)



def description_fields(descr: Any, rdf_path: Path) -> Dict[str, Any]:
    """The ModelSpec fields read the same way from a format 0.4 and a 0.5 description."""
    return dict(
        descr=descr,
        rdf_path=rdf_path,
        rdf_sha256=sha256_file(rdf_path),
        name=descr.name,
        id=None if descr.id is None else str(descr.id),
        version=None if getattr(descr, "version", None) is None else str(descr.version),
        description=descr.description or "",
        authors=tuple(a.name for a in descr.authors),
        license=str(descr.license or ""),
        cite=tuple(c.text + (f" (doi:{c.doi})" if getattr(c, "doi", None) else "") for c in descr.cite),
        tags=tuple(descr.tags),
    )


def weight_entries(descr: Any, root: Path) -> Tuple[Dict[str, Any], Dict[str, Path]]:
    """The weight entries of the formats dlmodel has engines for, and their local files."""
    from .engines import ENGINE_EXTRA  # every format of the engine registry, none dropped by a hand list

    weights: Dict[str, Any] = {}
    paths: Dict[str, Path] = {}
    for fmt in ENGINE_EXTRA:
        entry = getattr(descr.weights, fmt, None)
        if entry is not None:
            weights[fmt] = entry
            paths[fmt] = local_path(root, entry.source)
    return weights, paths


def _spec_from_v0_5(descr: Any, rdf_path: Path) -> ModelSpec:
    root = rdf_path.parent
    weights, paths = weight_entries(descr, root)
    tolerances = []
    bioimageio_cfg = getattr(descr.config, "bioimageio", None)
    for tol in getattr(bioimageio_cfg, "reproducibility_tolerance", ()) or ():
        tolerances.append(
            Tolerance(
                relative=tol.relative_tolerance,
                absolute=tol.absolute_tolerance,
                mismatched_per_million=tol.mismatched_elements_per_million,
                weights_formats=tuple(tol.weights_formats or ()),
                output_ids=tuple(str(o) for o in tol.output_ids or ()),
            )
        )
    config = descr.config.model_dump(mode="json") if descr.config is not None else {}
    inputs = tuple(_tensor_from_descr(t, root, True) for t in descr.inputs)
    architecture = environment = None
    state = weights.get("pytorch_state_dict")
    if state is not None:
        arch = state.architecture
        architecture = Architecture(
            callable=str(arch.callable), kwargs=dict(arch.kwargs or {}), source=getattr(arch, "source", None),
            import_from=None if getattr(arch, "import_from", None) is None else str(arch.import_from),
            strict=bool(getattr(state, "strict", True)))
        if state.dependencies is not None:
            environment = local_path(root, state.dependencies.source)
    return ModelSpec(
        **description_fields(descr, rdf_path),
        inputs=inputs,
        outputs=follow_fixed_inputs(inputs, [_tensor_from_descr(t, root, False) for t in descr.outputs]),
        weights=weights,
        weight_paths=paths,
        tolerances=tuple(tolerances),
        config=config,
        architecture=architecture,
        environment_file=environment,
        format_version=str(descr.format_version),
    )


# rdfs are a few KB of YAML; these bound what a hostile one can cost before it is parsed.
MAX_RDF_BYTES = int(os.environ.get("DLMODEL_MAX_RDF_BYTES", 4 << 20))
MAX_RDF_NODES = int(os.environ.get("DLMODEL_MAX_RDF_NODES", 200_000))


MAX_YAML_DEPTH = 100  # real rdfs nest about 8 deep; a recursive walk of 10,000 would fail


def load_package_yaml(path: Path, where: str, what: str = "file") -> Any:
    """Read a YAML file that came with a package (its ``environment.yaml``, ...) under the rdf's
    limits: :func:`check_yaml_size` first, so an alias bomb or a huge file is refused before a
    loader expands it; broken YAML is a one-line SpecError naming the file."""
    from ruyaml import YAML

    check_yaml_size(Path(path), where, what=what)
    try:
        with open(path, "rb") as f:
            return YAML(typ="safe", pure=True).load(f)
    except Exception as e:  # the YAML library's own errors: many kinds, one line
        raise SpecError(f"{what} {where} is not valid YAML: {one_line(e)}") from e


def load_package_json(data: Union[bytes, str], where: str, what: str = "file", max_bytes: int = MAX_RDF_BYTES) -> Any:
    """Parse JSON that came with a package (a Keras model's config, ...) under the rdf's size
    limit; deep nesting and broken JSON are one-line SpecErrors naming it."""
    import json

    if len(data) > max_bytes:
        raise SpecError(f"{what} {where} is {len(data)} bytes, more than the limit of {max_bytes} (DLMODEL_MAX_RDF_BYTES)")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise SpecError(f"{what} {where} is not valid JSON: {one_line(e)}") from e


def check_yaml_size(rdf: Path, where: str, max_bytes: int = MAX_RDF_BYTES, max_nodes: int = MAX_RDF_NODES,
                    what: str = "rdf") -> int:
    """Refuse an rdf (or another YAML file of a package: ``what``) larger than ``max_bytes``, or
    one whose YAML aliases would expand to more than ``max_nodes`` nodes ("billion laughs": a few
    KB that a YAML loader turns into GBs).

    Reads the YAML event stream (aliases are not expanded there) and sums each anchored node's
    size; returns the expanded node count."""
    from ruyaml import YAML
    from ruyaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent

    try:
        size = rdf.stat().st_size
    except OSError as e:
        raise SpecError(f"cannot read {what} {where}: {e.strerror}") from e
    if size > max_bytes:
        raise SpecError(f"{what} {where} is {size} bytes, more than the limit of {max_bytes} (DLMODEL_MAX_RDF_BYTES)")
    anchors: Dict[str, int] = {}
    stack = [[0, None]]  # [nodes so far, anchor] per open collection
    try:
        with open(rdf, "rb") as f:
            for ev in YAML(typ="safe", pure=True).parse(f):
                if isinstance(ev, AliasEvent):
                    stack[-1][0] += anchors.get(ev.anchor, 1)
                elif isinstance(ev, CollectionStartEvent):
                    stack.append([1, ev.anchor])
                elif isinstance(ev, CollectionEndEvent):
                    n, anchor = stack.pop()
                    if anchor:
                        anchors[anchor] = n
                    stack[-1][0] += n
                elif isinstance(ev, NodeEvent):  # a scalar
                    stack[-1][0] += 1
                    if ev.anchor:
                        anchors[ev.anchor] = 1
                if len(stack) > MAX_YAML_DEPTH:
                    raise SpecError(f"{what} {where} nests deeper than {MAX_YAML_DEPTH} levels; refusing it")
                if stack[-1][0] > max_nodes or (len(stack) > 1 and sum(n for n, _ in stack) > max_nodes):
                    raise SpecError(
                        f"{what} {where} expands to more than {max_nodes} YAML nodes (aliases); refusing it "
                        "(DLMODEL_MAX_RDF_NODES)"
                    )
    except SpecError:
        raise
    except Exception:  # broken YAML: bioimageio.spec reports it in its own words
        return -1
    return stack[0][0]


def read_description(rdf: Path, origin: Optional[str] = None) -> Any:
    """Read and validate an rdf with bioimageio.spec (see :func:`read_description_noted`)."""
    return read_description_noted(rdf, origin)[0]


def read_description_noted(rdf: Path, origin: Optional[str] = None) -> Tuple[Any, str]:
    """Read and validate an rdf with bioimageio.spec, converted to format 0.5; a format 0.4 rdf
    that bioimageio.spec cannot convert, but that is valid 0.4, as 0.4 (as bioimageio.core
    reads it). Returns the description and, for such a 0.4 rdf, why it was not converted.

    No network: file checks are ours (``package.verify_files``), so the spec's own io checks,
    which would try every URL in the rdf, are off. A hostile rdf (too large, alias bombs) is
    refused before it is parsed (:func:`check_yaml_size`). Raises SpecError with the first
    problem."""
    import logging

    from bioimageio.spec import load_description
    from bioimageio.spec.common import InvalidDescr

    logging.getLogger("bioimageio").setLevel(logging.ERROR)
    _quiet_loguru()
    where = origin or str(rdf)
    if Path(rdf).suffix.lower() in (".yaml", ".yml"):
        check_yaml_size(Path(rdf), where)
    try:
        descr = load_description(rdf, perform_io_checks=False, format_version="latest")
        note = ""
        if isinstance(descr, InvalidDescr) and str(getattr(descr, "format_version", "")).startswith("0.4"):
            # the conversion to 0.5 refused it: a valid 0.4 rdf is read as it is
            as_is = load_description(rdf, perform_io_checks=False, format_version="discover")
            if not isinstance(as_is, InvalidDescr):
                descr, note = as_is, f"read as format 0.4: bioimageio.spec cannot convert it to 0.5 ({_first_error(descr)})"
            elif _float64_inputs_only(as_is):
                descr, note = _read_float64_inputs_as_float32(rdf, as_is)
    except Exception as e:  # broken YAML, unreadable file, ...
        first = one_line(e)
        raise SpecError(f"cannot read rdf {where}: {first}") from e
    if isinstance(descr, InvalidDescr):
        raise SpecError(f"invalid rdf {where}: {_first_error(descr)}")
    if getattr(descr, "type", None) != "model":
        raise SpecError(f"rdf {where} describes a {getattr(descr, 'type', '?')}, not a model")
    return descr, note


def _float64_inputs_only(descr: Any) -> bool:
    """Whether an rdf is invalid only because its inputs declare float64, as n2v's exporter
    (0.3.x, format 0.4.9) writes them and format 0.4.10 refuses."""
    errors = [e for d in descr.validation_summary.details for e in d.errors]
    return bool(errors) and all(len(e.loc) >= 3 and e.loc[0] == "inputs" and e.loc[-1] == "data_type" for e in errors)


def _read_float64_inputs_as_float32(rdf: Path, invalid: Any) -> Tuple[Any, str]:
    """The rdf read with its float64 inputs as float32 (the engine casts each input to what the
    weights take), through bioimageio.spec's own reader and validation."""
    from bioimageio.spec import build_description
    from bioimageio.spec._internal.io_utils import open_bioimageio_yaml
    from bioimageio.spec._internal.validation_context import get_validation_context
    from bioimageio.spec.common import InvalidDescr

    opened = open_bioimageio_yaml(rdf)
    content = dict(opened.content)
    inputs = [dict(t) for t in content.get("inputs", [])]
    if not any(t.get("data_type") == "float64" for t in inputs):
        return invalid, ""
    content["inputs"] = [{**t, "data_type": "float32"} if t.get("data_type") == "float64" else t for t in inputs]
    context = get_validation_context().replace(root=opened.original_root, file_name=opened.original_file_name,
                                               perform_io_checks=False)
    for version in ("latest", "discover"):
        descr = build_description(content, context=context, format_version=version)
        if not isinstance(descr, InvalidDescr):
            return descr, ("its inputs declare data_type float64, which format 0.4.10 refuses (n2v's exporter writes "
                           "it); read as float32, and the engine gives the weights the float64 they take")
    return invalid, ""


def _first_error(descr: Any) -> str:
    for detail in descr.validation_summary.details:
        for err in detail.errors:
            loc = ".".join(str(p) for p in err.loc if not str(p)[:1].isupper() and "-" not in str(p))
            return f"{loc}: {err.msg}" if loc else str(err.msg)
    return "unknown validation error"


def _quiet_loguru() -> None:
    """bioimageio.spec logs validation warnings to stderr through loguru; keep ours clean."""
    try:
        from loguru import logger

        logger.disable("bioimageio")
    except ImportError:
        pass
