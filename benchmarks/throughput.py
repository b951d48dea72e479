"""Images per second of `dlmodel predict` (default model, --labels) over the 32 DSB validation
images: in one process, and on a local Dask cluster of 1 and 2 workers, side by side in one run.

    .venv/bin/python benchmarks/throughput.py
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_val" / "images"
MODEL = ROOT / "models" / "nuclei_default"


def timed(*extra):
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dlmodel.cli", "predict", str(MODEL), str(IMAGES), "-o", out, "--labels", *extra],
                       check=True, capture_output=True)
        return time.perf_counter() - t0


def main():
    n = len(list(IMAGES.glob("*.tif")))
    rows = [("one process", timed()), ("Dask, 1 worker", timed("--workers", "1")), ("Dask, 2 workers", timed("--workers", "2"))]
    base = rows[0][1]
    print(f"{n} images (wall time including start-up and model loading):")
    for label, t in rows:
        print(f"  {label:16s} {t:6.1f} s  {n / t:5.2f} images/s  ({base / t:.2f}x one process)")


if __name__ == "__main__":
    main()
