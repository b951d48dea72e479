"""Train a StarDist 2D nuclei model on dsb2018_nuclei_train and export it with StarDist's own
bioimage.io exporter, into models/stardist_nuclei (issue 16, accuracy stretch).

StarDist's own DSB2018 recipe (its example notebook): 32 rays, grid (2, 2), images normalised to
their 1st..99.8th percentiles, flips, 90-degree rotations and intensity jitter, patches of
256x256. Here on the CPU within ``--minutes`` (StarDist's notebook trains 400 epochs of 100
steps on a GPU). 10 % of the *train* images are held out to choose the probability and overlap
thresholds (``optimize_thresholds``); the validation set is never seen. Its F1 on
dsb2018_nuclei_val is measured afterwards by ``benchmarks/accuracy.py`` (docs/accuracy.md).

Environment: the one of tests/fixtures/make/make_stardist.py (TensorFlow 2.15, StarDist 0.9.2,
bioimageio.core 0.5.11: the exporter's own). Offline, give the local copies make_stardist.py
takes (the exporter downloads a deepImageJ macro and StarDist's cover)::

    /work/envs/stardist/bin/python scripts/train_stardist_model.py --minutes 60 \\
        --macros tests/fixtures/deepimagej_macros --stardist-src /path/to/stardist
"""
import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTHONHASHSEED") != "0":  # the exporter orders attachments through a set
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_train"
OUT = ROOT / "models" / "stardist_nuclei"
SEED = 7


def _fixture_maker():
    """tests/fixtures/make/make_stardist.py: its offline serving of the exporter's downloads."""
    spec = importlib.util.spec_from_file_location("make_stardist", ROOT / "tests" / "fixtures" / "make" / "make_stardist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(data: Path):
    import tifffile
    from csbdeep.utils import normalize
    from stardist import fill_label_holes

    files = sorted((data / "images").glob("*.tif"))
    X = [normalize(tifffile.imread(f).astype("float32"), 1, 99.8, axis=(0, 1)) for f in files]
    Y = [fill_label_holes(tifffile.imread(data / "labels" / f.name)) for f in files]
    return files, X, Y


def augmenter(x, y):
    """StarDist's example augmentation: flips, 90-degree rotations, intensity jitter."""
    import numpy as np

    k = np.random.randint(4)
    x, y = np.rot90(x, k), np.rot90(y, k)
    for ax in (0, 1):
        if np.random.rand() > 0.5:
            x, y = np.flip(x, ax), np.flip(y, ax)
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def train(conf, X_trn, Y_trn, X_thr, Y_thr, minutes: float):
    """StarDist's own training within a time budget, then its threshold optimisation on held-out train images."""
    import tensorflow as tf
    from stardist.models import StarDist2D

    model = StarDist2D(conf, name="stardist_nuclei", basedir="models")
    model.prepare_for_training()
    deadline = time.time() + minutes * 60

    class TimeLimit(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print(f"epoch {epoch + 1}: {logs}", flush=True)
            if time.time() > deadline:
                self.model.stop_training = True

    model.callbacks.append(TimeLimit())
    t0 = time.time()
    model.train(X_trn, Y_trn, validation_data=(X_thr, Y_thr), augmenter=augmenter)
    print(f"trained {(time.time() - t0) / 60:.1f} min", flush=True)
    model.optimize_thresholds(X_thr, Y_thr)
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60, help="training time budget (thresholds and export come after)")
    p.add_argument("--steps", type=int, default=50, help="steps per epoch")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--macros", type=Path, help="local copy of deepimagej/imagej-macros (or tests/fixtures/deepimagej_macros)")
    p.add_argument("--stardist-src", type=Path, help="local checkout of stardist/stardist (its cover image)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--test-size", type=int, default=208,
                   help="side of the test image crop: the smallest the rdf allows (208 = 2 x halo 96 + 16) keeps the 33-channel test output small")
    p.add_argument("--from-model", type=Path,
                   help="a StarDist model folder trained before (config.json, thresholds.json, weights_best.h5): export only")
    a = p.parse_args()

    import numpy as np
    import tensorflow as tf
    from stardist.bioimageio_utils import export_bioimageio
    from stardist.models import Config2D, StarDist2D

    _fixture_maker().serve_local_copies(a.macros, a.stardist_src)

    np.random.seed(SEED)
    tf.random.set_seed(SEED)
    files, X, Y = load(DATA)
    order = np.random.permutation(len(X))
    held = set(order[: len(X) // 10].tolist())
    X_trn = [x for i, x in enumerate(X) if i not in held]
    Y_trn = [y for i, y in enumerate(Y) if i not in held]
    X_thr = [x for i, x in enumerate(X) if i in held]
    Y_thr = [y for i, y in enumerate(Y) if i in held]
    print(f"{len(X_trn)} training images, {len(X_thr)} held-out train images for the thresholds", flush=True)

    conf = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(a.patch, a.patch),
                    train_batch_size=4, train_epochs=10_000, train_steps_per_epoch=a.steps,
                    train_tensorboard=False, use_gpu=False)
    work = Path(tempfile.mkdtemp(prefix="stardist_train_"))
    cwd = os.getcwd()
    os.environ["BIOIMAGEIO_CACHE_PATH"] = str(work / "bioimageio_cache")
    os.chdir(work)
    try:
        if a.from_model:  # re-export a model trained before, e.g. with a smaller test crop
            model = StarDist2D(None, name=a.from_model.resolve().name, basedir=str(a.from_model.resolve().parent))
        else:
            model = train(conf, X_trn, Y_trn, X_thr, Y_thr, minutes=a.minutes)
        print("thresholds:", model.thresholds, flush=True)
        print("tile overlap:", model._axes_tile_overlap("YX"))  # before the export's graph mode
        import tifffile

        test_input = tifffile.imread(files[int(order[0])])[: a.test_size, : a.test_size]  # a held-out train image, raw
        zip_path = Path("export") / "stardist_nuclei.zip"
        export_bioimageio(model, zip_path, test_input=test_input, test_input_axes="YX", name="RunDLModel StarDist nuclei")
        if a.out.exists():
            shutil.rmtree(a.out)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(a.out)
        print("wrote", a.out)
    finally:
        os.chdir(cwd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
