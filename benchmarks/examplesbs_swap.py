"""CellProfiler's own ExampleSBS screen, run as its repository ships it (IdentifyPrimaryObjects)
and again with RunDLModel (the default nuclei model) in its place: nuclei per well, Z' and EC50
of the translocation readouts, wall time per image set. Writes docs/screen.md's table.

The pipelines are CellProfiler's (``tests/core/data/ExampleSBSImages/`` of CellProfiler/CellProfiler,
BSD-3, copied unchanged into ``benchmarks/examplesbs/`` with their LICENSE). They are 2014
pipelines; the few edits CellProfiler 5 needs to load and run them headless are the ``FIXES``
below, applied to copies in the output folder, each printed.

    .venv/bin/python benchmarks/examplesbs_swap.py [--images ../shared/data/ExampleSBSImages] [--out out/examplesbs]
    .venv/bin/python benchmarks/examplesbs_swap.py --last 12     # a quick try: the first 12 image sets
    .venv/bin/python benchmarks/examplesbs_swap.py --smoke       # 4 image sets into a temporary folder
    .venv/bin/python benchmarks/examplesbs_swap.py --quick --out out/examplesbs-quick   # all 96, no texture

Takes about 45 minutes on 2 cores (MeasureTexture with Gabor features is most of it). ``--smoke``
checks that it runs, into a temporary folder: every step on 4 image sets (A11, A12, B01, B02:
both kinds of control and three doses, the fewest CalculateStatistics' Z' and dose-response fit
take; the illumination functions from those 4 too), without the texture, colocalization and
shape measurements and the dose-response PDFs (``SMOKE_WITHOUT``, ``SMOKE_EDITS``: most of the
time, and nothing the table shows reads them); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import dlmodel

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "benchmarks" / "examplesbs"
CELLPROFILER = Path(sys.executable).parent / "cellprofiler"
READERS = ["--enable-readers", "imageio_reader", "imageio_reader_v3"]  # offline: no Bio-Formats jars

# (pipeline, what and why, text as shipped, text for CellProfiler 5, times it occurs)
FIXES = [
    ("ExampleSBSIllumination.cppipe",
     "SaveImages: CellProfiler 5 cannot save MATLAB .mat files (it refuses to load the module); save the "
     "illumination functions as .npy, CellProfiler's format for them since 3.0",
     "Saved file format:mat", "Saved file format:npy", 2),
    ("ExampleSBS.cppipe", "Images and NamesAndTypes: pick up the illumination functions as .npy, not .mat",
     '.mat"', '.npy"', 3),
    ("ExampleSBS.cppipe",
     "Metadata: the file-name expression's \\d is stored as \\\\\\\\d, which CellProfiler 5 reads as literal "
     "backslashes, so no well would get a row or column; written as \\d",
     r"(?P<ImageNumber>\\\\d*)-(?P<WellRow>.*)-(?P<WellColumn>\\\\d*)",
     r"(?P<ImageNumber>\d*)-(?P<WellRow>.*)-(?P<WellColumn>\d*)", 2),
    ("ExampleSBS.cppipe",
     "Metadata: the well CSV (dose and controls) is left for the user to browse to; point it at "
     "1049_Metadata.csv in the input folder",
     "    Metadata file location:\n    Match file and image metadata:\\x5B{",
     "    Metadata file location:CSV\n    Match file and image metadata:\\x5B{", 1),
    ("ExampleSBS.cppipe",
     "ExportToSpreadsheet: also export the Experiment measurements, so that CalculateStatistics' Z', V "
     "and EC50 reach a file (Experiment.csv) in a headless run",
     "    File name:DistCytoplasm.csv\n    Use the object name for the file name?:No",
     "    File name:DistCytoplasm.csv\n    Use the object name for the file name?:No\n    Data to export:Experiment\n"
     "    Combine these object measurements with those of the previous object?:No\n"
     "    File name:Experiment.csv\n    Use the object name for the file name?:No", 1),
]

# the translocation readouts (nuclear vs cytoplasmic GFP: CalculateMath's Ratio1 and Ratio2) and the plain ones
READOUTS = {
    "Mean_Nuclei_Math_Ratio1": "nuclear / cytoplasmic integrated GFP (Ratio1)",
    "Mean_DistCytoplasm_Math_Ratio2": "cytoplasmic / nuclear mean GFP (Ratio2)",
    "Mean_Nuclei_Intensity_MeanIntensity_CorrGreen": "mean nuclear GFP",
    "Count_Nuclei": "nuclei per well",
}


def fixed_pipelines(folder: Path, metadata_csv: Path) -> Dict[str, Path]:
    """The shipped pipelines with ``FIXES`` applied, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in ("ExampleSBSIllumination.cppipe", "ExampleSBS.cppipe"):
        text = (SHIPPED / name).read_text()
        for pipeline, why, old, new, count in FIXES:
            if pipeline != name:
                continue
            found = text.count(old)
            if found != count:
                raise SystemExit(f"{name}: expected {count} x {old!r}, found {found}: is this the shipped file?")
            text = text.replace(old, new.replace("Metadata file location:CSV", f"Metadata file location:{metadata_csv}"))
            print(f"fix {name}: {why}")
        (folder / name).write_text(text)
        out[name] = folder / name
    return out


@functools.lru_cache(maxsize=None)
def cellprofiler():
    """CellProfiler's modules, RunDLModel's included, loaded once (a second load loses the
    plugins); the example pipelines' helpers and their ``instantiate_module``."""
    sys.path.insert(0, str(ROOT / "example_pipelines"))
    import build  # the example pipelines' helpers: CellProfiler's own module defaults

    with quiet():  # CellProfiler's module loading prints pages of notes (duplicate modules, no MySQL)
        return build, build._cp()


# --smoke: (pipeline, what and why, text, replacement, times it occurs)
SMOKE_EDITS = [
    ("ExampleSBS.cppipe", "CalculateStatistics: no dose-response plots (a PDF for each of hundreds of measurements; "
     "most of a short run's time)", "Create dose/response plots?:Yes", "Create dose/response plots?:No", 1),
]
# most of each image set's time; nothing the table shows reads their measurements
SMOKE_WITHOUT = ("MeasureTexture", "MeasureColocalization", "MeasureObjectSizeShape")


def smoke_pipeline(pipeline: Path) -> Path:
    """``pipeline`` rewritten in place for ``--smoke``: ``SMOKE_EDITS`` applied and the
    ``SMOKE_WITHOUT`` modules taken out, each printed."""
    text = pipeline.read_text()
    for name, why, old, new, count in SMOKE_EDITS:
        if name == pipeline.name:
            if text.count(old) != count:
                raise SystemExit(f"{name}: expected {count} x {old!r}, found {text.count(old)}")
            text = text.replace(old, new)
            print(f"smoke: {name}: {why}")
    pipeline.write_text(text)
    cellprofiler()
    with quiet():
        from cellprofiler_core.pipeline import Pipeline

        p = Pipeline()
        p.load(str(pipeline))
    for m in [m for m in p.modules() if m.module_name in SMOKE_WITHOUT][::-1]:
        p.remove_module(m.module_num)
        print(f"smoke: {pipeline.name}: without {m.module_name} (module {m.module_num})")
    with open(pipeline, "w") as f:
        p.dump(f)
    return pipeline


def swapped_pipeline(fixed: Path, out: Path, model: Path) -> Path:
    """ExampleSBS with RunDLModel in IdentifyPrimaryObjects' place: same input image (CorrBlue),
    same object name (Nuclei), every other module untouched; RunDLModel's defaults."""
    build, instantiate = cellprofiler()
    with quiet():
        from cellprofiler_core.pipeline import Pipeline

        p = Pipeline()
        p.load(str(fixed))
    (ipo,) = [m for m in p.modules() if m.module_name == "IdentifyPrimaryObjects"]
    image, objects = ipo.x_name.value, ipo.y_name.value
    new = build.rundlmodel(instantiate, image, objects, f"In IdentifyPrimaryObjects' place: {objects} from {image} "
                           "by the default nuclei model.", model=str(model), **{"Save the output as an image?": "No"})
    num = ipo.module_num
    p.remove_module(num)
    new.set_module_num(num)
    p.add_module(new)
    with open(out, "w") as f:
        p.dump(f)
    print(f"swap: module {num} IdentifyPrimaryObjects -> RunDLModel ({model.name}) on {image}, objects {objects}")
    return out


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to /dev/null meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def run_cp(pipeline: Path, images: Path, out: Path, *extra: str) -> float:
    """A headless CellProfiler run; its wall time in seconds (start-up and post-run included)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [str(CELLPROFILER), "-c", "-r", "-p", str(pipeline), "--plugins-directory", str(ROOT / "plugins"),
           "-i", str(images), "-o", str(out), *READERS, *extra]
    t0 = time.perf_counter()
    with open(out / "cellprofiler.log", "w") as log:
        res = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{pipeline.name} failed (exit {res.returncode}): see {out / 'cellprofiler.log'}")
    errors = [line for line in (out / "cellprofiler.log").read_text().splitlines() if "ERROR" in line]
    if errors:
        print(f"  {pipeline.name}: {len(errors)} errors in the log, first: {errors[0]}")
    print(f"  {pipeline.name}: {wall:.0f} s")
    return wall


def read_csv(path: Path) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def experiment(path: Path) -> Dict[str, float]:
    with open(path, newline="") as f:
        return {k: float(v) for k, v in csv.reader(f) if _is_number(v)}


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


LOG_TIME = re.compile(r"Image # (\d+), module (\w+) # \d+: CPU_time = [\d.]+ secs, Wall_time = ([\d.]+) secs")


def module_walls(log: Path) -> Tuple[Dict[int, float], Dict[int, float]]:
    """Wall time per image set (all modules) and of its segmentation module, from CellProfiler's
    log (its ExecutionTime_ measurements are CPU time, which counts every thread)."""
    per_set: Dict[int, float] = {}
    segmentation: Dict[int, float] = {}
    for m in LOG_TIME.finditer(log.read_text()):
        n, module, secs = int(m.group(1)), m.group(2), float(m.group(3))
        per_set[n] = per_set.get(n, 0.0) + secs
        if module in ("IdentifyPrimaryObjects", "RunDLModel"):
            segmentation[n] = secs
    if not per_set or not segmentation:
        raise SystemExit(f"{log} has no module times")
    return per_set, segmentation


def summarise(out: Path, wall: float) -> dict:
    """Per-well counts, CellProfiler's and dlmodel's statistics of the readouts, and times."""
    from dlmodel import screen

    rows = read_csv(out / "Image.csv")
    exp = experiment(out / "Experiment.csv")
    ours = {s.readout: s for s in screen.screen(rows, list(READOUTS), controls="Metadata_SBS_Controls",
                                                doses="Metadata_SBS_Doses", table=str(out / "Image.csv"))}
    per_set, segmentation = module_walls(out / "cellprofiler.log")
    result = {"image_sets": len(rows), "wall_s": wall, "wall_per_set_s": wall / len(rows),
              "modules_per_set_median_s": statistics.median(per_set.values()),
              "segmentation_per_set_median_s": statistics.median(segmentation.values()),
              "nuclei": {f"{r['Metadata_WellRow']}{r['Metadata_WellColumn']}": int(float(r["Count_Nuclei"])) for r in rows},
              "readouts": {}}
    for col, what in READOUTS.items():
        obj, feat = ("Image", col) if not col.startswith("Mean_") else col[5:].split("_", 1)
        s = ours[col]
        result["readouts"][col] = {
            "what": what, "cp_z": exp.get(f"Zfactor_{obj}_{feat}"), "cp_v": exp.get(f"Vfactor_{obj}_{feat}"),
            "cp_ec50": exp.get(f"EC50_{obj}_{feat}"), "z": s.z.value, "z_note": s.z.note,
            "one_tailed_z": s.one_tailed_z.value, "v": s.v.value, "ec50": s.ec50.value, "ec50_note": s.ec50.note,
            "hill": s.fit.hill if s.fit else None, "p_flat": s.fit.p_flat if s.fit else None}
    return result


def correlation(a, b) -> str:
    """Pearson's r, or '–' where it is undefined (fewer than 2 wells, or equal counts)."""
    try:
        return f"{statistics.correlation(a, b):.3f}"
    except statistics.StatisticsError:
        return "–"


def table(ipo: dict, dl: dict) -> str:
    def f(x: Optional[float], d: int = 3) -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}g}" if abs(x) >= 1e-3 else f"{x:.2e}"

    counts = [(ipo["nuclei"][w], dl["nuclei"][w]) for w in ipo["nuclei"] if w in dl["nuclei"]]
    a, b = zip(*counts)
    lines = ["| | IdentifyPrimaryObjects (as shipped) | RunDLModel (default model) |", "| --- | --- | --- |",
             f"| nuclei per well: median (range) | {statistics.median(a):.0f} ({min(a)}-{max(a)}) | "
             f"{statistics.median(b):.0f} ({min(b)}-{max(b)}) |",
             f"| nuclei per well: RunDLModel / IdentifyPrimaryObjects, median (range) | | "
             f"{statistics.median(y / x for x, y in counts if x):.2f} "
             f"({min(y / x for x, y in counts if x):.2f}-{max(y / x for x, y in counts if x):.2f}) |",
             f"| nuclei per well: correlation over the wells (Pearson r) | | {correlation(a, b)} |"]
    for col in READOUTS:
        r1, r2 = ipo["readouts"][col], dl["readouts"][col]
        lines.append(f"| Z' of {r1['what']}: CellProfiler / dlmodel.screen | {f(r1['cp_z'])} / {f(r1['z'])} | {f(r2['cp_z'])} / {f(r2['z'])} |")
        lines.append(f"| V of {r1['what']} | {f(r1['cp_v'])} / {f(r1['v'])} | {f(r2['cp_v'])} / {f(r2['v'])} |")
        lines.append(f"| EC50 of {r1['what']}: CellProfiler's sigmoid / dlmodel's 4PL | {f(r1['cp_ec50'])} / {f(r1['ec50'])} | "
                     f"{f(r2['cp_ec50'])} / {f(r2['ec50'])} |")
    lines += [f"| segmentation module per image set, wall (median) | {ipo['segmentation_per_set_median_s']:.2f} s | {dl['segmentation_per_set_median_s']:.2f} s |",
              f"| all modules per image set, wall (median) | {ipo['modules_per_set_median_s']:.2f} s | {dl['modules_per_set_median_s']:.2f} s |",
              f"| whole run / image sets (start-up, dose-response PDFs included) | {ipo['wall_per_set_s']:.2f} s | {dl['wall_per_set_s']:.2f} s |"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "ExampleSBSImages")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "examplesbs")
    ap.add_argument("--model", type=Path, default=ROOT / dlmodel.DEFAULT_MODEL)
    ap.add_argument("--first", type=int, default=1, help="with --last: the first image set to run")
    ap.add_argument("--last", type=int, default=None, help="run only the image sets up to N of the screen")
    ap.add_argument("--skip-run", action="store_true", help="summarise the runs already in --out")
    ap.add_argument("--smoke", action="store_true", help="4 image sets into a temporary folder: a check that it runs")
    ap.add_argument("--quick", action="store_true",
                    help="every image set, without the texture, colocalization and shape measurements and the "
                         "dose-response PDFs (as --smoke): the same nuclei counts, Z' and EC50 in a fraction of the time")
    args = ap.parse_args()
    if not args.smoke:
        return run(args)
    with tempfile.TemporaryDirectory(prefix="dlmodel-examplesbs-smoke-") as tmp:
        # A11 (dose 9), A12 (positive control), B01, B02 (negative controls): Z' needs both
        # controls, and CellProfiler's 4-parameter dose-response fit needs 4 points
        args.out, args.first, args.last, args.skip_run = Path(tmp), 11, 14, False
        print("smoke: image sets 11-14 (illumination functions from those 4), into a temporary folder: a check "
              "that it runs; its numbers mean nothing", flush=True)
        return run(args)


def run(args: argparse.Namespace) -> int:
    """Fix and swap the pipelines, run them (unless ``--skip-run``), print the table."""
    out, images = args.out.resolve(), args.images.resolve()
    # the screen's input: the plate's images and well CSV, and the illumination functions made first
    inputs = out / "input"
    pipes = fixed_pipelines(out / "pipelines", inputs / "1049_Metadata.csv")
    if args.smoke or args.quick:
        smoke_pipeline(pipes["ExampleSBS.cppipe"])
    swapped = swapped_pipeline(pipes["ExampleSBS.cppipe"], out / "pipelines" / "ExampleSBS_RunDLModel.cppipe", args.model.resolve())
    extra = ["-f", str(args.first), "-l", str(args.last)] if args.last else []
    walls = {}
    if not args.skip_run:
        walls["illumination"] = run_cp(pipes["ExampleSBSIllumination.cppipe"], images, out / "illumination",
                                       *(extra if args.smoke else []))
        if inputs.exists():
            shutil.rmtree(inputs)
        inputs.mkdir()
        for p in list(images.iterdir()) + list((out / "illumination").glob("*.npy")):
            os.symlink(p, inputs / p.name)
        walls["ipo"] = run_cp(pipes["ExampleSBS.cppipe"], inputs, out / "ipo", *extra)
        walls["rundlmodel"] = run_cp(swapped, inputs, out / "rundlmodel", *extra)
        (out / "walls.json").write_text(json.dumps(walls))
    walls = json.loads((out / "walls.json").read_text())
    ipo, dl = summarise(out / "ipo", walls["ipo"]), summarise(out / "rundlmodel", walls["rundlmodel"])
    (out / "summary.json").write_text(json.dumps({"ipo": ipo, "rundlmodel": dl, "illumination_wall_s": walls["illumination"]}, indent=1))
    print(table(ipo, dl))
    print(f"(illumination functions: {walls['illumination']:.0f} s; details in {out / 'summary.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
