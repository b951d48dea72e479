"""dlmodel: run BioImage Model Zoo models on any image, exactly as their packages say.

>>> import dlmodel
>>> m = dlmodel.load("path/to/bioimageio.yaml")          # doctest: +SKIP
>>> probs = m.predict(image, axes="yx")["probability"]   # doctest: +SKIP
>>> m = dlmodel.load("path/to/bioimageio.yaml", python="~/dlmodel-env/bin/python")  # doctest: +SKIP

Importing ``dlmodel`` imports nothing heavy: the modules below load on first use, so
:mod:`dlmodel.client` (numpy and the standard library) works where no engine and no
bioimageio.spec are installed (CellProfiler 4.2.8's Python).
"""
import importlib
from typing import Any

from .client import clear_cache, load, load_cached
from .errors import DLModelError, EngineError, ImageFileError, InputError, SourceError, SpecError, WorkerError

__version__ = "0.1.0"

# The model RunDLModel, the example pipelines and `make demo` start from, relative to the project
# folder: StarDist-style nuclei in ONNX + TorchScript (F1 0.918 on the DSB 2018 validation images,
# docs/accuracy.md). Pipelines that name models/nuclei_default keep the earlier default.
DEFAULT_MODEL = "models/nuclei_stardist_torch"

_MODULES = ("api", "axes", "client", "confidence", "engines", "instances", "package", "processing", "sources", "tiling",
            "training", "trust")
_NAMES = {"Model": "api", "Prediction": "results", "TestReport": "results", "RemoteModel": "client",
          "TrustError": "trust", "finetune": "training", "FinetuneResult": "training", "compare": "comparison",
          "CompareResult": "comparison", "run_pipeline": "pipelines"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'dlmodel' has no attribute {name!r}")


__all__ = [
    *_MODULES,
    "DEFAULT_MODEL",
    "DLModelError",
    "EngineError",
    "ImageFileError",
    "InputError",
    "Model",
    "Prediction",
    "RemoteModel",
    "SourceError",
    "SpecError",
    "TestReport",
    "TrustError",
    "WorkerError",
    "finetune",
    "compare",
    "CompareResult",
    "run_pipeline",
    "clear_cache",
    "load",
    "load_cached",
]
