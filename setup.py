"""RunDLModel: run BioImage Model Zoo models from Python, the shell and CellProfiler."""
from setuptools import find_packages, setup

ENGINES = {
    "onnx": ["onnxruntime>=1.17"],
    "torch": ["torch>=2.1"],
    "tensorflow": ["tensorflow-cpu>=2.15", "keras>=3"],
}
EXTRAS = {
    **ENGINES,
    "distributed": ["dask[distributed]>=2024.1"],
    # model families' own steps (dlmodel.families): Cellpose's flow dynamics. StarDist's NMS is a
    # core need (the default model's objects); the extra stays so `dlmodel[stardist]` still installs.
    # Cellpose 4 imports torchvision, whose PyPI build does not load beside the CPU torch here.
    "stardist": [],
    "cellpose": ["cellpose>=3.1,<4"],
    # The bioimageio.core reference implementation: tests compare our outputs with it.
    "reference": ["bioimageio.core==0.11.*"],
    # onnx: the tests export tiny torch models to ONNX
    "test": ["pytest>=7", "hypothesis>=6", "onnx"],
    # The CellProfiler 5 API for plugins/rundlmodel.py, and what the headless `cellprofiler`
    # (cellprofiler-nightly, installed with --no-deps: it declares wxPython and mysqlclient,
    # which headless runs do not need) needs at run time.
    # numpy<2 lives here, not in install_requires: CellProfiler 5's packages require it, while the
    # core and its engines run on numpy 2 too (make test-numpy2).
    "cellprofiler": [
        "numpy<2",
        "cellprofiler-core-nightly",
        "cellprofiler-library-nightly",
        "centriole-nightly",
        "docutils==0.15.2",
        "sentry-sdk~=2.8.0",
        "rapidfuzz>=3",
        "Jinja2",
        "joblib",
        "mahotas",
        "pyzmq",
        "h5py",
        "boto3",
        "scyjava",
        "six",
        "requests",
        "Pillow",
    ],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="dlmodel",
    version="0.1.0",
    description="Run BioImage Model Zoo models on any image, exactly as their packages say",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.23",
        "bioimageio.spec>=0.5.3",
        # bioimageio.spec 0.5.12 breaks on pydantic 2.12 ("index_key is expected to be an integer").
        "pydantic>=2.6,<2.12",
        "tifffile",
        "imageio",
        "scikit-image",
        "scipy",
        "tqdm",
        "filelock",
        "platformdirs",
        # StarDist's non-maximum suppression: the default nuclei model's objects (it needs no TensorFlow)
        "stardist>=0.9",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["dlmodel = dlmodel.cli:main"]},
)
