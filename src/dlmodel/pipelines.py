"""`dlmodel cellprofiler`: a whole screen's CellProfiler pipeline in slices of image sets on the
batch engine (:mod:`dlmodel.runs`, here or on Dask), merged into one set of tables.

How a run goes:

1. The pipeline is checked before any work (:func:`check_pipeline`): a text ``.cppipe`` with an
   ExportToSpreadsheet, no module that starts a program or writes outside ``-o``, every module
   known to CellProfiler or to the plugins folder. A ``.cppipe`` is a colleague's file.
2. The image sets are listed once by CellProfiler's own code (``cellprofiler_core``: the input
   modules' ``prepare_run``, in a child process of the CellProfiler's Python, or of this one), so
   the slices are CellProfiler's own image-set numbers (``-f/-l``).
3. Each slice is a task of the batch engine: a headless ``cellprofiler -c -r -f F -l L`` into a
   part folder of its own, renamed to ``slices/slice_F-L`` when complete (a killed slice leaves
   only a part folder, which ``--resume`` removes and runs again); its log stays in ``logs/``.
4. :mod:`dlmodel.cellprofiler_merge` joins the slices' tables (ImageNumber renumbered, object
   rows kept with their image) and the statistics are computed on the merged Image table
   (:mod:`dlmodel.screen`, plus the plate report).

CalculateStatistics is left out of the slices' pipeline: on a slice it measures that slice only
(or fails on one holding one kind of control); the merged plate's statistics replace it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import DLModelError
from .runs import Summary, Task

PathLike = Union[str, Path]
_HOST = socket.gethostname().replace(".", "_")
#: modules a shared .cppipe may not run unasked: what they would do outside the output folder
REFUSED_MODULES = {
    "RunImageJMacro": "starts a program (ImageJ/Fiji) named in the pipeline",
    "CreateBatchFiles": "writes a batch file to a folder of its own; give the .cppipe without it",
    "ExportToDatabase": "writes to a database outside -o",
}
#: where CellProfiler writes: a location setting whose value is one of these is outside -o
_OUTSIDE = ("Elsewhere...", "Default Input Folder", "Same folder as image", "Default Input Folder sub-folder")
INPUT_MODULES = ("Images", "Metadata", "NamesAndTypes", "Groups", "LoadData")


class PipelineError(DLModelError):
    """A pipeline, an image folder or a CellProfiler that cannot run: one line naming the file."""


@dataclass(frozen=True)
class Module:
    """One module of a text .cppipe: its name, number, whether enabled, and its settings."""

    name: str
    number: int
    enabled: bool
    settings: Tuple[Tuple[str, str], ...]
    text: str  # the module's lines as in the file


def read_pipeline(path: PathLike) -> Tuple[str, List[Module]]:
    """A text pipeline (``.cppipe``, as CellProfiler 4 and 5 save it): its header and modules.
    One line naming the file when it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"pipeline {path} cannot be read: {getattr(e, 'strerror', None) or e}") from e
    if not text.startswith("CellProfiler Pipeline"):
        raise PipelineError(f"pipeline {path} is not a CellProfiler text pipeline (.cppipe; a Batch_data.h5 or "
                            ".cpproj is not taken: save the pipeline with File > Export > Pipeline)")
    header, _, body = text.partition("\n\n")
    modules = []
    for block in re.split(r"\n\s*\n", body.strip("\n")):
        lines = block.splitlines()
        m = re.match(r"^(\w+):\[module_num:(\d+)\|(.*)\]\s*$", lines[0]) if lines else None
        if not m:
            raise PipelineError(f"pipeline {path}: cannot read the module starting {lines[0][:60]!r}" if lines
                                else f"pipeline {path} has an empty module")
        settings = tuple(tuple(line.strip().split(":", 1)) if ":" in line else (line.strip(), "")
                         for line in lines[1:])
        modules.append(Module(m.group(1), int(m.group(2)), "enabled:False" not in m.group(3), settings, block))
    return header, modules


def check_pipeline(path: PathLike) -> List[Module]:
    """Refuse, before any work, a pipeline this runner cannot or must not run: without an
    enabled ExportToSpreadsheet (nothing to merge), with a module that starts a program or
    writes outside ``-o`` (a .cppipe is a colleague's file). One line naming the file and module."""
    path = Path(path)
    _, modules = read_pipeline(path)
    enabled = [m for m in modules if m.enabled]
    if not any(m.name == "ExportToSpreadsheet" for m in enabled):
        raise PipelineError(f"pipeline {path} has no ExportToSpreadsheet module: the slices would write no tables to "
                            "merge; add one (Image and object tables) at the end")
    for m in enabled:
        if m.name in REFUSED_MODULES:
            raise PipelineError(f"pipeline {path}: {m.name} #{m.number} {REFUSED_MODULES[m.name]}; this runner does not "
                                "run it")
        if m.name in INPUT_MODULES:
            continue  # they read (the metadata CSV): they write nothing
        for name, value in m.settings:
            if not re.search(r"(output|save).*(location|folder|directory)", name, re.I):
                continue
            where, _, sub = value.partition("|")
            if where in _OUTSIDE or ".." in Path(sub).parts or (where.endswith("sub-folder") and Path(sub).is_absolute()):
                raise PipelineError(f"pipeline {path}: {m.name} #{m.number} writes to {value!r} ({name}), outside the "
                                    "output folder; set it to Default Output Folder (or a sub-folder of it)")
    return modules


def slice_pipeline_text(path: PathLike) -> str:
    """The pipeline each slice runs: the file's text without CalculateStatistics (it would score
    one slice, or fail on a slice with one kind of control; the merged plate is scored instead)."""
    header, modules = read_pipeline(path)
    kept = [m for m in modules if m.name != "CalculateStatistics"]
    header = re.sub(r"^ModuleCount:\d+$", f"ModuleCount:{len(kept)}", header, flags=re.M)
    blocks = [re.sub(r"module_num:\d+\|", f"module_num:{i}|", m.text, count=1) for i, m in enumerate(kept, start=1)]
    return header + "\n\n" + "\n\n".join(blocks) + "\n"


# --- the image sets, listed by CellProfiler's own code -------------------------------------------

_LIST = r"""
import json, logging, os, sys
errors = []
class Keep(logging.Handler):
    def emit(self, record):
        text = record.getMessage().strip()
        if record.levelno >= logging.ERROR or "rror" in text:
            errors.append(text.splitlines()[0] if text else "")
logging.getLogger().addHandler(Keep(logging.WARNING))
args = json.loads(sys.argv[1])
import cellprofiler_core.preferences as prefs
prefs.set_headless()
if args["plugins"]:
    prefs.set_plugin_directory(args["plugins"])
from cellprofiler_core.utilities.core.modules import fill_modules, get_module_names
fill_modules()
try:
    from cellprofiler_core.utilities.core.plugins import load_plugins
except ImportError:  # CellProfiler 4: fill_modules loads the plugins
    pass
else:
    if args["plugins"]:
        load_plugins(modules_only=True)
known = set(get_module_names())
for name in args["modules"]:
    if name not in known:
        print(json.dumps({"missing": name})); sys.exit(0)
prefs.set_default_image_directory(args["images"])
prefs.set_default_output_directory(args["scratch"])
from cellprofiler_core.pipeline import Pipeline
from cellprofiler_core.measurement import Measurements
from cellprofiler_core.image import ImageSetList
from cellprofiler_core.workspace import Workspace
p = Pipeline()
p.load(args["pipeline"])
for m in reversed(list(p.modules())):
    if not m.is_input_module():
        p.remove_module(m.module_num)
paths = [os.path.join(d, f) for d, _, fs in os.walk(os.path.abspath(args["images"])) for f in sorted(fs)]
p.add_pathnames_to_file_list([q for q in paths if os.path.isfile(q)])
mods = list(p.modules())
try:  # CellProfiler 5 extracts automatic metadata headless only when told (as its own headless run does)
    from cellprofiler_core.constants.modules.metadata import X_AUTOMATIC_EXTRACTION
    from cellprofiler_core.modules.metadata import Metadata
    if len(mods) > 1 and isinstance(mods[1], Metadata) and mods[1].wants_metadata.value and any(
            g.extraction_method.value == X_AUTOMATIC_EXTRACTION for g in mods[1].extraction_methods):
        p.set_needs_headless_extraction(True)
except (ImportError, AttributeError):
    pass
java = None
try:  # CellProfiler 4 makes its image sets in Java (as its own headless run does)
    from importlib.metadata import version
    if version("cellprofiler-core").startswith("4."):
        from cellprofiler_core.utilities import java
        java.start_java()
except Exception:
    java = None
meas = Measurements()
ws = Workspace(p, None, None, None, meas, ImageSetList())
ok = p.prepare_run(ws)
if java is not None:
    java.stop_java()
if not ok and not errors and not len(meas.get_image_numbers()):  # nothing wrong but no file taken
    print(json.dumps({"sets": [], "group_keys": []})); sys.exit(0)
if not ok:
    said = [e for e in errors if e and not e.startswith("Failed to prepare run")]
    print(json.dumps({"error": "CellProfiler could not make the image sets: " + (said[-1] if said else "see its messages")}))
    sys.exit(0)
keys, groupings = p.get_groupings(ws)
numbers = [int(n) for n in meas.get_image_numbers()]
feats = [f for f in meas.get_feature_names("Image") if f.startswith(("FileName_", "PathName_", "Metadata_", "Group_"))]
sets = []
for n in numbers:
    row = {}
    for f in feats:
        v = meas["Image", f, n]
        row[f] = v.item() if hasattr(v, "item") else v
    sets.append({"number": n, "values": row})
print(json.dumps({"sets": sets, "group_keys": list(keys)}))
"""


@dataclass(frozen=True)
class ImageSet:
    """One image set as CellProfiler numbers it: its files and metadata."""

    number: int
    values: Dict[str, Any]

    def files(self) -> List[Path]:
        names = sorted(k[len("FileName_"):] for k in self.values if k.startswith("FileName_"))
        return [Path(str(self.values.get(f"PathName_{n}", ""))) / str(self.values[f"FileName_{n}"]) for n in names]


def lister_python(cellprofiler: PathLike) -> str:
    """The Python that lists the image sets: the given CellProfiler's own where it has
    cellprofiler_core (so its version numbers the image sets), else this one."""
    beside = Path(cellprofiler).resolve().parent / "python"
    for python in (beside, Path(cellprofiler).parent / "python", Path(sys.executable)):
        if python.exists():
            probe = subprocess.run([str(python), "-c", "import cellprofiler_core"], capture_output=True, timeout=120)
            if probe.returncode == 0:
                return str(python)
    raise PipelineError(f"no Python with cellprofiler_core beside {cellprofiler} or running dlmodel: the image sets "
                        "cannot be listed (install dlmodel with the cellprofiler extra)")


def list_image_sets(pipeline: PathLike, images: PathLike, cellprofiler: PathLike, plugins: Optional[PathLike],
                    modules: Sequence[str], scratch: PathLike) -> Tuple[List[ImageSet], List[str]]:
    """The pipeline's image sets over ``images`` as CellProfiler makes them (its input modules'
    ``prepare_run``, in a child process: CellProfiler's preferences and plugins are global state),
    and the pipeline's grouping keys. One line naming the file when a module is unknown (a plugin
    that is absent) or no image set is made."""
    python = lister_python(cellprofiler)
    args = {"pipeline": str(Path(pipeline).resolve()), "images": str(Path(images).resolve()),
            "plugins": str(Path(plugins).resolve()) if plugins else "", "scratch": str(Path(scratch).resolve()),
            "modules": list(modules)}
    Path(scratch).mkdir(parents=True, exist_ok=True)
    res = subprocess.run([python, "-c", _LIST, json.dumps(args)], capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    last = next((line for line in reversed(res.stdout.splitlines()) if line.startswith("{")), None)
    if res.returncode != 0 or last is None:
        tail = [line for line in res.stderr.strip().splitlines() if line.strip()]
        raise PipelineError(f"pipeline {pipeline}: CellProfiler ({python}) could not list its image sets: "
                            f"{tail[-1] if tail else 'exit code ' + str(res.returncode)}")
    found = json.loads(last)
    if "missing" in found:
        where = f"nor in the plugins folder {plugins}" if plugins else "and no plugins folder was given (--plugins-directory)"
        raise PipelineError(f"pipeline {pipeline} needs the module {found['missing']}, which is not in CellProfiler "
                            f"{where}")
    if "error" in found:
        raise PipelineError(f"pipeline {pipeline}: {found['error']}")
    sets = [ImageSet(s["number"], s["values"]) for s in found["sets"]]
    if not sets:
        raise PipelineError(f"pipeline {pipeline} makes no image set from {images}: no file there matches its "
                            "Images/NamesAndTypes rules")
    return sets, found["group_keys"]


def slices(sets: Sequence[ImageSet], per_task: Optional[int] = None, group_by: Sequence[str] = (),
           pipeline: PathLike = "the pipeline") -> List[List[ImageSet]]:
    """The image sets in slices: ``per_task`` consecutive sets each, or one slice per value of
    the ``group_by`` metadata (each group's sets must be consecutive, as CellProfiler's -f/-l
    runs a range)."""
    if group_by:
        missing = [k for k in group_by if k not in sets[0].values]
        if missing:
            have = sorted(k for k in sets[0].values if k.startswith("Metadata_"))
            raise PipelineError(f"--group-by {missing[0]}: pipeline {pipeline} gives its image sets no such metadata "
                                f"(it has: {', '.join(have) or 'none'})")
        out: List[List[ImageSet]] = []
        seen: Dict[Tuple, int] = {}
        for s in sets:
            key = tuple(str(s.values[k]) for k in group_by)
            if out and seen.get(key) == len(out) - 1:
                out[-1].append(s)
            elif key in seen:
                raise PipelineError(f"--group-by {','.join(group_by)}: the image sets of {'/'.join(key)} are not "
                                    "consecutive in CellProfiler's order, so no -f/-l range holds them; group by keys "
                                    "the image sets are ordered by (e.g. the plate, then the well)")
            else:
                seen[key] = len(out)
                out.append([s])
        return out
    n = per_task or 1
    return [list(sets[i:i + n]) for i in range(0, len(sets), n)]


# --- a slice: one headless CellProfiler run -------------------------------------------------------

def _die_with_parent() -> None:
    """In the child: die when the process that started it dies (a Dask worker killed mid-slice
    must not leave its CellProfiler writing on)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class PipelineJob:
    """A CellProfiler pipeline's slices on the batch engine: each task runs one slice headless
    and renames its part folder to ``slices/slice_F-L`` when it is complete."""

    pipeline: Path  # the slices' pipeline (written by run_pipeline into the output folder)
    images: Path
    out_dir: Path
    cellprofiler: str
    plugins: Optional[str] = None
    readers: Tuple[str, ...] = ()
    threads: Optional[int] = None  # engine threads of each CellProfiler (DLMODEL_THREADS); None: its default
    cwd: str = "."  # where relative model paths in the pipeline are found (the caller's folder)
    timeout: Optional[float] = None
    retries: int = 1  # more runs of a slice whose CellProfiler failed (a crash, memory) before it is reported
    unit: str = "image set"  # what the progress bar counts
    label: str = "cellprofiler"

    def model(self) -> None:
        """No model here: each CellProfiler loads its own (RunDLModel: once per slice)."""
        return None

    def tasks(self, parts: Sequence[Sequence[ImageSet]]) -> List[Task]:
        out = []
        for part in parts:
            first, last = part[0].number, part[-1].number
            files = tuple(f for s in part for f in s.files())
            out.append(Task(f"slice {first}-{last}", files, (self.out_dir / "slices" / f"slice_{first:06d}-{last:06d}",),
                            key=(first, last, tuple(s.number for s in part)), size=len(part)))
        return out

    def log(self, task: Task) -> Path:
        return self.out_dir / "logs" / f"{task.outputs[0].name}.log"

    def command(self, task: Task, out: Path) -> List[str]:
        first, last, _ = task.key
        cmd = [self.cellprofiler, "-c", "-r", "-p", str(self.pipeline), "-i", str(self.images), "-o", str(out),
               "-f", str(first), "-l", str(last), "-L", "INFO"]
        if self.plugins:
            cmd += ["--plugins-directory", str(self.plugins)]
        if self.readers:
            cmd += ["--enable-readers", *self.readers]
        return cmd

    def __call__(self, task: Task, model: Any = None) -> int:
        """Run the slice; a failed CellProfiler is run ``retries`` more times (a worker that dies
        is Dask's to retry), then the slice fails in one line with its image sets and its log."""
        log = self.log(task)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
        for attempt in range(self.retries + 1):
            try:
                self._once(task, log, attempt)
                return 1
            except DLModelError:
                if attempt == self.retries:
                    raise
        return 0  # not reached

    def _once(self, task: Task, log: Path, attempt: int) -> None:
        final = task.outputs[0]
        part = final.with_name(f".{final.name}.{_HOST}-{os.getpid()}.{time.monotonic_ns()}.part")
        part.mkdir(parents=True)
        env = dict(os.environ)
        if self.threads:
            env["DLMODEL_THREADS"] = str(self.threads)
        t0 = time.perf_counter()
        try:
            with open(log, "a") as f:  # every attempt's output, in order
                f.write(f"$ {' '.join(self.command(task, part))}    # attempt {attempt + 1}\n")
                f.flush()
                res = subprocess.run(self.command(task, part), cwd=self.cwd, stdout=f, stderr=subprocess.STDOUT,
                                     env=env, timeout=self.timeout, preexec_fn=_die_with_parent)
            seconds = time.perf_counter() - t0
            if res.returncode != 0:
                raise DLModelError(f"{self._what(task)} failed {attempt + 1} time(s) (CellProfiler exit code "
                                   f"{res.returncode}: {_last_error(log)}); log: {log}")
            self._check(task, part, log)
            with open(part / ".dlmodel-slice.json", "w") as f:
                json.dump({"seconds": seconds, "pid": os.getpid(), "host": _HOST, "image_sets": list(task.key[2])}, f)
            _publish(part, final)
        except subprocess.TimeoutExpired:
            raise DLModelError(f"{self._what(task)} ran past {self.timeout} s; log: {log}") from None
        finally:
            shutil.rmtree(part, ignore_errors=True)

    def _what(self, task: Task) -> str:
        names = [p.name for p in task.inputs]
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} files)" if len(names) > 4 else "")
        return f"slice of image sets {task.key[0]}-{task.key[1]} ({shown})"

    def _check(self, task: Task, part: Path, log: Path) -> None:
        """The slice's Image table holds exactly its image sets (else the listing and this
        CellProfiler disagree, and merging would misplace rows)."""
        from .cellprofiler_merge import find_tables

        tables = find_tables(part)
        if not tables.image:
            raise DLModelError(f"{self._what(task)} wrote no Image table (ExportToSpreadsheet); log: {log}")
        from .cellprofiler_merge import read_rows

        _, rows = read_rows(tables.image)
        want = sorted(p.name for p in task.inputs)
        got = sorted(v for r in rows for k, v in r.items() if k.startswith("FileName_"))
        if len(rows) != len(task.key[2]) or (got and got != want):
            raise DLModelError(f"{self._what(task)}: CellProfiler ran {len(rows)} image set(s) that are not the "
                               f"{len(task.key[2])} listed; log: {log}")


def _publish(part: Path, final: Path) -> None:
    """A finished slice: what the pipeline saved besides its tables (SaveImages) goes where the
    pipeline puts it, relative to the output folder; then the part folder becomes the slice."""
    from .cellprofiler_merge import find_tables

    tables = set(find_tables(part).all())
    out = final.parent.parent
    for f in sorted(part.rglob("*")):
        if f.is_file() and f not in tables and f.name != ".dlmodel-slice.json":
            target = out / f.relative_to(part)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
    if final.exists():  # an earlier run's slice (no --resume): replaced whole
        shutil.rmtree(final)
    os.replace(part, final)


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception|error:|failed)", line) and not line.startswith("File "):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def remove_stale_parts(slices_dir: Path, older_than: float = 3600.0) -> int:
    """Part folders of slices that a killed run left: this machine's whose process is gone,
    another machine's untouched for ``older_than`` seconds. A slice in flight stays."""
    from .io import _alive

    removed = 0
    for part in slices_dir.glob(".slice_*.part"):
        m = re.match(r"^\.slice_[\d-]+\.(?P<host>.+)-(?P<pid>\d+)\.\d+\.part$", part.name)
        try:
            stale = (not _alive(int(m.group("pid")))) if m and m.group("host") == _HOST else \
                time.time() - part.stat().st_mtime > older_than
        except OSError:
            continue
        if stale:
            shutil.rmtree(part, ignore_errors=True)
            removed += 1
    return removed


# --- the whole run ---------------------------------------------------------------------------------

@dataclass
class PipelineRun:
    """What :func:`run_pipeline` did: the summary, the slices, the merged tables and statistics."""

    summary: Summary
    image_sets: int
    slices: int
    tables: Dict[str, Path] = field(default_factory=dict)
    screen: Optional[Path] = None
    report: Optional[Path] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)


def default_cellprofiler() -> str:
    """The ``cellprofiler`` next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "cellprofiler"
    if beside.exists():
        return str(beside)
    found = shutil.which("cellprofiler")
    if not found:
        raise PipelineError("no cellprofiler next to this Python nor on PATH: give --cellprofiler PATH")
    return found


def run_pipeline(pipeline: PathLike, images: PathLike, out: PathLike, workers: Optional[int] = None,
                 scheduler: Optional[str] = None, resume: bool = False, per_task: Optional[int] = None,
                 group_by: Sequence[str] = (), cellprofiler: Optional[PathLike] = None,
                 plugins: Optional[PathLike] = None, readers: Sequence[str] = (), threads: Optional[int] = None,
                 report: bool = False, metadata: Optional[PathLike] = None, controls: Optional[str] = None,
                 doses: Optional[str] = None, timeout: Optional[float] = None, progress: bool = True) -> PipelineRun:
    """Run a CellProfiler pipeline over a screen's images in slices, here or on Dask, and merge
    the slices' tables into ``out``.

    Parameters
    ----------
    pipeline : path
        A text ``.cppipe`` with an ExportToSpreadsheet (checked before any work).
    images : path
        The folder of the images (CellProfiler's ``-i``).
    out : path
        The output folder: merged tables (``Image.csv``, one per object, ``Experiment.csv``),
        ``screen.csv``, ``slices/`` (each slice's own tables) and ``logs/``.
    workers, scheduler : optional
        A LocalCluster of ``workers`` processes, or an existing Dask ``scheduler`` address;
        neither: one slice after another in this process's children.
    resume : bool
        Run only the slices that are missing or failed (a slice is complete once renamed).
    per_task : int, optional
        Image sets per slice (default: the image sets divided evenly, 4 slices per worker).
    group_by : sequence of str
        One slice per value of these metadata (e.g. ``Metadata_Plate``, ``Metadata_Well``).
    cellprofiler : path, optional
        The ``cellprofiler`` to run (default: next to this Python, else on PATH); 5.0 or 4.2.8.
    plugins, readers : optional
        Passed through as ``--plugins-directory`` and ``--enable-readers``.
    threads : int, optional
        Engine threads per CellProfiler (default: on Dask, the cores shared by the workers).
    report, metadata, controls, doses : optional
        Also write the plate report; a per-well metadata CSV (Row, Column) to join; the
        control and dose columns (default: found by name).
    timeout : float, optional
        Seconds a slice may run.

    Returns
    -------
    PipelineRun
    """
    from . import cellprofiler_merge
    from .runs import prepare_output, run

    t0 = time.perf_counter()
    pipeline, images, out = Path(pipeline), Path(images), Path(out)
    if not pipeline.is_file():
        raise PipelineError(f"pipeline {pipeline}: no such file")
    if not images.is_dir():
        raise PipelineError(f"image folder {images}: no such folder")
    if per_task is not None and group_by:
        raise PipelineError("--per-task and --group-by both say how to slice: give one")
    if metadata is not None:
        from .platerun import read_metadata

        read_metadata(metadata)  # checked whole before any work
    modules = check_pipeline(pipeline)
    cellprofiler = str(cellprofiler or default_cellprofiler())
    if not Path(cellprofiler).exists() and not shutil.which(cellprofiler):
        raise PipelineError(f"--cellprofiler {cellprofiler}: no such program")
    _check_environments(pipeline, modules)
    out = prepare_output(out)
    work = out / ".dlmodel"
    sets, _ = list_image_sets(pipeline, images, cellprofiler, plugins, sorted({m.name for m in modules}), work / "scratch")
    _same_sets_as_before(work / "imagesets.json", sets, resume, out)
    if per_task is None and not group_by:  # a few slices per worker: retries and the bar stay fine-grained
        per_task = max(1, -(-len(sets) // (4 * (workers or 1))))
    parts = slices(sets, per_task, group_by, pipeline)
    slice_pipeline = work / "pipeline.cppipe"
    from .io import atomic_path

    with atomic_path(slice_pipeline) as tmp:
        tmp.write_text(slice_pipeline_text(pipeline), encoding="utf-8")
    job = PipelineJob(pipeline=slice_pipeline.resolve(), images=images.resolve(), out_dir=out.resolve(),
                      cellprofiler=str(Path(cellprofiler).resolve()) if Path(cellprofiler).exists() else cellprofiler,
                      plugins=str(Path(plugins).resolve()) if plugins else None, readers=tuple(readers),
                      threads=threads, cwd=os.getcwd(), timeout=timeout)
    tasks = job.tasks(parts)
    (out / "slices").mkdir(exist_ok=True)
    remove_stale_parts(out / "slices")  # only provably stale ones: a concurrent run's slices in flight stay
    summary = run(job, tasks, workers=workers, scheduler=scheduler, resume=resume, progress=progress)
    remove_stale_parts(out / "slices")  # a killed worker's slice, run again elsewhere
    result = PipelineRun(summary, len(sets), len(tasks))
    done = [t for t in tasks if t.done()]
    if done:
        result.tables = cellprofiler_merge.merge([(t.outputs[0], t.key[2]) for t in done], out, sets)
        if len(done) < len(tasks):
            result.notes.append(f"the merged tables hold {sum(t.size for t in done)} of {len(sets)} image sets: "
                                f"{len(tasks) - len(done)} slice(s) failed (rerun with --resume)")
        image = result.tables.get("Image")
        if image is not None:
            result.screen, result.report, notes = cellprofiler_merge.statistics(
                image, out, report=report, metadata=metadata, controls=controls, doses=doses,
                title=images.resolve().name)
            result.notes += notes
    result.seconds = time.perf_counter() - t0
    return result


def _check_environments(pipeline: Path, modules: Sequence[Module]) -> None:
    """A RunDLModel whose 'Python environment for the model' names a program not approved on this
    machine: refused before any work (each CellProfiler would refuse it too, slice after slice)."""
    from . import client

    for m in modules:
        if m.name == "RunDLModel" and m.enabled:
            python = dict(m.settings).get("Python environment for the model", "").strip()
            if python:
                try:
                    client.approved_python(python, f"pipeline {pipeline}: RunDLModel #{m.number}'s 'Python environment "
                                                   "for the model'")
                except DLModelError as e:
                    raise PipelineError(str(e)) from None


def _same_sets_as_before(path: Path, sets: Sequence[ImageSet], resume: bool, out: Path) -> None:
    """The slices of a resumed run are numbered by the image sets of the first: refuse to resume
    when the image sets changed (new or removed files) rather than merge mismatched slices."""
    now = [[s.number, [str(p) for p in s.files()]] for s in sets]
    if resume and path.exists():
        before = json.loads(path.read_text())
        if before != now:
            raise PipelineError(f"{out}: the image sets differ from those of the run being resumed (files added, removed "
                                "or renamed); run without --resume into a new output folder")
    from .io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(now))


def slice_seconds(out: PathLike) -> Dict[str, float]:
    """Each complete slice's CellProfiler wall time (its start-up, pipeline load and image sets),
    by slice folder name: what the benchmark compares."""
    found = {}
    for f in sorted(Path(out, "slices").glob("slice_*/.dlmodel-slice.json")):
        found[f.parent.name] = json.loads(f.read_text())["seconds"]
    return found

