"""dlmodel (auto engine) vs bioimageio.core (its default weight choice, and ONNX) and vs the bare
engine session on a 2048x2048 image with the shared nuclei model, measured side by side in one run
(best of N). The bare session is dlmodel's own onnxruntime session running only the forward passes
dlmodel needed for this image (same tile shapes, data already prepared): no tiling, no processing.

    .venv/bin/python benchmarks/core_2048.py [--size 2048] [--repeat 2]
    .venv/bin/python benchmarks/core_2048.py --smoke     # 512x512, the smallest bioimageio.core takes, once
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "unet2d_nuclei_broad" / "bioimageio.yaml"


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="512x512 (the smallest image core takes here), once: seconds")
    args = ap.parse_args()
    if args.smoke:
        args.size, args.repeat = 512, 1
        print("smoke: 512x512, once: a check that it runs, not a measurement")
    import dlmodel
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline, predict
    from bioimageio.core.axis import AxisId
    from bioimageio.spec import load_model_description

    base = tifffile.imread(sorted((SHARED / "data" / "dsb2018_nuclei_val" / "images").glob("*.tif"))[-1])
    img = np.tile(base, (args.size // base.shape[0] + 1, args.size // base.shape[1] + 1))[: args.size, : args.size]
    img = img.astype(np.float32)

    model = dlmodel.load(MODEL)
    bare = _bare_passes(model, img)
    ours = best(lambda: model.predict(img), args.repeat)
    descr = load_model_description(MODEL, perform_io_checks=False)
    block = {"raw": {AxisId("batch"): 1, AxisId("channel"): 1, AxisId("y"): 512, AxisId("x"): 512}}
    rows = [("dlmodel, auto engine (%s)" % model.weights_format, ours)]
    for wf, label in [(None, "bioimageio.core, default choice"), ("onnx", "bioimageio.core, onnx")]:
        pp = create_prediction_pipeline(descr, weight_format=wf)
        sample = lambda: Sample(members={"raw": Tensor.from_numpy(img[None, None], dims=("batch", "channel", "y", "x"))}, stat={}, id="s")  # noqa: E731
        t = best(lambda: predict(model=pp, inputs=sample(), input_block_shape=block), args.repeat)
        adapter = type(pp._adapter).__name__.replace("ModelAdapter", "").lower()  # the format core chose
        rows.append((f"{label} ({adapter})", t))
    if bare is not None:  # alternated with dlmodel, so both see the same minute of the machine
        t_ours, t_bare = [], []
        for _ in range(args.repeat):
            t_ours.append(best(lambda: model.predict(img), 1))
            t_bare.append(best(bare, 1))
        rows.append((f"bare {model.weights_format} session, same passes", min(t_bare)))
        rows.append(("dlmodel again, alternated with the bare session", min(t_ours)))
    print(f"{args.size}x{args.size}, shared nuclei model, best of {args.repeat}:")
    for label, t in rows:
        print(f"  {label:49s} {t:6.2f} s   ratio to dlmodel {t / ours:4.2f}")
    if bare is not None:
        print(f"dlmodel / bare session, alternated: {min(t_ours) / min(t_bare):.3f} (goal <= 1.05); "
              f"bioimageio.core default / dlmodel: {rows[1][1] / ours:.2f} (goal >= 3)")


def _bare_passes(model, img):
    """A function running only the forward passes ``model.predict(img)`` makes, on its own engine
    session with inputs already made; None for an engine other than onnx."""
    engine = model.engine
    if model.weights_format != "onnx":
        return None
    shapes = []
    run = engine._run
    engine._run = lambda inputs: (shapes.append([a.shape for a in inputs]), run(inputs))[1]
    try:
        model.predict(img)  # also the warm-up
    finally:
        engine._run = run
    rng = np.random.default_rng(0)
    feeds = [{n: rng.standard_normal(s).astype(np.float32) for n, s in zip(engine.input_names, ss)} for ss in shapes]
    return lambda: [engine.session.run(engine.output_names, f) for f in feeds]


if __name__ == "__main__":
    sys.exit(main())
