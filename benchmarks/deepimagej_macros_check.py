"""Check dlmodel's numpy equivalents of deepImageJ's macros against real ImageJ 1.x.

Not a test: it needs Java and ImageJ 1.x (Debian: ``apt-get install imagej``, which gives
/usr/share/java/ij.jar), and for Contours2InstanceSegmentation.ijm a plugins folder with
MorphoLibJ (and Jama) jars; ImageJ runs under ``xvfb-run`` (it builds its menus, which needs a
display, when a command opens an image). For each macro and input it writes
the input as an ImageJ TIFF, runs the real macro file on it (``runMacro``) in ImageJ, reads the
result back and compares it with ``MacroStep.apply``: max absolute difference (and how many
pixels differ) for images, identical-up-to-numbering for labels. StarDist2D_Post-processing.ijm
calls the StarDist Fiji plugin, which plain ImageJ lacks: its ImageJ part (bicubic upsampling,
the split into scores and distances) is compared, and StarDist's Python NMS then runs on it when
the ``stardist`` package is importable.

    python benchmarks/deepimagej_macros_check.py [--plugins DIR] [--json results.json]
    python benchmarks/deepimagej_macros_check.py --smoke     # seconds; without ImageJ: dlmodel's side only

Prints one line per case; docs/deepimagej-macros.md records the numbers.

``--smoke`` checks that the script runs. With ImageJ it compares the number strings and one
input per intensity and binarize macro. Without ImageJ (CI) it compares nothing: it reads every
macro file, runs dlmodel's equivalent on every input and checks that each result is finite and
has the input's shape (a line saying so).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dlmodel.families import deepimagej as dij  # noqa: E402

MACROS = ROOT / "tests" / "fixtures" / "deepimagej_macros"
RNG = np.random.default_rng(2024)


# ---- inputs ----


def _with_outliers(a: np.ndarray, hi: float, lo: float) -> np.ndarray:
    a = a.copy()
    flat = a.reshape(-1)
    idx = RNG.choice(flat.size, size=max(2, flat.size // 200), replace=False)
    flat[idx[: len(idx) // 2]] = hi
    flat[idx[len(idx) // 2 :]] = lo
    return a


def intensity_inputs() -> List[Tuple[str, np.ndarray, str, Optional[str]]]:
    """(name, array, axes, ImageJ composite mode or None)."""
    u8 = _with_outliers(RNG.normal(90, 25, (48, 64)).clip(0, 255).astype(np.uint8), 255, 0)
    u16 = _with_outliers(RNG.normal(1200, 300, (48, 64)).clip(0, 65535).astype(np.uint16), 60000, 3)
    f32 = _with_outliers(RNG.normal(0.37, 0.11, (48, 64)).astype(np.float32), 40.0, -7.5)
    tiny = (np.arange(12, dtype=np.float32).reshape(3, 4) * 1.37 + 0.11).astype(np.float32)
    stack = _with_outliers(RNG.gamma(2.0, 150.0, (3, 40, 50)).astype(np.float32), 9000.0, -50.0)
    stack[1] *= 2.5  # slices with other ranges
    channels = RNG.normal(100, 20, (3, 40, 50)).astype(np.float32)
    channels[2] += 500
    return [
        ("uint8 2D", u8, "yx", None),
        ("uint16 2D", u16, "yx", None),
        ("float32 2D", f32, "yx", None),
        ("float32 3x4 ramp", tiny, "yx", None),
        ("float32 z-stack (3 slices)", stack, "zyx", None),
        ("float32 3 channels, grayscale", channels, "cyx", "grayscale"),
        ("float32 3 channels, composite", channels, "cyx", "composite"),
    ]


def probability_inputs() -> List[Tuple[str, np.ndarray, str, Optional[str]]]:
    p2 = RNG.uniform(0, 1, (48, 64)).astype(np.float32)
    p2[::7, ::5] = 0.5  # exactly at the threshold
    p2[3, 3] = np.nextafter(np.float32(0.5), np.float32(0))
    u8 = RNG.integers(0, 3, (48, 64)).astype(np.uint8)
    pc = RNG.uniform(0, 1.2, (3, 40, 50)).astype(np.float32)
    pc[0] *= 0.8
    return [
        ("float32 2D", p2, "yx", None),
        ("uint8 2D (0, 1, 2)", u8, "yx", None),
        ("float32 3 channels, grayscale", pc, "cyx", "grayscale"),
        ("float32 3 channels, composite", pc, "cyx", "composite"),
    ]


def contour_outputs(real: Optional[Path]) -> List[Tuple[str, np.ndarray]]:
    """(name, (3, y, x)): background, foreground, contour probabilities."""
    out = []
    for seed, (h, w, n) in enumerate([(96, 128, 14), (160, 160, 30)]):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:h, :w]
        lab = np.zeros((h, w), int)
        for k in range(1, n + 1):
            cy, cx, r = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(4, 11)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
        from scipy import ndimage as ndi

        edge = (ndi.grey_dilation(lab, 3) != ndi.grey_erosion(lab, 3)) & (lab > 0)
        fg = ((lab > 0) & ~edge).astype(np.float32)
        logits = np.stack([1.0 - (lab > 0), fg, edge.astype(np.float32)]) * 3 + rng.normal(0, 0.9, (3, h, w))
        e = np.exp(logits - logits.max(0))
        out.append((f"synthetic {h}x{w}, {n} disks", (e / e.sum(0)).astype(np.float32)))
    if real is not None and real.exists():
        a = np.load(real)  # (1, y, x, 3) from bioimage.io's unet2d_keras_tf2 example
        out.append((f"real U-Net output {real.parent.name}", np.moveaxis(a[0], -1, 0).astype(np.float32)))
    return out


def stardist_outputs() -> List[Tuple[str, np.ndarray]]:
    """(name, (1 + n_rays, y, x)) at grid-2 resolution: probability and ray distances (in
    full-resolution pixels) of random disks."""
    out = []
    rng = np.random.default_rng(7)
    h, w, n_rays = 40, 48, 32
    yy, xx = np.mgrid[:h, :w] * 2.0 + 0.5
    prob = np.zeros((h, w))
    dist = np.zeros((n_rays, h, w))
    phis = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    for _ in range(9):
        cy, cx, r = rng.uniform(12, 2 * h - 12), rng.uniform(12, 2 * w - 12), rng.uniform(5, 10)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        inside = d2 < r * r
        prob = np.maximum(prob, np.where(inside, 1 - d2 / (r * r), 0))
        for k, phi in enumerate(phis):
            # distance from (y, x) to the circle along the ray
            dy, dx = yy - cy, xx - cx
            b = dx * np.cos(phi) + dy * np.sin(phi)
            c = dx * dx + dy * dy - r * r
            t = -b + np.sqrt(np.maximum(b * b - c, 0))
            dist[k] = np.where(inside, t, dist[k])
    out.append((f"synthetic {h}x{w} (grid 2), {n_rays} rays", np.concatenate([prob[None], dist]).astype(np.float32)))
    return out


# ---- ImageJ ----


class ImageJ:
    def __init__(self, jar: Path, plugins: Optional[Path], work: Path):
        self.jar, self.plugins, self.work = jar, plugins, work
        self.version = self.run('print("version=" + getVersion());').split("version=")[-1].strip()

    def run(self, macro: str) -> str:
        """Run a macro in batch mode under xvfb-run (ImageJ 1.x builds its menus, which needs
        a display, as soon as a command opens an image)."""
        path = self.work / "driver.ijm"
        path.write_text(macro)
        cmd = ["java", "-Xmx2g"]
        if self.plugins is not None:
            cmd.append(f"-Dplugins.dir={self.plugins}")
        cmd = ["xvfb-run", "-a"] + cmd + ["-jar", str(self.jar), "-batch", str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return done.stdout + done.stderr

    def macro_on(self, image: np.ndarray, axes: str, mode: Optional[str], macro: Path,
                 save: Tuple[str, ...] = ("",)) -> List[np.ndarray]:
        """Run ``macro`` on ``image``; the current image (or the windows named in ``save``)."""
        src = self.work / "in.tif"
        _write_imagej(src, image, axes, mode)
        lines = [f'open("{src}");', f'runMacro("{macro}");']
        outs = []
        for k, title in enumerate(save):
            dst = self.work / f"out{k}.tif"
            if dst.exists():
                dst.unlink()
            if title:
                lines.append(f'selectWindow("{title}");')
            lines.append(f'saveAs("Tiff", "{dst}");')
            outs.append(dst)
        log = self.run("\n".join(lines))
        result = []
        for dst in outs:
            if not dst.exists():
                raise RuntimeError(f"ImageJ wrote no result for {macro.name}: {log[-2000:]}")
            result.append(tifffile.imread(dst))
        return result


def _write_imagej(path: Path, a: np.ndarray, axes: str, mode: Optional[str]) -> None:
    meta: Dict[str, Any] = {"axes": axes.upper()}
    if mode:
        meta["mode"] = mode
    tifffile.imwrite(path, a, imagej=True, metadata=meta)


# ---- comparisons ----


def compare_images(ours: np.ndarray, theirs: np.ndarray) -> Dict[str, Any]:
    ours = np.asarray(ours, dtype=np.float64).reshape(theirs.shape)
    theirs = np.asarray(theirs, dtype=np.float64)
    same_nan = np.isnan(ours) == np.isnan(theirs)
    d = np.abs(np.nan_to_num(ours) - np.nan_to_num(theirs))
    return {"max_abs_diff": float(d.max()), "pixels_differing": int(((d > 0) | ~same_nan).sum()), "pixels": int(d.size)}


def compare_labels(ours: np.ndarray, theirs: np.ndarray) -> Dict[str, Any]:
    ours = np.asarray(ours).reshape(theirs.shape).astype(np.int64)
    theirs = np.asarray(theirs).astype(np.int64)
    pairs = set(zip(ours.ravel().tolist(), theirs.ravel().tolist()))
    a_to_b: Dict[int, set] = {}
    b_to_a: Dict[int, set] = {}
    for a, b in pairs:
        a_to_b.setdefault(a, set()).add(b)
        b_to_a.setdefault(b, set()).add(a)
    bijective = all(len(v) == 1 for v in a_to_b.values()) and all(len(v) == 1 for v in b_to_a.values())
    zero_ok = a_to_b.get(0, {0}) == {0}
    # pixels whose label differs after matching each of our labels to its most common partner
    differing = 0
    for a in np.unique(ours):
        sel = ours == a
        vals, counts = np.unique(theirs[sel], return_counts=True)
        differing += int(sel.sum() - counts.max())
    return {"identical_up_to_numbering": bool(bijective and zero_ok), "objects_ours": int(len(np.unique(ours)) - 1),
            "objects_imagej": int(len(np.unique(theirs)) - 1), "pixels_differing": differing}


# ---- the cases ----

NUMBERS = [0.23325787, 0.15511274, 255, -3, 1.5, 0.012345678, 12345.678901, 1234567.891, 1e-20,
           98.00000000000001, 3e9, 0.00012344, 988.28125, 0.00000123456]


def number_cases(ij: ImageJ) -> List[Dict[str, Any]]:
    """How the macro language writes numbers into a command's options ("value="+x)."""
    log = ij.run("a = newArray(" + ", ".join(repr(float(v)) for v in NUMBERS) + ");\n"
                 'for (i=0; i<a.length; i++) print("v=" + a[i]);')
    theirs = [line[2:].strip() for line in log.splitlines() if line.startswith("v=")]
    return [{"number": repr(v), "imagej": t, "ours": dij.ij_str(v), "same": t == dij.ij_str(v)}
            for v, t in zip(NUMBERS, theirs)]



def intensity_macros(work: Path) -> Tuple[List[Path], List[Path]]:
    """The pre-processing (intensity) macros, two edited in ``work``, and the binarize macros."""
    edited = work / "edited_per_sample_scale_range.ijm"
    edited.write_text((MACROS / "per_sample_scale_range.ijm").read_text()
                      .replace("min_percentile = 1;", "min_percentile = 3.5;")
                      .replace("max_percentile = 99.8;", "max_percentile = 95;"))
    edited_lin = work / "edited_scale_linear.ijm"
    edited_lin.write_text((MACROS / "scale_linear.ijm").read_text()
                          .replace("gain = 1;", "gain = 2.718281828;").replace("offset = 0;", "offset = -0.123456789;"))
    macros = [MACROS / "per_sample_scale_range.ijm", edited, MACROS / "history" / "percentile_b3575b3.ijm",
              MACROS / "zero_mean_unit_variance.ijm", MACROS / "fixed_zero_mean_unit_variance.ijm",
              MACROS / "scale_linear.ijm", edited_lin, MACROS / "MeanNormalization.ijm",
              MACROS / "PercentileNormalization.ijm"]
    return macros, [MACROS / "binarize.ijm", MACROS / "history" / "binarize_9c65877.ijm"]


def intensity_cases(ij: ImageJ, work: Path, smoke: bool = False) -> List[Dict[str, Any]]:
    """Each intensity and binarize macro on each input (``smoke``: on the first input only), in
    ImageJ and by dlmodel."""
    pre, binarize = intensity_macros(work)
    rows = []
    for macros, stage, make in ((pre, "preprocess", intensity_inputs), (binarize, "postprocess", probability_inputs)):
        for macro in macros:
            step = dij.step_from_text(macro.name, stage, macro.read_text())
            inputs = make()  # drawn afresh for each macro (from the one seeded generator), as recorded
            for name, a, axes, mode in inputs[:1] if smoke else inputs:
                theirs = ij.macro_on(a, axes, mode, macro)[0]
                ours = step.apply(a, axes, composite=mode == "composite")
                rows.append({"macro": macro.name, "input": name, **compare_images(ours, theirs)})
    return rows


def ours_only(work: Path) -> List[Dict[str, Any]]:
    """Without ImageJ: every macro file read and dlmodel's equivalent run on every input (the
    StarDist one as far as its ImageJ part, bicubic upsampling and the split); whether each
    result is finite and has the shape it should."""
    pre, binarize = intensity_macros(work)
    rows = []
    cases = [(m, "preprocess", intensity_inputs()) for m in pre] + [(m, "postprocess", probability_inputs())
                                                                     for m in binarize]
    cases.append((MACROS / "Contours2InstanceSegmentation.ijm", "postprocess",
                  [(name, a, "cyx", None) for name, a in contour_outputs(None)]))
    for macro, stage, inputs in cases:
        step = dij.step_from_text(macro.name, stage, macro.read_text())
        for name, a, axes, mode in inputs:
            ours = np.asarray(step.apply(a, axes, composite=mode == "composite"))
            shape = a.shape[1:] if step.makes_objects else a.shape  # labels: one plane from the channels
            rows.append({"macro": macro.name, "input": name, "shape": list(ours.shape), "dtype": str(ours.dtype),
                         "ok": bool(np.isfinite(ours).all() and ours.size == int(np.prod(shape))),
                         "range": [float(np.nanmin(ours)), float(np.nanmax(ours))]})
    macro = MACROS / "StarDist2D_Post-processing.ijm"
    step = dij.step_from_text(macro.name, "postprocess", macro.read_text())
    for name, a in stardist_outputs():
        prob, dist = dij.stardist_inputs(a, float(step.params["grid"]))
        grid = int(step.params["grid"])
        upsampled = prob.shape == (a.shape[1] * grid, a.shape[2] * grid) and dist.shape[-1] == a.shape[0] - 1
        rows.append({"macro": macro.name, "input": name, "shape": list(prob.shape), "dtype": str(prob.dtype),
                     "ok": bool(np.isfinite(prob).all() and np.isfinite(dist).all() and upsampled),
                     "range": [float(prob.min()), float(prob.max())]})
    return rows


def contour_cases(ij: ImageJ, real: Optional[Path]) -> List[Dict[str, Any]]:
    macro = MACROS / "Contours2InstanceSegmentation.ijm"
    step = dij.step_from_text(macro.name, "postprocess", macro.read_text())
    rows = []
    for name, a in contour_outputs(real):
        theirs = ij.macro_on(a, "cyx", "composite", macro)[0]
        ours = step.apply(a, "cyx")
        rows.append({"macro": macro.name, "input": name, **compare_labels(ours, theirs)})
    return rows


def stardist_cases(ij: ImageJ, work: Path) -> List[Dict[str, Any]]:
    macro = MACROS / "StarDist2D_Post-processing.ijm"
    text = macro.read_text()
    head = work / "StarDist2D_Post-processing_imagej_part.ijm"
    # all but the Fiji plugin call; and without run("royal"), a Fiji LUT (display only) that
    # plain ImageJ lacks and stops at
    head.write_text(text[: text.index('run("Command From Macro"')].replace('run("royal");', ""))
    step = dij.step_from_text(macro.name, "postprocess", text)
    rows = []
    for name, a in stardist_outputs():
        scores, distances = ij.macro_on(a, "cyx", "composite", head, save=("scores", "distances"))
        prob, dist = dij.stardist_inputs(a, float(step.params["grid"]))
        row: Dict[str, Any] = {"macro": macro.name, "input": name,
                               "scores": compare_images(prob, scores),
                               "distances": compare_images(np.moveaxis(dist, -1, 0), distances)}
        try:
            labels = step.apply(a, "cyx")
            row["objects"] = int(len(np.unique(labels)) - 1)
            row["labels_shape"] = list(labels.shape)
        except Exception as e:  # stardist not installed
            row["objects"] = f"not run: {e}"
        rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ij-jar", type=Path, default=Path("/usr/share/java/ij.jar"))
    ap.add_argument("--plugins", type=Path, default=None,
                    help="ImageJ plugins folder with MorphoLibJ and Jama jars (Contours2InstanceSegmentation)")
    ap.add_argument("--real-output", type=Path, default=None,
                    help="test_output.npy of bioimage.io's unet2d_keras_tf2 example (1, y, x, 3)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true",
                    help="seconds: with ImageJ the number strings and one input per macro; without it, "
                         "dlmodel's side only")
    args = ap.parse_args(argv)
    has_imagej = shutil.which("java") is not None and shutil.which("xvfb-run") is not None and args.ij_jar.exists()
    if not has_imagej and not args.smoke:
        print("needs java, xvfb-run and ImageJ 1.x (apt-get install imagej xvfb xauth)", file=sys.stderr)
        return 2
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not has_imagej:  # --smoke on a machine without ImageJ
            print(f"smoke: no ImageJ here (java, xvfb-run, {args.ij_jar}): nothing is compared with ImageJ; "
                  "every macro is read and dlmodel's equivalent run on every input")
            results["ours_only"] = ours_only(work)
            for r in results["ours_only"]:
                print(f"{r['macro']:45s} {r['input']:32s} {'ok' if r['ok'] else 'NOT OK'}: {r['dtype']} "
                      f"{'x'.join(map(str, r['shape']))}, range {r['range'][0]:.3g} to {r['range'][1]:.3g}")
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
            return 0 if all(r["ok"] for r in results["ours_only"]) else 1
        if args.smoke:
            print("smoke: the number strings and the first input of each intensity and binarize macro")
        ij = ImageJ(args.ij_jar, args.plugins, work)
        results["imagej"] = ij.version
        print(f"ImageJ {ij.version}")
        results["numbers"] = number_cases(ij)
        same = sum(r["same"] for r in results["numbers"])
        print(f"number strings: {same} of {len(NUMBERS)} as ImageJ writes them"
              + "".join(f"; {r['number']}: ImageJ {r['imagej']}, ours {r['ours']}" for r in results["numbers"]
                        if not r["same"]))
        results["intensity"] = intensity_cases(ij, work, smoke=args.smoke)
        for r in results["intensity"]:
            print(f"{r['macro']:45s} {r['input']:32s} max|diff| {r['max_abs_diff']:.3g}  "
                  f"differing {r['pixels_differing']}/{r['pixels']}")
        results["stardist"] = [] if args.smoke else stardist_cases(ij, work)
        for r in results["stardist"]:
            print(f"{r['macro']:45s} {r['input']:32s} scores max|diff| {r['scores']['max_abs_diff']:.3g}, "
                  f"distances max|diff| {r['distances']['max_abs_diff']:.3g}; objects {r['objects']}")
        if args.plugins is not None and not args.smoke:
            results["contours"] = contour_cases(ij, args.real_output)
            for r in results["contours"]:
                print(f"{r['macro']:45s} {r['input']:32s} identical up to numbering: "
                      f"{r['identical_up_to_numbering']}  objects {r['objects_ours']} vs {r['objects_imagej']}  "
                      f"pixels differing {r['pixels_differing']}")
        elif not args.smoke:
            print("Contours2InstanceSegmentation.ijm: skipped (needs --plugins with MorphoLibJ)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
