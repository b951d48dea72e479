"""dlmodel: run BioImage Model Zoo models on any image, exactly as their packages say.

>>> import dlmodel
>>> m = dlmodel.load("path/to/bioimageio.yaml")          # doctest: +SKIP
>>> probs = m.predict(image, axes="yx")["probability"]   # doctest: +SKIP
"""
from . import api, axes, engines, instances, package, processing, sources, tiling, trust
from .api import Model, Prediction, TestReport, clear_cache, load, load_cached
from .errors import DLModelError, EngineError, ImageFileError, InputError, SourceError, SpecError
from .trust import TrustError

__version__ = "0.1.0"

__all__ = [
    "api",
    "axes",
    "engines",
    "instances",
    "package",
    "processing",
    "sources",
    "tiling",
    "trust",
    "DLModelError",
    "EngineError",
    "ImageFileError",
    "InputError",
    "Model",
    "Prediction",
    "SourceError",
    "SpecError",
    "TestReport",
    "TrustError",
    "clear_cache",
    "load",
    "load_cached",
]
