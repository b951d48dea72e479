"""Package the small 3D demo model shipped in models/nuclei3d_demo/ (for nuclei_3d.cppipe).

Not a trained network: a two-layer 3D convolution with set weights — a Gaussian blur
(sigma 1.5 voxels) of the normalised volume, then a sigmoid ramp — that marks voxels
brighter than the volume's mean as nucleus. It exists so the 3D path (volumetric images,
3D tiles, 3D objects) runs end to end on real packaging. Reproducible: no randomness.

    .venv/bin/python scripts/make_demo_3d_model.py
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "nuclei3d_demo"


class BlurRamp(torch.nn.Module):
    def __init__(self, sigma: float = 1.5, radius: int = 3, gain: float = 4.0, offset: float = 0.3):
        super().__init__()
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        g = g / g.sum()
        kernel = g[:, None, None] * g[None, :, None] * g[None, None, :]
        self.blur = torch.nn.Conv3d(1, 1, 2 * radius + 1, padding=radius, bias=False)
        self.ramp = torch.nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.blur.weight.copy_(kernel[None, None])
            self.ramp.weight.fill_(gain)
            self.ramp.bias.fill_(-gain * offset)

    def forward(self, x):
        return self.ramp(self.blur(x))


def main() -> int:
    import bioimageio.spec.model.v0_5 as v
    from bioimageio.spec import ValidationContext, save_bioimageio_yaml_only

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    net = BlurRamp().eval()
    rng = np.random.default_rng(0)
    x = rng.normal(200, 30, (1, 1, 16, 32, 32)).astype(np.float32)
    x[:, :, 4:12, 8:20, 8:20] += 120  # one bright blob
    torch.jit.script(net).save(str(OUT / "weights.torchscript.pt"))
    torch.onnx.export(net, torch.from_numpy(x), str(OUT / "weights.onnx"), input_names=["raw"], output_names=["out"],
                      dynamic_axes={"raw": {2: "z", 3: "y", 4: "x"}, "out": {2: "z", 3: "y", 4: "x"}},
                      opset_version=17, dynamo=False)
    np.save(OUT / "test_raw.npy", x)
    norm = (x - x.mean()) / (x.std() + 1e-6)
    with torch.no_grad():
        y = torch.sigmoid(net(torch.from_numpy(norm))).numpy()
    np.save(OUT / "test_probability.npy", y)
    (OUT / "README.md").write_text(
        "# Demo 3D nuclei model\n\nA two-layer 3D convolution with set weights (Gaussian blur, sigma 1.5 voxels, then "
        "a sigmoid ramp) that marks voxels brighter than the volume's mean as nucleus. Not trained; made by "
        "`scripts/make_demo_3d_model.py` for the 3D example pipeline. Input: one channel, zyx, any size "
        "(min 8, step 4). Output: probability of nucleus.\n"
    )
    from dlmodel.spec import sha256_file

    def fd(name):
        return v.FileDescr(source=name, sha256=sha256_file(OUT / name))

    zyx = [v.AxisId(a) for a in "zyx"]
    with ValidationContext(root=OUT, perform_io_checks=False):
        descr = v.ModelDescr(
            name="Demo 3D nuclei (blur and ramp)",
            description="Marks voxels brighter than the volume mean (after a Gaussian blur) as nucleus; a demo, not a trained model.",
            authors=[v.Author(name="RunDLModel developers")],
            cite=[v.CiteEntry(text="RunDLModel demo model", url="https://bioimage.io")],
            license="MIT",
            documentation=fd("README.md"),
            tags=["3d", "nuclei", "demo"],
            inputs=[v.InputTensorDescr(
                id=v.TensorId("raw"),
                axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("intensity")]),
                      *[v.SpaceInputAxis(id=a, size=v.ParameterizedSize(min=8, step=4)) for a in zyx]],
                test_tensor=fd("test_raw.npy"),
                preprocessing=[v.ZeroMeanUnitVarianceDescr()],
            )],
            outputs=[v.OutputTensorDescr(
                id=v.TensorId("probability"),
                axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier("nucleus")]),
                      *[v.SpaceOutputAxisWithHalo(id=a, halo=3, size=v.SizeReference(tensor_id=v.TensorId("raw"), axis_id=a)) for a in zyx]],
                test_tensor=fd("test_probability.npy"),
                postprocessing=[v.SigmoidDescr()],
            )],
            weights=v.WeightsDescr(
                torchscript=v.TorchscriptWeightsDescr(source="weights.torchscript.pt", sha256=sha256_file(OUT / "weights.torchscript.pt"),
                                                      pytorch_version=v.Version(torch.__version__.split("+")[0])),
                onnx=v.OnnxWeightsDescr(source="weights.onnx", sha256=sha256_file(OUT / "weights.onnx"), opset_version=17),
            ),
        )
    save_bioimageio_yaml_only(descr, OUT / "bioimageio.yaml")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
