"""Images per second of `dlmodel predict` (default model, --labels) over the 32 DSB validation
images: in one process, and on a local Dask cluster of 1 and 2 workers, side by side in one run.

    .venv/bin/python benchmarks/throughput.py
    .venv/bin/python benchmarks/throughput.py --smoke     # 2 images, no 1-worker cluster: a check that it runs
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_val" / "images"
MODEL = ROOT / "models" / "nuclei_default"


def timed(images: Path, *extra: str) -> float:
    """Wall time of one `dlmodel predict` over the folder ``images``; stops on its error."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "predict", str(MODEL), str(images), "-o", out,
                              "--labels", *extra], capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"dlmodel predict {' '.join(extra)} failed (exit {res.returncode}): {res.stderr[-3000:]}")
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the first 2 images only: seconds, not a measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = IMAGES
        if args.smoke:  # a folder of links to the first two images: the CLI takes folders
            images = Path(tmp)
            for p in sorted(IMAGES.glob("*.tif"))[:2]:
                (images / p.name).symlink_to(p)
            print("smoke: 2 images, one process and Dask with 2 workers: a check that it runs, not a measurement")
        n = len(list(images.glob("*.tif")))
        workers = (2,) if args.smoke else (1, 2)  # one Dask cluster is enough to see that it runs
        rows = [("one process", timed(images))]
        rows += [(f"Dask, {w} worker{'s' * (w > 1)}", timed(images, "--workers", str(w))) for w in workers]
    base = rows[0][1]
    print(f"{n} images (wall time including start-up and model loading):")
    for label, t in rows:
        print(f"  {label:16s} {t:6.1f} s  {n / t:5.2f} images/s  ({base / t:.2f}x one process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
