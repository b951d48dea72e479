"""The one gate for code that a model package brings: who may run it, and the one loader.

Code in a package (a PyTorch architecture file, spec 0.5 ``custom`` processing, Keras
``Lambda`` layers, TensorFlow graph operations that reach files, processes or Python) runs
with the user's rights. Whether it runs without asking depends on where the package came
from, not where it lies now:

- a **folder** the user made (or copied) is theirs: trusted unless ``trust=False``;
- a **zip** archive and a **download** (URL, zoo id, DOI, or a folder that is a dlmodel cache
  entry, whose marker records where it came from) are someone else's: their code runs only
  with ``trust=True``.

``trust=False`` always means no, for a folder too (RunDLModel's "Trust code from the model
package? No").

A ``pytorch_state_dict`` architecture named by ``import_from`` + ``callable`` + ``kwargs`` is
package code too: the package chooses what is called, with what. Without trust only a network
class (a ``torch.nn.Module`` subclass) defined in a known model library
(:data:`MODEL_LIBRARIES`) is built; never a function, never the standard library.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Tuple

from .errors import DLModelError

# Where a package came from (sources.Resolved.kind): a folder the user made is theirs; a zip or
# a download came from someone else.
FOLDER, ZIP, DOWNLOAD = "folder", "zip", "download"

_ORIGIN = {
    DOWNLOAD: "was downloaded",
    ZIP: "comes from a zip archive (not a folder you made)",
    FOLDER: "is set not to be trusted (trust=False)",
}


# The libraries whose network classes an untrusted package may name by ``import_from``: modules
# (and their submodules) that define ``torch.nn.Module`` networks and nothing a package could abuse
# through a constructor. docs/security.md lists them; anything else needs trust.
MODEL_LIBRARIES: Tuple[str, ...] = (
    "careamics.models",  # CAREamics' export_to_bmz names careamics.models.unet.UNet
    "cellpose.resnet_torch",  # Cellpose 3's CPnet
    "cellpose.vit_sam",  # Cellpose 4's Transformer
)


class TrustError(DLModelError):
    """Code from a package was not run because the package is not trusted."""


@dataclass(frozen=True)
class Gate:
    """Consent for one package: its name and folder, where it came from, and the decision.

    ``key`` (the rdf's sha256) makes the names of modules loaded from the package unique to it,
    so two packages' ``halve.py`` never share one module."""

    model: str
    root: Path
    key: str
    kind: str  # FOLDER | ZIP | DOWNLOAD
    trusted: bool

    @classmethod
    def decide(cls, model: str, root: Path, key: str, kind: str, trust: Optional[bool]) -> "Gate":
        """``trust=None``: trusted only for a folder the user made; True or False: as said."""
        return cls(model, Path(root), key, kind, kind == FOLDER if trust is None else bool(trust))

    def refusal(self, what: str, instead: Optional[str] = None) -> TrustError:
        """The one refusal text: what would run, why it did not, and how to consent."""
        origin = _ORIGIN.get(self.kind, _ORIGIN[DOWNLOAD])
        return TrustError(
            f"model {self.model!r} {origin}, and {what}: code from a package runs with your rights. "
            "Run it only if you trust its source: pass trust=True (dlmodel --trust; RunDLModel: "
            "'Trust code from the model package?' Yes)" + (f", or use {instead}" if instead else "")
        )

    def require(self, what: str, instead: Optional[str] = None) -> None:
        if not self.trusted:
            raise self.refusal(what, instead)

    def load_module(self, path: Path, what: str, instead: Optional[str] = None) -> ModuleType:
        """Import a ``.py`` file of the package (its sha256 was checked on load), once per
        package; refused unless trusted."""
        self.require(f"{what} runs the package's own code ({Path(path).name})", instead)
        path = Path(path).resolve()
        # unique per package (its rdf's sha256 pins the file's) and per place (a package that
        # was moved, e.g. from a staging folder, is imported again from where it is now)
        where = hashlib.sha256(str(path).encode()).hexdigest()[:8]
        name = f"_dlmodel_pkg_{self.key[:16]}_{where}_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise DLModelError(f"cannot import {path} from model {self.model!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            # compiled here, not by the import system: it would write __pycache__ into the
            # package's folder, which is the package's, not ours to write in
            exec(compile(path.read_bytes(), str(path), "exec"), module.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module


    def library_class(self, module_name: str, name: str) -> Any:
        """The network class an ``import_from`` architecture names, imported from its library.

        Untrusted, the module must lie in :data:`MODEL_LIBRARIES` (checked before anything is
        imported: importing a module runs it) and ``name`` must be a ``torch.nn.Module`` subclass
        defined there; anything else is refused with the gate's one line. Trusted, any importable
        callable is returned, as the package says.
        """
        module_name, name = str(module_name), str(name)
        what = f"its pytorch_state_dict architecture calls {module_name}.{name}"
        dotted = all(part.isidentifier() for part in module_name.split("."))
        if not (dotted and name.isidentifier()):
            raise self.refusal(f"{what}, which is not an importable name")
        if not self.trusted and not _in_libraries(module_name):
            raise self.refusal(f"{what}, which is not a network class of a known model library "
                               f"({', '.join(MODEL_LIBRARIES)})")
        if not self.trusted and any(part.startswith("_") for part in (*module_name.split("."), name)):
            raise self.refusal(f"{what}, a private name of its library")
        module = importlib.import_module(module_name)  # ImportError: the caller names what to install
        obj = getattr(module, name)  # AttributeError: likewise
        if self.trusted:
            return obj
        import torch

        where = getattr(obj, "__module__", "") or ""
        if not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and _in_libraries(where)):
            raise self.refusal(f"{what}, which is not a torch.nn.Module class defined in {module_name.split('.')[0]} "
                               f"(it is {_kind(obj)})")
        return obj


def _in_libraries(module_name: str) -> bool:
    return any(module_name == lib or module_name.startswith(lib + ".") for lib in MODEL_LIBRARIES)


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return f"the class {getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    if callable(obj):
        return f"the callable {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return f"a {type(obj).__name__}"


def local_gate(root: Path = Path("."), model: str = "model") -> Gate:
    """A trusted gate for code that is not from a package (tests, the user's own callables)."""
    return Gate(model, Path(root), "local", FOLDER, True)
