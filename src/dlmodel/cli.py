"""The ``dlmodel`` command: info, test, predict. A thin layer over :mod:`dlmodel.api`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

from . import engines, io
from .errors import DLModelError


def _tile_arg(text: str):
    """``auto`` | ``none`` | ``512`` | ``512,512`` | ``y=512,x=256``."""
    text = text.strip().lower()
    if text == "auto":
        return None
    if text in ("none", "off", "whole"):
        return False
    try:
        if "=" in text:
            sizes = {k.strip(): int(v) for k, v in (p.split("=") for p in text.split(","))}
            values = list(sizes.values())
        else:
            values = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile {text!r}: use auto, none, 512, 512,512 or y=512,x=512") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--tile {text!r}: tile lengths must be >= 1")
    if "=" in text:
        return sizes
    return values[0] if len(values) == 1 else values


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (tiles per pass, threads, workers: 1; ring width: 0)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: use a number >= {minimum}")
        return n

    return parse


_positive, _nonnegative = _whole_number(1), _whole_number(0)


def _core_default(func: Callable, name: str) -> Any:
    """The core's default for one of ``func``'s parameters (a dataclass's field too): flags that
    reach it default to None, pass nothing when not given, and only quote this in their help."""
    import inspect

    return inspect.signature(func).parameters[name].default


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The flags among ``names`` that were given (not None), for the core to fill in the rest."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _model_args(sp: argparse.ArgumentParser) -> None:
    """The flags of every command that runs a model: which one, on what, trusted or not, where."""
    sp.add_argument("source", help="rdf/bioimageio.yaml, package folder or .zip, URL, zoo id or DOI")
    sp.add_argument("--engine", default="auto", help=engines.engine_help())
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    sp.add_argument("--trust", action="store_true", default=None,
                    help="run code shipped in a downloaded package (architecture files, custom ops, Keras Lambda layers)")
    _python_arg(sp)


def _python_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--python", default=None, metavar="PATH",
                    help="run the model in another Python environment approved on this machine (its python, or its "
                         "folder; see dlmodel env create, dlmodel env add)")
    sp.add_argument("--allow-unapproved-python", action="store_true",
                    help="start --python for this command even though it is not approved on this machine")


def _confidence_args(sp: argparse.ArgumentParser, what: str) -> None:
    from .confidence import DEFAULT_AUGMENTATIONS

    sp.add_argument("--confidence", action="store_true", help=f"also measure the model's confidence: {what}")
    sp.add_argument("--augmentations", type=_nonnegative, default=None, metavar="K",
                    help=f"flipped or rotated copies predicted per image for --confidence (default "
                         f"{DEFAULT_AUGMENTATIONS}; each costs one prediction)")


def _object_args(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("objects", "how outputs become objects, as RunDLModel's settings and Model.labels "
                                         "(default: the package's own recipe, else a watershed split)")
    g.add_argument("--method", default="auto", help="auto (default), watershed, threshold or labels")
    g.add_argument("--objects-output", default=None, metavar="ID", help="the output objects are made from")
    g.add_argument("--objects-channel", type=_positive, default=None, metavar="N",
                   help="its channel, counted from 1 as in RunDLModel")
    g.add_argument("--threshold", type=float, default=None, help="probability threshold (watershed, threshold)")
    g.add_argument("--diameter", type=float, default=None, help="typical object diameter in pixels (watershed; 0: estimated)")
    g.add_argument("--min-size", type=_nonnegative, default=None, help="smallest object kept, in pixels")
    g.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--discard-border", action=argparse.BooleanOptionalAction, default=None,
                   help="drop objects touching the image border")


def _batch_args(sp: argparse.ArgumentParser, what: str) -> None:
    """The flags of commands that run many ``what``: threads, Dask, resuming."""
    sp.add_argument("--threads", type=_positive, default=None, help="engine threads (default: all cores)")
    sp.add_argument("--workers", type=_positive, default=None, help="run on a local Dask cluster of N worker processes")
    sp.add_argument("--scheduler", default=None, help="run on an existing Dask cluster, e.g. tcp://host:8786")
    sp.add_argument("--resume", action="store_true",
                    help=f"skip {what} whose outputs are all there (complete: outputs are written atomically) and "
                         "remove temporary files an interrupted run left")


def _add_info(sub: Any) -> None:
    sp = sub.add_parser("info", help="describe a model: metadata, tensors, processing, engines")
    sp.add_argument("source")
    sp.add_argument("--json", action="store_true", help="print JSON")
    _python_arg(sp)


def _add_test(sub: Any) -> None:
    sp = sub.add_parser("test", help="run the package's test inputs and compare with its test outputs")
    _model_args(sp)
    sp.set_defaults(engine=None)


def _add_predict(sub: Any) -> None:
    sp = sub.add_parser("predict", help="predict images (files, folders or globs) into OUTDIR")
    _model_args(sp)
    sp.add_argument("inputs", nargs="+", help="image files, folders or glob patterns (tif, png, jpg, npy)")
    sp.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    sp.add_argument("--axes", help="axes of the input images, e.g. yx, cyx, zyx (default: from the file)")
    sp.add_argument("--tile", type=_tile_arg, default=None, help="auto (default), none, 512, 512,512 or y=512,x=512")
    sp.add_argument("--batch-size", type=_positive, default=None, help="tiles per forward pass")
    sp.add_argument("--format", choices=("tif", "npy"), default="tif", help="output file format")
    _batch_args(sp, "images")
    sp.add_argument("--labels", action=argparse.BooleanOptionalAction, default=None,
                    help="also write <image>_labels.tif: objects by the package's own step (else the default watershed "
                         "split); on by default for packages whose outputs only lead to objects (StarDist, Cellpose)")
    _confidence_args(sp, "confidence.csv: per image, the model's confidence and its components (docs/confidence.md)")
    _object_args(sp)


def _add_plate(sub: Any) -> None:
    sp = sub.add_parser("plate", help="segment a plate and write per-object and per-well CSVs and heatmaps")
    _model_args(sp)
    sp.add_argument("images", help="folder of the plate's images")
    sp.add_argument("-o", "--output", required=True, type=Path)
    from .platerun import PlateJob, parse_layout

    sp.add_argument("--layout", default=None,
                    help="examplesbs (Channel{c}-{n}-{row}-{col}.tif), imagexpress ({plate}_{well}_s{site}_w{c}.tif), "
                         "or a regex with (?P<row>..)(?P<col>..)(?P<channel>..) and optional (?P<plate>..)(?P<site>..); "
                         f"default {_core_default(parse_layout, 'layout')}")
    sp.add_argument("--model-channel", default=None, help="the channel the model segments (default "
                    f"{_core_default(PlateJob, 'model_channel')}: Hoechst in ExampleSBS)")
    sp.add_argument("--measure-channel", action="append", default=None, help="channels measured in the objects; repeat "
                    f"(default {', '.join(_core_default(PlateJob, 'measure_channels'))})")
    sp.add_argument("--metadata", type=Path, default=None, help="per-well CSV with Row and Column columns to join")
    sp.add_argument("--ring", type=_nonnegative, default=None,
                    help="also measure a ring this many pixels wide around each object, and inside/ring ratios "
                         f"(0: off; default {_core_default(PlateJob, 'ring')})")
    sp.add_argument("--report", action="store_true",
                    help="also write report.html (Z', dose-response, heatmaps, QC flags), screen.csv and report/*.png")
    sp.add_argument("--controls", default=None, help="the metadata column marking controls (default: the one naming 'control')")
    sp.add_argument("--doses", default=None, help="the metadata column with doses (default: the one naming 'dose' or 'conc')")
    sp.add_argument("--negative", type=float, default=None, help="the control column's value for negative controls (default -1)")
    sp.add_argument("--positive", type=float, default=None, help="the control column's value for positive controls (default 1)")
    sp.add_argument("--readout", action="append", default=None, help="a wells.csv column to report on; repeat (default: all)")
    _confidence_args(sp, "per-well confidence columns in wells.csv and the QC flag 'model unsure' (docs/confidence.md)")
    _object_args(sp)
    _batch_args(sp, "sites")


def _add_cellprofiler(sub: Any) -> None:
    sp = sub.add_parser("cellprofiler", help="run a CellProfiler pipeline over a screen in slices (here or on Dask), "
                                             "merge the slices' tables and score the plate")
    sp.add_argument("pipeline", type=Path, help="the pipeline (.cppipe) with an ExportToSpreadsheet")
    sp.add_argument("-i", "--images", required=True, type=Path, help="the folder of the images (CellProfiler's -i)")
    sp.add_argument("-o", "--output", required=True, type=Path,
                    help="folder for the merged tables, screen.csv, slices/ and logs/")
    sp.add_argument("--per-task", type=_positive, default=None, help="image sets per slice (default: 4 slices per worker)")
    sp.add_argument("--group-by", default=None, help="one slice per value of this metadata, e.g. Metadata_Plate,Metadata_Well")
    sp.add_argument("--cellprofiler", default=None, metavar="PATH",
                    help="the cellprofiler to run, 5.0 or 4.2.8 (default: next to this Python, else on PATH)")
    sp.add_argument("--plugins-directory", default=None, help="CellProfiler's plugins folder (RunDLModel's: plugins/)")
    sp.add_argument("--enable-readers", nargs="+", default=None, metavar="READER",
                    help="CellProfiler 5's image readers, e.g. imageio_reader imageio_reader_v3 (offline nodes)")
    sp.add_argument("--timeout", type=float, default=None, help="seconds a slice may run")
    sp.add_argument("--metadata", type=Path, default=None, help="per-well CSV with Row and Column columns to join for the statistics")
    sp.add_argument("--report", action="store_true", help="also write the plate report (report/report.html) and wells.csv")
    sp.add_argument("--controls", default=None, help="the control column (default: the one naming 'control')")
    sp.add_argument("--doses", default=None, help="the dose column (default: the one naming 'dose' or 'conc')")
    _batch_args(sp, "slices")


def _add_heatmap(sub: Any) -> None:
    sp = sub.add_parser("heatmap", help="plate heatmaps of per-well means from a per-image CSV (e.g. Image.csv)")
    sp.add_argument("table", type=Path, help="per-image CSV with well row and column columns")
    sp.add_argument("-o", "--output", required=True, type=Path, help="PNG to write")
    sp.add_argument("--measure", action="append", required=True, help="a column to average per well; repeat")
    sp.add_argument("--row", default="Metadata_Row")
    sp.add_argument("--column", default="Metadata_Column")


def _add_convert(sub: Any) -> None:
    sp = sub.add_parser("convert", help="add TorchScript or ONNX weights to a package folder (verified first)")
    sp.add_argument("source", help="a package folder or its rdf")
    sp.add_argument("--to", required=True, choices=("torchscript", "onnx"))
    sp.add_argument("--trust", action="store_true", default=None,
                    help="run a state dict's architecture code from a package that is not a folder you made")


def _add_package(sub: Any) -> None:
    sp = sub.add_parser("package", help="bundle weights, a sample image and metadata as a zoo package")
    sp.add_argument("weights", help=".onnx, TorchScript .pt, .keras or .h5 file")
    sp.add_argument("--sample", required=True, help="a sample image (tif, png, npy): the test input")
    sp.add_argument("-o", "--output", required=True, type=Path, help="package folder, or a .zip")
    sp.add_argument("--name", required=True)
    sp.add_argument("--description", required=True)
    sp.add_argument("--author", action="append", required=True, help="repeat for several authors")
    sp.add_argument("--license", default="MIT")
    sp.add_argument("--cite", action="append", default=[], help="'TEXT|DOI-or-URL'; repeat for several")
    sp.add_argument("--tag", action="append", default=[])
    sp.add_argument("--preprocessing", default="[]", help='JSON list, e.g. [{"id": "zero_mean_unit_variance"}]')
    sp.add_argument("--postprocessing", default="[]", help='JSON list, e.g. [{"id": "sigmoid"}]')
    sp.add_argument("--size", default="16,16", help="fixed side (512) or MIN,STEP (16,16)")
    sp.add_argument("--halo", type=int, default=0)
    sp.add_argument("--instances", default=None, help="JSON recipe for objects, stored in the rdf")
    sp.add_argument("--overwrite", action="store_true")


def _add_finetune(sub: Any) -> None:
    sp = sub.add_parser("finetune", help="fine-tune a model on annotated images (image + label pairs) into a new package")
    sp.add_argument("source", help="the package to start from (pytorch_state_dict or torchscript weights)")
    sp.add_argument("images", help="folder of images")
    sp.add_argument("labels", help="folder of label images (0 background, 1..N objects), named as the images")
    sp.add_argument("-o", "--output", required=True, type=Path, help="the new package folder, or a .zip")
    from .training import finetune

    def ft(name: str) -> Any:
        return _core_default(finetune, name)

    sp.add_argument("--epochs", type=_positive, default=None, help=f"at most this many passes over the training images ({ft('epochs')})")
    sp.add_argument("--minutes", type=float, default=None, help="stop training after N minutes (best epoch kept)")
    sp.add_argument("--batch-size", type=_positive, default=None, help=f"crops per step ({ft('batch_size')})")
    sp.add_argument("--crop", type=_positive, default=None, help="crop side (default: smallest valid size >= 256)")
    sp.add_argument("--learning-rate", type=float, default=None, help=f"Adam's learning rate ({ft('learning_rate'):g})")
    sp.add_argument("--holdout", type=float, default=None,
                    help=f"fraction of pairs held out to pick the epoch and recipe ({ft('holdout')})")
    sp.add_argument("--patience", type=_positive, default=None,
                    help=f"stop after N epochs without a better held-out F1 ({ft('patience')})")
    sp.add_argument("--seed", type=int, default=None, help=f"random seed ({ft('seed')})")
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    sp.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: all cores)")
    sp.add_argument("--name", default=None, help="the new package's name (default: the parent's + ' (fine-tuned)')")
    sp.add_argument("--trust", action="store_true", default=None,
                    help="run a state dict's architecture code from a package that is not a folder you made")
    sp.add_argument("--overwrite", action="store_true")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_compare(sub: Any) -> None:
    sp = sub.add_parser("compare", help="run several models on your images and say which segments them best")
    sp.add_argument("models", nargs="+", metavar="MODEL", help="package folders, zips, rdfs, URLs or zoo ids")
    sp.add_argument("images", help="folder of images (with --labels); else an image file, folder or glob")
    sp.add_argument("--labels", default=None, help="folder of label images named as the images: score each model")
    sp.add_argument("-o", "--output", required=True, type=Path,
                    help="folder for compare.csv, compare_images.csv, compare.html and overlays/")
    sp.add_argument("--engine", default="auto", help=engines.engine_help() + " (every model)")
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    sp.add_argument("--threads", type=_positive, default=None, help="engine threads (default: all cores)")
    sp.add_argument("--trust", action="store_true", default=None,
                    help="run code shipped in downloaded packages (architecture files, custom ops, Keras Lambda layers)")
    _python_arg(sp)
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_search(sub: Any) -> None:
    sp = sub.add_parser("search", help="find models in the BioImage Model Zoo and on this machine")
    sp.add_argument("text", nargs="?", default=None, help="words that must all appear in the name, description, id or tags")
    sp.add_argument("--tag", action="append", default=[], help="a tag the model must carry; repeat for several")
    sp.add_argument("--task", default=None, help="e.g. instance-segmentation, denoising")
    sp.add_argument("--runs-here", action="store_true", help="only models that run with what is installed here")
    sp.add_argument("--local", action="store_true", help="only the models on this machine (no zoo listing)")
    sp.add_argument("--refresh", action="store_true", help="fetch the zoo's listing even if the cached one is recent")
    sp.add_argument("--json", action="store_true", help="every field of every entry, as JSON")


def _add_fetch(sub: Any) -> None:
    sp = sub.add_parser("fetch", help="download a model into the cache and verify every file")
    sp.add_argument("source", help="zoo id, URL or DOI")


def _add_env(sub: Any) -> None:
    sp = sub.add_parser("env", help="make a Python environment for models (RunDLModel's 'Python environment for the model')")
    env_sub = sp.add_subparsers(dest="env_command", required=True)
    ep = env_sub.add_parser("create", help="a venv at PATH with dlmodel, bioimageio.spec and the engines")
    ep.add_argument("path", type=Path)
    ep.add_argument("--engines", default="onnx", help="comma-separated: onnx, torch, tensorflow (default: onnx)")
    ep.add_argument("--python", default=None, help="the Python the venv is made from (default: this one; 3.9 or newer)")
    ep.add_argument("--for", dest="for_model", default=None, metavar="MODEL",
                    help="install what the model's own environment file pins (e.g. CAREamics' careamics and torch)")
    ep.add_argument("--print", action="store_true", help="print the commands instead of running them")
    ep = env_sub.add_parser("add", help="approve an existing environment on this machine (checked: a Python with dlmodel)")
    ep.add_argument("path", type=Path, help="the environment's python, or its folder")
    ep = env_sub.add_parser("remove", help="withdraw the approval of an environment")
    ep.add_argument("path", type=Path)
    env_sub.add_parser("list", help="the environments approved on this machine")


# one adder per command, in the order `dlmodel --help` lists them
_COMMANDS = (
    _add_info,
    _add_test,
    _add_predict,
    _add_plate,
    _add_cellprofiler,
    _add_heatmap,
    _add_convert,
    _add_package,
    _add_finetune,
    _add_compare,
    _add_search,
    _add_fetch,
    _add_env,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlmodel", description="Run BioImage Model Zoo models on your images.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "allow_unapproved_python", False) and getattr(args, "python", None):
            from . import approvals, client

            approvals.allow_for_this_process(client.find_python(args.python))
        code = {"info": _info, "test": _test, "predict": _predict, "convert": _convert,
                "package": _package, "finetune": _finetune, "heatmap": _heatmap, "plate": _plate, "env": _env,
                "search": _search, "fetch": _fetch, "compare": _compare,
                "cellprofiler": _cellprofiler}[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's exit handler
        return code
    except DLModelError as e:
        logging.getLogger("dlmodel").debug("dlmodel: error", exc_info=True)  # the cause, for logs
        print(f"dlmodel: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlmodel: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `dlmodel info ... | head` closed our stdout: not an error; keep Python quiet at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _load(args: argparse.Namespace, engine: Optional[str] = None):
    from . import client

    if args.python and (getattr(args, "workers", None) or getattr(args, "scheduler", None)):
        raise DLModelError("--python runs the model in one worker process: use it without --workers/--scheduler")
    return client.load(args.source, engine=engine or getattr(args, "engine", None) or "auto",
                       device=getattr(args, "device", "auto"), threads=getattr(args, "threads", None),
                       trust=getattr(args, "trust", None), python=args.python)


def _job_engine(args: argparse.Namespace, model: Any) -> str:
    # "fastest" travels to the workers, which measure on the images' tiles (once, then cached)
    return "fastest" if getattr(args, "engine", None) == "fastest" else model.weights_format


def _info(args: argparse.Namespace) -> int:
    from . import client

    info = client.describe(client.read_spec(args.source, args.python))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']}" + (f"  (id {info['id']}, version {info['version']})" if info["id"] else ""))
    print(f"  {info['description']}")
    print(f"  authors: {', '.join(info['authors'])}; license: {info['license']}")
    if info["format_note"]:
        print(f"  format {info['format_version']}: {info['format_note']}")
    for c in info["cite"]:
        print(f"  cite: {c}")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            shape = ", ".join(f"{k}={v}" for k, v in t["shape"].items())
            halo = f"; halo {t['halo']}" if t["halo"] else ""
            print(f"  {kind[:-1]} {t['id']!r}: axes {t['axes']} ({shape}; {t['dtype']}{halo})")
            for step in ("preprocessing", "postprocessing"):
                if t[step]:
                    print(f"    {step}: {' -> '.join(t[step])}")
    for fmt, w in info["weights"].items():
        print(f"  weights {fmt}: {'engine installed' if w['installed'] else 'engine not installed'}")
    from .fastest import measured_here

    for line in measured_here(info["rdf_sha256"]):  # engine="fastest"'s measured choices on this machine
        print(f"  engine='fastest' {line}")
    print(f"  objects: {info['objects']}")
    for note in info["notes"]:
        print(f"  note: {note}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from . import catalog

    found = catalog.search(args.text, tags=args.tag, task=args.task, runs_here=True if args.runs_here else None,
                           zoo=not args.local, refresh=args.refresh)
    if found.note:
        print(f"dlmodel: {found.note}", file=sys.stderr)
    if args.json:
        print(json.dumps([e.as_dict() for e in found.entries], indent=2))
        return 0
    width = shutil.get_terminal_size((100, 20)).columns
    print(_table([(catalog.display_id(e), e.name, e.task or "-", "3D" if e.is_3d else "2D", e.family,
                   ",".join(_short(f) for f in e.weight_formats), "yes" if e.runs_here else (e.needs or "no"))
                  for e in found.entries],
                 ("id", "name", "task", "dim", "family", "weights", "runs here"), width, shrink=(2, 5, 6, 1, 0)))
    print(f"{len(found.entries)} model(s); dlmodel info ID shows a card, dlmodel fetch ID downloads one")
    return 0


def _short(weights_format: str) -> str:
    return {"pytorch_state_dict": "torch", "tensorflow_saved_model_bundle": "tf", "torchscript": "tscript",
            "keras_hdf5": "keras", "keras_v3": "keras"}.get(weights_format, weights_format)


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], width: int, shrink: Sequence[int] = ()) -> str:
    """Rows as aligned columns that fit ``width``: the columns in ``shrink`` are cut (with an
    ellipsis) in that order, each down to 12 characters, before the next is touched."""
    cols = list(zip(header, *rows)) if rows else [(h,) for h in header]
    widths = [max(len(str(c)) for c in col) for col in cols]
    for i in shrink:
        while sum(widths) + 2 * (len(widths) - 1) > width and widths[i] > 12:
            widths[i] -= 1
    cut = lambda text, w: text if len(text) <= w else text[: w - 1] + "…"  # noqa: E731
    lines = ["  ".join(cut(str(c), w).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _fetch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import sources
    from .package import open_spec

    bars: dict = {}

    def progress(url: str, done: int, total: Optional[int]) -> None:
        if url not in bars:
            bars[url] = tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1][:30], leave=False)
        bars[url].update(done - bars[url].n)

    try:
        with sources.reporting(progress):  # every file the rdf names, downloaded and its sha256 checked
            spec, resolved = open_spec(args.source)
    finally:
        for bar in bars.values():
            bar.close()
    print(f"dlmodel: {spec.name!r} is in {resolved.rdf.parent} (every file verified); "
          f"use it as {args.source} (dlmodel info {args.source})")
    return 0


def _test(args: argparse.Namespace) -> int:
    if args.engine:
        model = _load(args, args.engine)
        formats = [model.weights_format]
    else:
        model = _load(args)
        formats = [f for f, w in model.info()["weights"].items() if w["installed"]]
    reports = [model.test(fmt) for fmt in formats]
    for report in reports:
        print(report.summary())
    # a format that would run the package's code is left out when not trusted, unless it was asked for
    ran = [r for r in reports if args.engine or not r.untrusted]
    ok = bool(ran) and all(r.ok for r in ran)
    for step in model.left_out:
        print(f"note: not run by dlmodel (not recognised): {step}")
    untested = [r.weights_format for r in reports if r not in ran]
    print(f"{model.spec.name}: {'passed' if ok else 'FAILED'} ({', '.join(r.weights_format for r in ran) or 'no format'})"
          + (f"; not tested without --trust: {', '.join(untested)}" if untested else ""))
    return 0 if ok else 1


def _predict(args: argparse.Namespace) -> int:
    from .runs import Job, collect_confidence, prepare_output, run

    if args.augmentations is not None and not args.confidence:
        raise DLModelError("--augmentations sets how many copies --confidence predicts: add --confidence")
    paths = io.find_images(args.inputs)
    if not paths:
        raise DLModelError(f"no images found in {' '.join(args.inputs)}")
    model = _load(args)  # also checks the model before any worker starts
    job = Job(source=str(model.spec.rdf_path) if model.local else args.source, out_dir=args.output,
              output_ids=[o.id for o in model.spec.outputs], engine=_job_engine(args, model), device=args.device,
              threads=args.threads, trust=args.trust, axes=args.axes, tile=args.tile, batch_size=args.batch_size,
              fmt=args.format, labels=model.makes_objects if args.labels is None else args.labels,
              confidence=args.confidence, augmentations=args.augmentations, objects=_object_choices(args, model))
    if job.objects and not job.labels:
        raise DLModelError("the object options (--method, --threshold, --min-size, ...) choose how --labels makes "
                           "objects: add --labels")
    tasks = job.tasks(paths)  # inputs whose outputs would overwrite each other: refused before anything runs
    prepare_output(args.output)
    t0 = time.perf_counter()
    summary = run(job, tasks, model, workers=args.workers, scheduler=args.scheduler, resume=args.resume)
    print(
        f"dlmodel: predicted {summary.done} of {len(paths)} images with {model.spec.name!r} "
        + (f"({summary.skipped} already done) " if summary.skipped else "")
        + f"{_where(args, model)} in {time.perf_counter() - t0:.1f} s; {len(summary.failures)} failed; "
        + f"{summary.written} files written to {args.output}"
    )
    table = collect_confidence(job, tasks)
    if table is not None:
        print(f"dlmodel: confidence per image: {table}")
    _failures(summary.failures)
    return 1 if summary.failures else 0


def _object_choices(args: argparse.Namespace, model) -> Tuple[Tuple[str, Any], ...]:
    """The object flags as Model.labels' choices (None: not given), checked against the model's
    recipe by the core before any image runs (an output the recipe does not use is refused)."""
    from . import client

    choices = {"method": args.method, "output": args.objects_output,
               "channel": None if args.objects_channel is None else args.objects_channel - 1,
               "threshold": args.threshold, "diameter": args.diameter, "min_size": args.min_size,
               "fill_holes": args.fill_holes, "discard_border": args.discard_border}
    given = {k: v for k, v in choices.items() if v is not None and not (k == "method" and v == "auto")}
    recipe = client.resolve_recipe(model.spec.instance_recipe, getattr(args, "python", None), **given)
    unused = [k for k in ("threshold", "diameter") if k in given and recipe.get(k) != given[k]]
    if unused:  # the package's own recipe keeps its own: a flag must not look as if it had changed something
        raise DLModelError(f"--{unused[0]} is not used by the package's own recipe ({recipe.get('method')}): "
                           "choose --method watershed or threshold to set it")
    return tuple(sorted(given.items()))


def _where(args: argparse.Namespace, model) -> str:
    if args.scheduler:
        return f"on {args.scheduler}"
    return f"on {args.workers} workers" if args.workers else f"({model.weights_format} on {model.device})"


def _failures(failures) -> None:
    if failures:
        print("dlmodel: failed:\n  " + "\n  ".join(failures), file=sys.stderr)


def _plate(args: argparse.Namespace) -> int:
    from . import platerun
    from .outputs import check_beside_inputs, check_output_files
    from .runs import prepare_output, run

    if args.augmentations is not None and not args.confidence:
        raise DLModelError("--augmentations sets how many copies --confidence predicts: add --confidence")
    folder = Path(args.images)
    if not folder.is_dir():
        raise DLModelError(f"{folder} is not a folder")
    if not args.report and any(v is not None for v in (args.controls, args.doses, args.negative, args.positive, args.readout)):
        raise DLModelError("--controls, --doses, --negative, --positive and --readout choose what --report shows: add --report")
    sites = platerun.parse_layout(io.find_images([str(folder)]), **_given(args, "layout"))
    if args.metadata:  # checked whole before any image is segmented
        named = [c for c in (args.controls, args.doses) if c is not None] if args.report else []
        platerun.read_metadata(args.metadata, numeric=[args.doses] if args.report and args.doses else [], present=named)
    model = _load(args)
    job = platerun.PlateJob(source=str(model.spec.rdf_path) if model.local else args.source, engine=model.weights_format,
                            device=args.device, threads=args.threads, trust=args.trust, out_dir=args.output,
                            confidence=args.confidence, augmentations=args.augmentations,
                            objects=_object_choices(args, model), **_given(args, "model_channel", "ring"),
                            **({"measure_channels": tuple(args.measure_channel)} if args.measure_channel else {}))
    tasks = job.tasks(sites)
    # the plate's tables and the report never replace the metadata, nor a file of the user's beside the images
    written = job.tables() + ([args.output / "report.html", args.output / "screen.csv"] if args.report else [])
    check_output_files(written, [args.metadata] if args.metadata else [])
    check_beside_inputs(written, [i for t in tasks for i in t.inputs])
    prepare_output(args.output)
    t0 = time.perf_counter()
    summary = run(job, tasks, model, workers=args.workers, scheduler=args.scheduler, resume=args.resume)
    paths = platerun.collect(job, tasks, metadata=args.metadata)
    print(f"dlmodel: segmented {summary.done} of {len(tasks)} sites with {model.spec.name!r} "
          + (f"({summary.skipped} already done) " if summary.skipped else "")
          + f"{_where(args, model)} in {time.perf_counter() - t0:.1f} s; {len(summary.failures)} failed")
    print(f"dlmodel: plate written: {paths['wells']} (per well), {paths['objects']} (per object), heatmaps in {args.output}")
    if args.report:
        from .report import plate_report

        about = {"model": f"{model.spec.name} ({model.weights_format} on {model.device})", "images": str(folder)}
        if args.metadata:
            about["well metadata"] = str(args.metadata)
        report = plate_report(paths["wells"], args.output, readouts=args.readout, controls=args.controls, doses=args.doses,
                              negative=args.negative, positive=args.positive, about=about, title=folder.resolve().name)
        print(f"dlmodel: report written: {report['report']}" + (f" (statistics: {report['screen']})" if "screen" in report else ""))
    _failures(summary.failures)
    return 1 if summary.failures else 0


def _cellprofiler(args: argparse.Namespace) -> int:
    from .pipelines import run_pipeline

    done = run_pipeline(args.pipeline, args.images, args.output, workers=args.workers, scheduler=args.scheduler,
                        resume=args.resume, per_task=args.per_task,
                        group_by=[k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by else (),
                        cellprofiler=args.cellprofiler, plugins=args.plugins_directory, readers=args.enable_readers or (),
                        threads=args.threads, report=args.report, metadata=args.metadata, controls=args.controls,
                        doses=args.doses, timeout=args.timeout)
    s = done.summary
    where = f"on {args.scheduler}" if args.scheduler else (f"on {args.workers} workers" if args.workers else "here")
    print(f"dlmodel: ran {s.done} of {done.slices} slices ({done.image_sets} image sets) {where}"
          + (f" ({s.skipped} already done)" if s.skipped else "") + f" in {done.seconds:.1f} s; {len(s.failures)} failed")
    if done.tables:
        print(f"dlmodel: merged tables: {', '.join(str(p) for p in done.tables.values())}")
    if done.screen:
        print(f"dlmodel: screen statistics: {done.screen}" + (f"; report: {done.report}" if done.report else ""))
    for note in done.notes:
        print(f"dlmodel: note: {note}")
    _failures(s.failures)
    return 1 if s.failures else 0


def _heatmap(args: argparse.Namespace) -> int:
    from .plates import summarise

    png, wells = summarise(args.table, args.measure, args.output, row=args.row, column=args.column)
    print(f"dlmodel: plate heatmap of {', '.join(args.measure)} over {wells} wells: {png}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .converters import convert

    rdf = convert(args.source, args.to, trust=args.trust)
    print(f"dlmodel: added {args.to} weights to {rdf} (they reproduce the package's test outputs)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .comparison import compare

    result = compare(args.models, args.images, labels=args.labels, out=args.output, engine=args.engine,
                     device=args.device, threads=args.threads, trust=args.trust, python=args.python,
                     progress=not args.no_progress)
    header, rows = result.table()
    print(_table(rows, header, min(shutil.get_terminal_size((100, 20)).columns, 100), shrink=(0,)))
    for line in result.notes():
        print(line)
    f = result.files
    print(f"dlmodel: wrote {f['csv']} (per model), {f['images_csv']} (per image), {f['html']} (overlays in "
          f"{f['overlays']})")
    return 1 if result.failures else 0


def _finetune(args: argparse.Namespace) -> int:
    from .training import finetune

    result = finetune(args.source, args.images, args.labels, args.output, minutes=args.minutes, crop=args.crop,
                      device=args.device, threads=args.threads, trust=args.trust, name=args.name, overwrite=args.overwrite,
                      progress=not args.no_progress,
                      **_given(args, "epochs", "batch_size", "learning_rate", "holdout", "patience", "seed"))
    f = result.facts
    print(f"dlmodel: wrote {result.rdf} after {f['epochs']} epoch(s) ({f['stopped']}; weights of epoch {f['best_epoch']}); "
          f"held-out F1 {f['held_out_f1_before']:.3f} -> {f['held_out_f1_after']:.3f}; it validates and reproduces "
          "its test outputs")
    return 0


def _env(args: argparse.Namespace) -> int:
    from . import approvals, envs

    if args.env_command == "add":
        entry = approvals.approve(args.path)
        print(f"dlmodel: approved {entry['python']} (Python {entry['version']}, dlmodel from {entry['dlmodel']}); "
              f"listed in {approvals.registry_path()}")
        return 0
    if args.env_command == "remove":
        if not approvals.remove(args.path):
            raise DLModelError(f"{args.path} is not an approved environment (dlmodel env list)")
        print(f"dlmodel: {args.path} is no longer approved")
        return 0
    if args.env_command == "list":
        for entry in approvals.approved():
            print(f"{entry['python']}\t(dlmodel from {entry.get('dlmodel')}; {entry.get('how')}, {entry.get('added')})")
        return 0
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    requirements = envs.requirements_for(args.for_model) if args.for_model else []
    if args.print:
        for cmd in envs.install_commands(args.path, engines, args.python, requirements):
            print(shlex.join(cmd))
        return 0
    python = envs.create(args.path, engines, args.python, requirements)
    print(f"dlmodel: made and approved {args.path} ({', '.join(engines) or 'no engine'}); point RunDLModel's "
          f"'Python environment for the model' (or --python, python=) at {python}")
    return 0



def _package(args: argparse.Namespace) -> int:
    from .outputs import check_replaceable
    from .packaging import package

    if args.overwrite:  # package() sees the sample as an array: its file is an input all the same
        check_replaceable(args.output, [args.weights, args.sample])
    sample, axes = io.read_image(Path(args.sample))
    size = [int(s) for s in args.size.split(",")]
    cites = []
    for c in args.cite:
        text, _, ref = c.partition("|")
        cites.append({"text": text, ("doi" if ref.startswith("10.") else "url"): ref} if ref else {"text": text, "url": "https://bioimage.io"})
    try:
        pre, post = json.loads(args.preprocessing), json.loads(args.postprocessing)
        recipe = json.loads(args.instances) if args.instances else None
    except json.JSONDecodeError as e:
        raise DLModelError(f"--preprocessing/--postprocessing/--instances must be JSON: {e}") from e
    rdf = package(args.weights, sample, args.output, name=args.name, description=args.description,
                  authors=args.author, license=args.license, cite=cites, tags=args.tag, sample_axes=axes or "yx",
                  preprocessing=pre, postprocessing=post, size=size[0] if len(size) == 1 else tuple(size),
                  halo=args.halo, instances=recipe, overwrite=args.overwrite)
    print(f"dlmodel: wrote {rdf}; it validates and reproduces its test outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
