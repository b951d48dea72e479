"""Files a package brings besides its rdf, and malformed 0.4 rdfs (issue 25, point 5): each
hostile file is built here."""
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ruyaml import YAML

import dlmodel
import zoo
from conftest import ROOT
from conftest import _v04_package
from dlmodel.errors import SpecError

# ~600 bytes of YAML whose pip list expands to ~10^8 strings ("billion laughs")
BOMB = "a: &a [" + ",".join(["x"] * 10) + "]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(7)) + \
    "dependencies:\n  - pip: *h\n"


def test_package_yaml_and_json_have_the_rdf_limits(tmp_path):
    from dlmodel.spec import load_package_json, load_package_yaml

    bomb = tmp_path / "environment.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 700, len(BOMB)
    with pytest.raises(SpecError, match="environment.yaml expands to more than 200000 YAML nodes"):
        load_package_yaml(bomb, str(bomb))
    broken = tmp_path / "broken.yaml"
    broken.write_text("dependencies: [unclosed\n")
    with pytest.raises(SpecError, match="broken.yaml is not valid YAML"):
        load_package_yaml(broken, str(broken))
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(SpecError, match="deep.yaml nests deeper than 100 levels"):
        load_package_yaml(deep, str(deep))
    with pytest.raises(SpecError, match="is not valid JSON"):
        load_package_json("[" * 100_000 + "]" * 100_000, "config.json")
    with pytest.raises(SpecError, match="more than the limit"):
        load_package_json(b" " * (5 << 20), "config.json")


def _careamics_like(folder: Path, torch2d: Path, environment: str) -> Path:
    """A package whose state dict names a library class that is not installed (as CAREamics'
    exports do) and ships ``environment``: loading it reads the file to say what to install."""
    pkg = zoo.copy_package(torch2d.parent, folder)
    (pkg / "environment.yaml").write_text(environment)
    rdf = pkg / "bioimageio.yaml"
    yaml = YAML(typ="safe", pure=True)
    data = yaml.load(rdf.read_text())
    state = data["weights"]["pytorch_state_dict"]
    state["architecture"] = {"callable": "UNet", "import_from": "careamics.models.unet", "kwargs": {}}
    state["dependencies"] = {"source": "environment.yaml", "sha256": zoo.sha256(pkg / "environment.yaml")}
    data["weights"] = {"pytorch_state_dict": state}
    with open(rdf, "w") as f:
        yaml.dump(data, f)
    return pkg


def test_an_environment_file_bomb_costs_no_memory(torch2d, tmp_path):
    pkg = _careamics_like(tmp_path / "pkg", torch2d, BOMB)
    # a child process with 1.5 GB of address space: the bomb expanded would need ~2.4 GB
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
        import dlmodel, torch  # torch's own memory is not the file's
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            dlmodel.load({str(pkg)!r}, engine="pytorch_state_dict")
        except dlmodel.DLModelError as e:
            print("ERR", e)
        print("GREW", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "MemoryError" not in r.stderr, r.stderr[-2000:]
    grew = int(r.stdout.split("GREW")[-1])
    assert grew < 100, f"loading the package grew the peak memory by {grew} MB"
    assert "careamics.models.unet.UNet from the 'careamics' library, which is not installed here" in r.stdout
    env = subprocess.run([sys.executable, "-m", "dlmodel.cli", "env", "create", tmp_path / "env", "--for", pkg, "--print"],
                         capture_output=True, text=True, timeout=300)
    assert env.returncode == 2 and "expands to more than 200000 YAML nodes" in env.stderr, env.stderr
    ok = _careamics_like(tmp_path / "ok", torch2d, "dependencies:\n  - pip:\n    - careamics==0.3.5\n")
    with pytest.raises(dlmodel.EngineError, match=r"pip install 'careamics==0.3.5' \(as the package's environment"):
        dlmodel.load(ok, engine="pytorch_state_dict")


@pytest.fixture(scope="module")
def v04_fixed(tmp_path_factory, torch2d) -> Path:
    """One valid format 0.4 package (its normalisation's mode does not matter here)."""
    return _v04_package(tmp_path_factory.mktemp("v04_fixed"), torch2d, "fixed")


def _v04_rdf(v04: Path, folder: Path, change) -> Path:
    pkg = zoo.copy_package(v04.parent, folder)
    rdf = next(pkg.glob("*.yaml"))
    yaml = YAML(typ="safe", pure=True)
    data = yaml.load(rdf.read_text())
    change(data)
    with open(rdf, "w") as f:
        yaml.dump(data, f)
    return rdf


def _fixed_input(d, out_shape):
    d["inputs"][0]["shape"] = [1, 1, 40, 32]
    d["outputs"][0]["shape"] = out_shape
    d["outputs"][0].pop("halo", None)  # with a halo, bioimageio.spec compares the lengths itself


@pytest.mark.parametrize("change, message", [
    # what bioimageio.spec's 0.4 model lets through, and dlmodel refuses
    (lambda d: d["outputs"][0].update(halo=[0, 0, -4, -4]), "tensor 'prob': halo along 'y' is -4; it must be a whole number >= 0"),
    (lambda d: _fixed_input(d, [1, 1, 40]), "tensor 'prob': shape has 3 value(s) for the 4 axes 'bcyx'"),
    # what bioimageio.spec refuses itself, in one line
    (lambda d: _fixed_input(d, [1, 1, 40, 0]), "Minimal shape [1, 1, 40, 0] of output prob is too small"),
    (lambda d: d["inputs"][0]["shape"].update(min=[1, 16, 16]), "inputs.0.shape"),
    (lambda d: d["outputs"][0].update(halo=[0, 0, 2]), "halo [0, 0, 2] has to have same length"),
])
def test_a_malformed_0_4_rdf_is_one_line(v04_fixed, tmp_path, change, message):
    rdf = _v04_rdf(v04_fixed, tmp_path / "pkg", change)
    with pytest.raises(dlmodel.DLModelError) as err:
        dlmodel.load(rdf)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    r = subprocess.run([sys.executable, "-m", "dlmodel.cli", "info", rdf], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


# --- plate --report: the metadata is checked before any segmentation; text is shown as written ---

SBS = ROOT.parent / "shared" / "data" / "ExampleSBSImages"


def _plate_folder(tmp_path: Path, wells=("A-01", "A-02", "E-01", "E-12")) -> Path:
    import shutil

    folder = tmp_path / "plate"
    folder.mkdir()
    for p in SBS.glob("Channel*.tif"):
        if p.stem.split("-", 2)[2] in wells:
            shutil.copy(p, folder)
    return folder


def _metadata(tmp_path: Path, change) -> Path:
    import csv

    with open(SBS / "1049_Metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    header, rows = change(header, rows)
    path = tmp_path / "meta.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda h, rows: (h, [{**r, "Column": "one"} if i == 5 else r for i, r in enumerate(rows)]),
     "line 7: Column 'one' is not a whole number from 1"),
    (lambda h, rows: (h, [{**r, "SBS_Doses": "lots"} if i == 3 else r for i, r in enumerate(rows)]),
     "line 5: SBS_Doses 'lots' is not a number"),
    (lambda h, rows: (h, rows + rows[:1]), "is listed twice"),
])
def test_plate_report_refuses_bad_metadata_before_segmenting(tmp_path, change, message):
    folder = _plate_folder(tmp_path)
    meta = _metadata(tmp_path, change)
    cmd = [sys.executable, "-m", "dlmodel.cli", "plate", ROOT / "models" / "nuclei_default", folder, "-o", tmp_path / "out",
           "--metadata", meta, "--report", "--controls", "SBS_Controls", "--doses", "SBS_Doses", "--threads", "1"]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was segmented or written


def test_plate_report_shows_a_dollar_in_a_column_name_as_written(tmp_path):
    folder = _plate_folder(tmp_path)
    dollars = "cost $ per well"  # an unpaired $: matplotlib's mathtext fails on it
    meta = _metadata(tmp_path, lambda h, rows: ([dollars if c == "SBS_Doses" else c for c in h],
                                                [{(dollars if k == "SBS_Doses" else k): v for k, v in r.items()} for r in rows]))
    cmd = [sys.executable, "-m", "dlmodel.cli", "plate", ROOT / "models" / "nuclei_default", folder, "-o", tmp_path / "out",
           "--metadata", meta, "--report", "--controls", "SBS_Controls", "--doses", dollars, "--threads", "1"]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "report written" in r.stdout, r.stderr[-3000:]
    assert dollars in (tmp_path / "out" / "report.html").read_text()

