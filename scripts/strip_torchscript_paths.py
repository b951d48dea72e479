"""Rewrite the shipped packages' TorchScript weights without the debug records that carry the
absolute paths of the machine that scripted them (issue 28), and update the rdfs' sha256.

    .venv/bin/python scripts/strip_torchscript_paths.py models/nuclei_default models/nuclei3d_demo

Each package is then checked with its own test tensors (dlmodel test); the outputs are those of
the original weights to the bit (the debug records play no part in running the graph).
"""
import hashlib
import sys
from pathlib import Path

from dlmodel import load
from dlmodel.converters import strip_torchscript_debug_info


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(folders):
    for folder in map(Path, folders):
        weights = folder / "weights.torchscript.pt"
        rdf = folder / "bioimageio.yaml"
        before = sha256(weights)
        strip_torchscript_debug_info(weights)
        after = sha256(weights)
        text = rdf.read_text()
        if before != after:
            assert text.count(before) == 1, f"{rdf} does not list {weights.name}'s sha256 once"
            rdf.write_text(text.replace(before, after))  # the digest only: the rest of the rdf stays as written
        report = load(folder).test("torchscript")
        print(f"{folder}: {before[:12]} -> {after[:12]}; {report.summary()}")
        if not report.ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
