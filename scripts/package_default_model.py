"""Package the trained default nuclei model into models/nuclei_default/ with `dlmodel.package`.

    .venv/bin/python scripts/train_default_model.py --out build/default_model
    .venv/bin/python scripts/package_default_model.py --trained build/default_model
"""
import argparse
import json
import sys
from pathlib import Path

import tifffile
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE = ROOT.parent / "shared" / "data" / "dsb2018_nuclei_train" / "images"

# What the package tells RunDLModel and `dlmodel predict --labels` to do with the output:
# interior pixels seed one object each; interior + boundary is the object's extent. The
# thresholds were chosen on training images by scripts/tune_default_recipe.py.
RECIPE = {"method": "seeded_watershed", "foreground": [1, 2], "seeds": 1, "threshold": 0.6,
          "seed_threshold": 0.8, "min_seed_size": 4, "min_size": 30, "fill_holes": True}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trained", type=Path, default=ROOT / "build" / "default_model")
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "nuclei_default")
    args = ap.parse_args()
    sys.path.insert(0, str(args.trained))
    from nuclei_unet import NucleiUNet

    import dlmodel
    import dlmodel.packaging

    net = NucleiUNet()
    net.load_state_dict(torch.load(args.trained / "weights_state.pt", weights_only=True))
    training = json.loads((args.trained / "training.json").read_text())
    sample = tifffile.imread(sorted(SAMPLE.glob("*.tif"))[0])
    doc = f"""# RunDLModel default nuclei model

A small 2D U-Net (4 levels, 16-128 channels, batch norm) that classifies each pixel of a
fluorescence nucleus image as background, nucleus interior or nucleus boundary. Objects come
from the package's own recipe (stored in the rdf under `config: dlmodel: instances`): each
connected interior region seeds one nucleus, which grows over interior + boundary pixels by a
watershed, so touching nuclei are split where the network saw their boundary.

- Training data: the 462 images of `dsb2018_nuclei_train` (Data Science Bowl 2018 stage 1,
  community-fixed labels, CC0). Validation data (`dsb2018_nuclei_val`) was not used in training.
- Training: `scripts/train_default_model.py` (seed {training['seed']}, {training['iterations']} iterations of
  batch {training['batch']} random {training['crop']}x{training['crop']} crops with flips, rotations and intensity
  jitter, AdamW with a one-cycle schedule, class weights 1/1/3), {training['seconds']:.0f} s on
  {training['threads']} CPU threads with torch {training['torch']}.
- Input: one channel, any size (min 72, step 8), normalised per image to its 1st and 99.8th
  percentiles. Output: softmax over (background, interior, boundary).
- Accuracy: see `docs/accuracy.md` in the RunDLModel project.
"""
    rdf = dlmodel.packaging.package(
        net, sample, args.out, overwrite=True,
        name="RunDLModel default nuclei",
        description="2D U-Net for fluorescence nuclei: background / interior / boundary, with an instance recipe.",
        authors=[{"name": "RunDLModel developers"}],
        license="MIT",
        cite=[{"text": "Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
                       "Nature Methods 16, 1247-1253 (2019).", "doi": "10.1038/s41592-019-0612-7"}],
        tags=["nuclei", "fluorescence", "unet", "instance-segmentation", "dsb2018", "2d"],
        architecture=dlmodel.packaging.Architecture(args.trained / "nuclei_unet.py", "NucleiUNet", {"base": 16, "classes": 3}),
        formats=("onnx", "torchscript", "pytorch_state_dict"),
        preprocessing=[{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}},
                       {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
        postprocessing=[{"id": "softmax", "kwargs": {"axis": "channel"}}],
        output_channel_names=["background", "interior", "boundary"],
        size=(72, 8), halo=32, instances=RECIPE, documentation=doc,
    )
    print(f"wrote {rdf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
