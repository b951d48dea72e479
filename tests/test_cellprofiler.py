"""The RunDLModel CellProfiler module, run by a real headless `cellprofiler` (no mocks).

The CellProfiler tested is the one of the Python that runs pytest: CellProfiler 5 in .venv
(`make test`), CellProfiler 4.2.8.1 in .venv-cp4 (`make test-cp4`). With DLMODEL_ENGINE_PYTHON
set (the CellProfiler 4.2.8 leg: no engine, no bioimageio.spec there), every RunDLModel module runs
its model in that Python environment ("Python environment for the model").
"""
import csv
import importlib.util
import io
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import DSB_VAL, ROOT, SHARED

from dlmodel.instances import f1_at_iou

CELLPROFILER = Path(sys.executable).parent / "cellprofiler"
# the name in the rdf of dlmodel.DEFAULT_MODEL, RunDLModel's default
DEFAULT_NAME = "RunDLModel StarDist-style nuclei"
SBS = SHARED / "data" / "ExampleSBSImages"
VOLUME = SHARED / "data" / "nuclei3d_synthetic"
# where RunDLModel runs its models: "" = in CellProfiler's own process
ENGINE_PYTHON = os.environ.get("DLMODEL_ENGINE_PYTHON", "")
HAS_ENGINES = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("bioimageio") is not None


def _cellprofiler_version():
    for dist in ("cellprofiler-core", "cellprofiler-core-nightly"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


CP_VERSION = _cellprofiler_version()
CP4 = bool(CP_VERSION) and CP_VERSION.startswith("4.")

pytestmark = pytest.mark.skipif(not CELLPROFILER.exists(), reason="cellprofiler (cellprofiler-nightly) is not installed")
# tests that build their model packages here (torch, bioimageio.spec): not in CellProfiler 4.2.8's environment
builds_packages = pytest.mark.skipif(not HAS_ENGINES, reason="builds its test package with torch and bioimageio.spec, "
                                                             "which this CellProfiler's environment lacks")


def with_environment(pipeline_text, python):
    """A pipeline whose RunDLModel modules run their models in ``python`` (revision 4's last
    setting; a revision 3 module gets it added)."""
    setting = "    Python environment for the model:"
    out, in_module = [], False
    for line in pipeline_text.splitlines() + [""]:
        if line.startswith("RunDLModel:["):
            in_module = True
            line = line.replace("variable_revision_number:3|", "variable_revision_number:4|")
        elif in_module and line.startswith(setting):
            line, in_module = setting + python, False
        elif in_module and not line.strip():
            out.append(setting + python)
            in_module = False
        out.append(line)
    return "\n".join(out).rstrip("\n") + "\n"


def pipeline_file(pipeline, cp4=CP4):
    """An example pipeline as saved by this CellProfiler: 4.2.8 has its own files (it misreads
    5.0's Metadata module: test_pipelines_saved_by_one_version_load_in_the_other)."""
    return ROOT / "example_pipelines" / ("cellprofiler4" if cp4 else "") / pipeline


def run_cellprofiler(pipeline, images, out, *extra, timeout=900, python=None, cellprofiler=None, env=None):
    """A headless run of an example pipeline; its RunDLModel modules run their models in
    ``python`` (default: DLMODEL_ENGINE_PYTHON, "" for CellProfiler's own process)."""
    python = ENGINE_PYTHON if python is None else python
    cp4 = CP4 and cellprofiler is None  # the only other CellProfiler these tests run is 5
    path = pipeline_file(pipeline, cp4)
    if python:
        Path(out).mkdir(parents=True, exist_ok=True)
        path = Path(out) / f"_{Path(pipeline).name}"
        path.write_text(with_environment(pipeline_file(pipeline, cp4).read_text(), python))
    # offline: CellProfiler 5's Bio-Formats reader would fetch Java jars from Maven (4.2.8 has no
    # reader choice: its Bio-Formats jars come with it)
    readers = [] if cp4 else ["--enable-readers", "imageio_reader", "imageio_reader_v3"]
    cmd = [str(cellprofiler or CELLPROFILER), "-c", "-r", "-p", str(path), "--plugins-directory", str(ROOT / "plugins"),
           "-i", str(images), "-o", str(out), *readers, "-L", "INFO", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def nuclei_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nuclei_out")
    res = run_cellprofiler("nuclei.cppipe", DSB_VAL / "images", out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_nuclei_pipeline_exports_one_row_per_image(nuclei_run):
    out, _ = nuclei_run
    images = sorted((DSB_VAL / "images").glob("*.tif"))
    rows = read_csv(out / "Image.csv")
    assert len(rows) == len(images) == 32
    assert {r["FileName_DNA"] for r in rows} == {p.name for p in images}
    for r in rows:
        assert r["DLModel_Name_Nuclei"] == DEFAULT_NAME
        assert r["DLModel_Engine_Nuclei"] == "onnx" and r["DLModel_Device_Nuclei"] == "cpu"
        assert len(r["DLModel_RdfSha256_Nuclei"]) == 64 and float(r["DLModel_InferenceSeconds_Nuclei"]) > 0
        assert 1 <= int(float(r["Count_Nuclei"])) < 1000
    nuclei = read_csv(out / "Nuclei.csv")
    assert len(nuclei) == sum(int(float(r["Count_Nuclei"])) for r in rows)
    assert {"AreaShape_Area", "Intensity_MeanIntensity_DNA", "Location_Center_X"} <= set(nuclei[0])


def test_nuclei_pipeline_f1_against_the_true_labels(nuclei_run):
    """F1 at IoU 0.5, pooled over the 32 validation images (measured: 0.918 with the default model;
    0.803 with the earlier default, models/nuclei_default)."""
    out, _ = nuclei_run
    tp = fp = fn = 0
    for truth_path in sorted((DSB_VAL / "labels").glob("*.tif")):
        pred = tifffile.imread(out / f"{truth_path.stem}_nuclei.tiff")
        t, p, n = f1_at_iou(pred, tifffile.imread(truth_path))
        tp, fp, fn = tp + t, fp + p, fn + n
    f1 = 2 * tp / (2 * tp + fp + fn)
    print(f"nuclei.cppipe F1@0.5 = {f1:.3f} (TP {tp}, FP {fp}, FN {fn})")
    assert f1 >= 0.90


def test_model_is_loaded_once_for_all_image_sets(nuclei_run):
    _, res = nuclei_run
    assert res.stderr.count("dlmodel: loaded model") == 1


def _plate_subset(tmp_path, wells):
    folder = tmp_path / "plate"
    folder.mkdir()
    for p in SBS.glob("Channel*.tif"):
        if p.stem.split("-", 2)[2] in wells:
            shutil.copy(p, folder)
    shutil.copy(SBS / "1049_Metadata.csv", folder)
    return folder


def test_plate_pipeline_on_a_subset_of_wells(tmp_path):
    wells = ["A-01", "A-02", "B-05", "D-07", "E-12", "H-12"]
    res = run_cellprofiler("plate_screen.cppipe", _plate_subset(tmp_path, wells), tmp_path / "out")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_csv(tmp_path / "out" / "Image.csv")
    assert sorted(f"{r['Metadata_Row']}-{r['Metadata_Column']}" for r in rows) == sorted(wells)
    meta = {f"{r['Row']}-{r['Column']}": r for r in read_csv(SBS / "1049_Metadata.csv")}
    for r in rows:
        well = f"{r['Metadata_Row']}-{r['Metadata_Column']}"
        # typed in the Metadata module (float dose, integer control) for CalculateStatistics
        assert float(r["Metadata_SBS_Doses"]) == float(meta[well]["SBS_Doses"])
        assert int(r["Metadata_SBS_Controls"]) == int(meta[well]["SBS_Controls"])
        assert r["FileName_DNA"].startswith("Channel2") and r["FileName_GFP"].startswith("Channel1")
        assert 100 <= int(float(r["Count_Nuclei"])) <= 400  # measured on the full plate: 130..318
        assert float(r["Count_Cells"]) == float(r["Count_Nuclei"])
        assert float(r["Mean_Cytoplasm_Intensity_MeanIntensity_GFP"]) > 0
    cells = read_csv(tmp_path / "out" / "Cells.csv")
    assert "Metadata_SBS_Controls" in cells[0] and "Intensity_MeanIntensity_GFP" in cells[0]


def test_always_continue_keeps_the_other_image_sets(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted((DSB_VAL / "images").glob("*.tif"))[:3]
    for p in good:
        shutil.copy(p, folder)
    data = good[0].read_bytes()
    (folder / "zz_corrupted.tif").write_bytes(data[: len(data) // 3])  # a truncated TIFF
    nan = np.zeros((64, 64), np.float32)
    nan[10:20, 10:20] = np.nan
    tifffile.imwrite(folder / "zz_nan.tif", nan)  # NaN pixels: refused by RunDLModel where the reader keeps them
    res = run_cellprofiler("nuclei.cppipe", folder, tmp_path / "out", "--always-continue")
    rows = read_csv(tmp_path / "out" / "Image.csv")
    done = {r["FileName_DNA"]: r for r in rows if r.get("Count_Nuclei")}
    # 5.0's reader refuses the truncated TIFF (and hands NaN on as numbers); 4.2.8's Bio-Formats reads
    # what the truncated TIFF has, and hands the NaN on, which RunDLModel refuses
    refused = {"zz_nan.tif": "zz_nan.tif has 100 NaN or infinite pixel(s)"} if CP4 else \
        {"zz_corrupted.tif": "Error detected during run of module NamesAndTypes"}
    assert {p.name for p in good} <= set(done) and not set(done) & set(refused)
    for p in good:
        assert int(float(done[p.name]["Count_Nuclei"])) > 0
    nuclei = read_csv(tmp_path / "out" / "Nuclei.csv")
    assert len(nuclei) == sum(int(float(r["Count_Nuclei"])) for r in done.values())
    # the bad one is reported: an error in the log, and its row with no results
    for name, message in refused.items():
        assert message in res.stderr
        (bad,) = [r for r in rows if r["FileName_DNA"] == name]
        assert bad["Count_Nuclei"] == ""


def test_3d_pipeline(tmp_path):
    res = run_cellprofiler("nuclei_3d.cppipe", VOLUME, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (row,) = read_csv(tmp_path / "Image.csv")
    assert row["FileName_DNA"] == "img3d.tif" and int(float(row["Count_Nuclei"])) > 10
    nuclei = read_csv(tmp_path / "Nuclei.csv")
    zs = [float(n["Location_Center_Z"]) for n in nuclei]
    assert max(zs) > 5 and "AreaShape_Volume" in nuclei[0]


# --- the module in-process: settings, validation ---------------------------------------------

@pytest.fixture(scope="module")
def cp(cellprofiler_modules):
    instantiate_module = cellprofiler_modules

    def make(name):
        module = instantiate_module(name)
        if name == "RunDLModel" and ENGINE_PYTHON:
            module.python.value = ENGINE_PYTHON
        return module

    return make


def test_import_is_cheap():
    code = (
        "import sys; sys.path.insert(0, 'plugins'); import rundlmodel; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tensorflow', 'bioimageio.spec') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _roundtrip(module):
    from cellprofiler_core.pipeline import Pipeline

    p = Pipeline()
    module.set_module_num(1)
    p.add_module(module)
    buf = io.StringIO()
    p.dump(buf)
    q = Pipeline()
    q.load(io.StringIO(buf.getvalue()))
    return q.modules()[0], buf.getvalue()


def test_settings_roundtrip_through_a_saved_pipeline(cp):
    m = cp("RunDLModel")
    m.model_source.value = "models/nuclei3d_demo"
    m.engine.value = "TorchScript"
    m.tile_mode.value = "Custom"
    m.tile_size.value = 96
    m.add_input()
    m.inputs[0].image_name.value = "DNA"
    m.inputs[1].image_name.value = "GFP"
    m.add_output()
    m.outputs[1].output_id.value = "probability"
    m.outputs[1].make_objects.value = False
    m.outputs[1].image_name.value = "Prob2"
    m.outputs[0].min_size.value = 12
    m.outputs[0].discard_border.value = True
    m.python.value = "/opt/dlmodel-env/bin/python"
    loaded, text = _roundtrip(m)
    assert [s.unicode_value for s in loaded.settings()] == [s.unicode_value for s in m.settings()]
    assert len(loaded.inputs) == 2 and len(loaded.outputs) == 2 and loaded.python.value == "/opt/dlmodel-env/bin/python"
    again, text2 = _roundtrip(loaded)
    assert text2 == text


def test_upgrade_from_revision_1(cp):
    from cellprofiler_core.pipeline import Pipeline

    v1 = """CellProfiler Pipeline: http://www.cellprofiler.org
Version:5
DateRevision:500
GitHash:
ModuleCount:1
HasImagePlaneDetails:False

RunDLModel:[module_num:1|svn_version:'Unknown'|variable_revision_number:1|show_window:False|notes:[]|batch_state:array([], dtype=uint8)|enabled:True|wants_pause:False]
    Model:models/nuclei3d_demo
    Engine:ONNX
    Tile size:Custom
    Tile size (pixels):64
    Input image count:1
    Output count:1
    Input image:DNA
    Model output:probability
    Output channel:1
    Save the output as an image?:No
    Name the output image:Probability
    Make objects from the output?:Yes
    Name the objects:Nuclei3D
    Method:Threshold, then connected components
    Threshold:0.6
    Typical object diameter (pixels):10
    Minimum object size (pixels):5
"""
    p = Pipeline()
    p.load(io.StringIO(v1))
    m = p.modules()[0]
    assert m.variable_revision_number == 6
    assert m.trust.value is False and m.python.value == ""
    assert m.measure_confidence.value is False and m.augmentations.value == 3
    assert m.model_source.value == "models/nuclei3d_demo" and m.engine.value == "ONNX" and m.device.value == "CPU"
    assert m.tile_mode.value == "Custom" and m.tile_size.value == 64 and m.batch_size.value == 1
    assert m.batch_mode.value == "Automatic"  # 1 tile per batch was the only choice then: the core decides now
    g = m.outputs[0]
    assert g.objects_name.value == "Nuclei3D" and g.threshold.value == 0.6 and g.min_size.value == 5
    assert g.fill_holes.value is True and g.discard_border.value is False


def test_example_pipelines_load_with_confidence_off(cp):
    """The example pipelines (revision 5) load with the confidence settings off, and then list
    no confidence measurement."""
    from cellprofiler_core.pipeline import Pipeline

    p = Pipeline()
    p.load(str(pipeline_file("nuclei.cppipe")))
    m = next(m for m in p.modules() if m.module_name == "RunDLModel")
    assert m.variable_revision_number == 6
    assert m.measure_confidence.value is False and m.augmentations.value == 3
    assert m.augmentations not in m.visible_settings()
    assert not any("Confidence" in c[1] or "Copies" in c[1] for c in m.get_measurement_columns(p))
    m.measure_confidence.value = True
    cols = {(c[0], c[1]) for c in m.get_measurement_columns(p)}
    assert {("Image", "DLModel_Confidence_Nuclei"), ("Image", "DLModel_ConfidenceAmbiguity_Nuclei"),
            ("Image", "DLModel_ConfidenceCopies_Nuclei"), ("Nuclei", "DLModel_FoundInCopies")} <= cols
    assert "FoundInCopies" in m.get_measurements(p, "Nuclei", "DLModel")
    assert "Confidence" in m.get_measurements(p, "Image", "DLModel")


def test_revision_5_tiles_per_batch_become_automatic_or_custom(cp):
    """Revision 6's "Tiles per batch" choice: a revision 5 pipeline's 1 (the old default, which the
    core keeps on a CPU) becomes Automatic, so a GPU gets the core's several tiles per pass; any
    other number was the user's and stays, as Custom. Automatic passes None to the core."""
    from cellprofiler_core.pipeline import Pipeline

    text = pipeline_file("nuclei.cppipe").read_text()
    assert "RunDLModel:[module_num:5|svn_version:'Unknown'|variable_revision_number:5|" in text
    for size, mode in (("1", "Automatic"), ("3", "Custom")):
        p = Pipeline()
        p.load(io.StringIO(text.replace("    Tiles per batch:1\n", f"    Tiles per batch:{size}\n")))
        m = next(m for m in p.modules() if m.module_name == "RunDLModel")
        assert m.variable_revision_number == 6
        assert m.batch_mode.value == mode and m.batch_size.value == int(size)
        assert (m.batch_size in m.visible_settings()) == (mode == "Custom")
        saved = io.StringIO()
        p.dump(saved)
        assert f"Tiles per batch:{mode}" in saved.getvalue()


def with_confidence(pipeline_text, copies=2):
    """A pipeline whose RunDLModel modules measure the model's confidence with ``copies``
    augmented copies (revision 5's two settings after the Python environment; a revision 4
    module gets them added)."""
    out, in_module = [], False
    for line in pipeline_text.splitlines():
        if line.startswith("RunDLModel:["):
            in_module = True
            line = line.replace("variable_revision_number:4|", "variable_revision_number:5|")
        if in_module and line.startswith(("    Measure the model's confidence?:", "    Number of augmented copies:")):
            continue
        out.append(line)
        if in_module and line.startswith("    Python environment for the model:"):
            out += ["    Measure the model's confidence?:Yes", f"    Number of augmented copies:{copies}"]
            in_module = False
    return "\n".join(out) + "\n"


def test_confidence_measurements_in_a_headless_run(tmp_path):
    """Measure the model's confidence? Yes: per image DLModel_Confidence and its components, per
    nucleus the fraction of copies that found it again; sane values (in 4.2.8, through the worker)."""
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((DSB_VAL / "images").glob("*.tif"))[:2]:
        shutil.copy(f, images / f.name)
    pipeline = tmp_path / "nuclei_confidence.cppipe"
    pipeline.write_text(with_confidence(pipeline_file("nuclei.cppipe").read_text()))
    res = run_cellprofiler(str(pipeline), images, tmp_path / "out")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_csv(tmp_path / "out" / "Image.csv")
    assert len(rows) == 2
    for r in rows:
        assert 0 < float(r["DLModel_Confidence_Nuclei"]) <= 1
        assert 0 < float(r["DLModel_ConfidenceTTAF1_Nuclei"]) <= 1
        # the default is StarDist-style: its "probability" is a distance to the edge, not a probability,
        # so its ambiguity is not measured (docs/confidence.md)
        assert math.isnan(float(r["DLModel_ConfidenceAmbiguity_Nuclei"]))
        assert 0 <= float(r["DLModel_ConfidenceHistogramDistance_Nuclei"]) <= 1
        assert r["DLModel_ConfidenceCopies_Nuclei"].startswith("copies: ")
        assert "5 of the 7 valid transforms not drawn" in r["DLModel_ConfidenceCopies_Nuclei"]
    nuclei = read_csv(tmp_path / "out" / "Nuclei.csv")
    assert len(nuclei) == sum(int(float(r["Count_Nuclei"])) for r in rows)
    found = np.array([float(n["DLModel_FoundInCopies"]) for n in nuclei])
    assert set(np.unique(found)) <= {0.0, 0.5, 1.0} and found.mean() > 0.8


def _validate(module, volumetric=False):
    from cellprofiler_core.pipeline import Pipeline

    p = Pipeline()
    module.set_module_num(1)
    p.add_module(module)
    p.volumetric = lambda: volumetric
    module.validate_module(p)


@pytest.mark.parametrize(
    "change, setting, message",
    [
        (lambda m: setattr(m.model_source, "value", ""), "model_source", "Choose a model"),
        (lambda m: setattr(m.model_source, "value", "no/such/model"), "model_source", "not a file, folder"),
        (lambda m: setattr(m.engine, "value", "TensorFlow"), "engine", "has no tensorflow weights"),
        (lambda m: (m.add_input(), m.inputs[1].image_name.__setattr__("value", "GFP")), "inputs", "1 channel"),
        (lambda m: setattr(m.outputs[0].output_id, "value", "mask"), "output_id", "no output 'mask'"),
        (lambda m: setattr(m.outputs[0].channel, "value", 2), "channel", "has 1 channel"),
    ],
)
def test_validate_module_names_the_setting(cp, change, setting, message):
    from cellprofiler_core.setting import ValidationError

    m = cp("RunDLModel")
    m.model_source.value = "../shared/models/unet2d_nuclei_broad"
    m.inputs[0].image_name.value = "DNA"
    _validate(m)  # valid as set up
    change(m)
    with pytest.raises(ValidationError) as err:
        _validate(m)
    assert message in err.value.message
    expected = {"model_source": m.model_source, "engine": m.engine, "inputs": m.inputs[-1].image_name,
                "output_id": m.outputs[0].output_id, "channel": m.outputs[0].channel}[setting]
    assert err.value.get_setting() is expected


def test_3d_model_needs_a_3d_pipeline(cp):
    from cellprofiler_core.setting import ValidationError

    m = cp("RunDLModel")
    m.model_source.value = "models/nuclei3d_demo"
    m.inputs[0].image_name.value = "DNA"
    _validate(m, volumetric=True)
    with pytest.raises(ValidationError, match="3D model"):
        _validate(m, volumetric=False)


def test_model_information_is_shown(cp):
    m = cp("RunDLModel")
    m.model_source.value = "../shared/models/unet2d_nuclei_broad"
    assert m.model_info in m.visible_settings()
    html = m.model_info.content
    assert "UNet 2D Nuclei Broad" in html and "MIT" in html and "Constantin Pape" in html and "halo" in html
    report = m.do_check_model()  # headless: the message is returned (and logged)
    assert "reproduces its test outputs" in report and "NOT" not in report


def test_choose_a_model_says_in_one_line_why_it_cannot_open_without_bioimageio_spec(cp):
    """The button is shown in both CellProfilers; 4.2.8's app has no bioimageio.spec to read the
    catalogue's cards, and the button says so (in the window, in a message box) in one line."""
    m = cp("RunDLModel")
    assert m.choose_model_button in m.visible_settings() and m.choose_model_button not in m.settings()
    why = m.do_choose_model()  # headless: what the window would show ('' where the dialog opens)
    if importlib.util.find_spec("bioimageio") is None:
        assert why.startswith("Choose a model… needs bioimageio.spec in CellProfiler's own Python") and "\n" not in why
        assert "type a zoo id, folder, zip or rdf in Model" in why
    else:
        assert why == ""


@builds_packages
def test_check_model_says_when_a_package_is_not_reproduced(cp, torch2d, tmp_path):
    import zoo

    m = cp("RunDLModel")
    # a package whose test output its weights do not reproduce: the check says so
    pkg = zoo.copy_package(torch2d.parent, tmp_path / "pkg")
    np.save(pkg / "test_prob.npy", np.load(pkg / "test_prob.npy") + 0.1)
    rdf = pkg / "bioimageio.yaml"
    rdf.write_text(rdf.read_text().replace(zoo.sha256(torch2d.parent / "test_prob.npy"), zoo.sha256(pkg / "test_prob.npy")))
    m.model_source.value = str(pkg)
    m.engine.value = "ONNX"
    report = m.do_check_model()
    assert "does NOT reproduce its test outputs" in report and "max abs error 0.1" in report


def test_a_failing_image_set_names_the_module_and_the_image(cp):
    """run() on a real CellProfiler workspace with an image no model can use (all NaN)."""
    from cellprofiler_core.image import Image, ImageSetList
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.object import ObjectSet
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.workspace import Workspace

    m = cp("RunDLModel")
    m.model_source.value = "../shared/models/unet2d_nuclei_broad"
    m.inputs[0].image_name.value = "DNA"
    m.set_module_num(1)
    pipeline = Pipeline()
    pipeline.add_module(m)
    image_sets = ImageSetList()
    image_set = image_sets.get_image_set(0)
    image_set.add("DNA", Image(np.full((64, 64), np.nan, np.float32)))
    measurements = Measurements()
    measurements.add_image_measurement("FileName_DNA", "plate1_A01.tif")
    workspace = Workspace(pipeline, m, image_set, ObjectSet(), measurements, image_sets)
    with pytest.raises(RuntimeError) as err:
        m.run(workspace)
    msg = str(err.value)
    assert msg.startswith("RunDLModel #1, image set 1 (plate1_A01.tif): ") and "NaN" in msg and "\n" not in msg


@builds_packages
def test_trust_no_means_no_for_a_folder_on_disk(cp, torch2d):
    """RunDLModel's 'Trust code from the model package? No' refuses a local package's code too."""
    import dlmodel

    m = cp("RunDLModel")
    m.model_source.value = str(torch2d.parent)
    m.engine.value = "PyTorch"  # a state dict with the package's own architecture file
    assert m.trust.value is False
    with pytest.raises(dlmodel.TrustError, match="not to be trusted.*tiny_arch.py"):
        m._model()
    m.trust.value = True
    assert m._model().test().ok


@builds_packages
@pytest.mark.parametrize("where", ["in-process", "worker"])
def test_trust_no_refuses_an_import_from_architecture(cp, torch2d, tmp_path, where):
    """A package naming subprocess.run as its architecture (issue 25): RunDLModel with Trust No
    runs nothing, in CellProfiler's process and through a model environment's worker."""
    import dlmodel
    from test_package_code import _hostile

    started = tmp_path / "started"
    rdf = _hostile(torch2d, tmp_path / "pkg", "subprocess", "run", {"args": f"touch {started}", "shell": True})
    m = cp("RunDLModel")
    m.model_source.value = str(rdf.parent)
    m.python.value = _worker_python() if where == "worker" else ""
    assert m.trust.value is False
    with pytest.raises(dlmodel.TrustError, match=r"calls subprocess\.run, which is not a network class"):
        m._model()
    assert not started.exists()


def test_rundlmodel_asks_the_core_which_objects(cp, nuclei_model):
    """New modules start from the core's defaults and hand their settings to the core's
    resolve_recipe (tested in test_instances.py), in validation too (issue 17)."""
    import dlmodel

    m = cp("RunDLModel")
    g = m.outputs[0]
    d = dlmodel.instances.DEFAULT_RECIPE
    assert (g.threshold.value, g.diameter.value or None, g.min_size.value) == (d["threshold"], d["diameter"], d["min_size"])
    assert m._object_choices(g, dlmodel.client.read_spec(str(nuclei_model), ENGINE_PYTHON or None))["method"] == "auto"
    m.model_source.value = "models/nuclei_default"  # has its own recipe, on output 'prediction'
    m.inputs[0].image_name.value = "DNA"
    g.make_objects.value = True
    g.output_id.value = "prediction"
    _validate(m)


# ----------------------------------------------------------------------------- model families (issue 16)
FIXTURES = ROOT / "tests" / "fixtures"


def _pipeline_with_model(tmp_path, pipeline, model):
    """An example pipeline with its RunDLModel pointed at another model package."""
    text = (ROOT / "example_pipelines" / pipeline).read_text()
    old = next(line.split(":", 1)[1] for line in text.splitlines() if line.strip().startswith("Model:"))
    path = tmp_path / pipeline
    path.write_text(text.replace(f"Model:{old}", f"Model:{model}"))
    return path


def test_the_stardist_example_pipeline_runs_as_shipped(tmp_path):
    """example_pipelines/stardist_nuclei.cppipe, unchanged, with models/stardist_nuclei (StarDist's
    own bioimage.io export): method Automatic runs StarDist's non-maximum suppression with the
    package's thresholds; CellProfiler gets the objects Python gets and measures them."""
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((DSB_VAL / "images").glob("*.tif"))[:3]:
        shutil.copy(p, folder)
    res = run_cellprofiler("stardist_nuclei.cppipe", folder, tmp_path / "out")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_csv(tmp_path / "out" / "Image.csv")
    assert len(rows) == 3 and {r["DLModel_Name_Nuclei"] for r in rows} == {"RunDLModel StarDist nuclei"}
    nuclei = read_csv(tmp_path / "out" / "Nuclei.csv")
    assert len(nuclei) == sum(int(float(r["Count_Nuclei"])) for r in rows) > 0
    import dlmodel

    model = dlmodel.load(ROOT / "models" / "stardist_nuclei", python=ENGINE_PYTHON or None)
    counts = []
    for r in rows:  # the objects StarDist makes in Python, minimum size 10 as the pipeline says
        image = tifffile.imread(folder / r["FileName_DNA"])
        labels = model.labels(model.predict(image, axes="yx"), min_size=10, fill_holes=False)
        saved = tifffile.imread(tmp_path / "out" / f"{Path(r['FileName_DNA']).stem}_nuclei.tiff")
        assert int(float(r["Count_Nuclei"])) == labels.max() == len(np.unique(saved)) - 1
        np.testing.assert_array_equal(saved > 0, labels > 0)
        counts.append(f1_at_iou(saved, tifffile.imread(DSB_VAL / "labels" / r["FileName_DNA"])))
    tp, fp, fn = np.sum(counts, axis=0)
    assert 2 * tp / (2 * tp + fp + fn) > 0.8  # 0.892 pooled over all 32 images (docs/accuracy.md)


def headless_training_data(text):
    """make_training_data.cppipe as docs/finetune.md says to run it headless: EditObjectsManually
    needs a person at the window (headless it stops the run), so it is turned off and
    ConvertObjectsToImage takes RunDLModel's objects as they are."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("EditObjectsManually:["):
            lines[i] = line.replace("|enabled:True|", "|enabled:False|")
        elif line.strip() == "Select the input objects:CorrectedNuclei":
            lines[i] = line.replace("CorrectedNuclei", "Nuclei")
    out = "\n".join(lines) + "\n"
    assert out.count("enabled:False") == 1 and "input objects:Nuclei" in out
    return out


def test_the_training_data_pipeline_saves_the_pairs_dlmodel_finetune_reads(tmp_path):
    """example_pipelines/make_training_data.cppipe headless on three training images: image and
    16-bit label image of the same name in images/ and labels/ of the output folder; the labels
    are RunDLModel's objects; dlmodel finetune reads the pairs and fine-tunes the default model
    on them (one epoch: the loop closes, from CellProfiler to a new package)."""
    train = SHARED / "data" / "dsb2018_nuclei_train" / "images"
    folder = tmp_path / "in"
    folder.mkdir()
    names = [p.name for p in sorted(train.glob("*.tif"))[:3]]
    for name in names:
        shutil.copy(train / name, folder)
    pipeline = tmp_path / "make_training_data_headless.cppipe"
    pipeline.write_text(headless_training_data(pipeline_file("make_training_data.cppipe").read_text()))
    out = tmp_path / "out"
    res = run_cellprofiler(str(pipeline), folder, out)
    assert res.returncode == 0, res.stderr[-3000:]
    stems = sorted(Path(n).stem for n in names)
    assert sorted(p.stem for p in (out / "images").iterdir()) == stems
    assert sorted(p.stem for p in (out / "labels").iterdir()) == stems
    for stem in stems:
        image = tifffile.imread(next((out / "images").glob(stem + ".*")))
        labels = tifffile.imread(next((out / "labels").glob(stem + ".*")))
        original = tifffile.imread(train / f"{stem}.tif")
        assert labels.dtype == np.uint16 and labels.shape == image.shape == original.shape[:2] and labels.max() > 5
        assert np.corrcoef(image.ravel().astype(float), original.ravel().astype(float))[0, 1] > 0.999
    if not HAS_ENGINES:
        return
    import dlmodel

    result = dlmodel.finetune(ROOT / "models" / "nuclei_default", out / "images", out / "labels", tmp_path / "new",
                              epochs=1, crop=128, progress=False)
    model = dlmodel.load(result.rdf)
    assert model.test().ok and set(model.spec.weights) == {"onnx", "torchscript", "pytorch_state_dict"}
    facts = model.spec.config["dlmodel"]["finetune"]
    assert sorted(Path(i["image"]).stem for i in facts["images"]) == stems
    assert facts["parent"]["name"] == "RunDLModel default nuclei"


def test_a_denoising_model_gives_cellprofiler_an_image_of_its_own_intensities(tmp_path, cp):
    """A Noise2Void package (n2v's own export): RunDLModel saves the restored image (float, the
    model's intensities), IdentifyPrimaryObjects finds nuclei on it and MeasureImageIntensity
    measures it."""
    import importlib.util

    import dlmodel

    spec = importlib.util.spec_from_file_location("build_pipelines", ROOT / "example_pipelines" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    instantiate = cp  # CellProfiler's modules, this plugin's among them, filled once per test module
    model_path = FIXTURES / "n2v_tiny" / "n2v_tiny.bioimage.io.zip"
    steps = build.nuclei(instantiate)[:4] + [
        build.rundlmodel(instantiate, "DNA", "Unused", "Denoise with Noise2Void; no objects.", model=str(model_path),
                         probability="Denoised", **{"Make objects from the output?": "No"}),
        build.module(instantiate, "IdentifyPrimaryObjects", "Nuclei on the denoised image.",
                     {"Select the input image": "Denoised", "Name the primary objects to be identified": "Nuclei"}),
        build.module(instantiate, "MeasureImageIntensity", "The denoised image's intensity.",
                     {"Select images to measure": "Denoised"}),
        build.module(instantiate, "ExportToSpreadsheet", "Image.csv.",
                     {"Add a prefix to file names?": "No", "Overwrite existing files without warning?": "Yes"}),
    ]
    build.save(steps, tmp_path / "denoise.cppipe")
    folder = tmp_path / "images"
    folder.mkdir()
    first = sorted((DSB_VAL / "images").glob("*.tif"))[0]
    shutil.copy(first, folder)
    res = run_cellprofiler(tmp_path / "denoise.cppipe", folder, tmp_path / "out")
    assert res.returncode == 0, res.stderr[-3000:]
    row = read_csv(tmp_path / "out" / "Image.csv")[0]
    assert int(float(row["Count_Nuclei"])) > 0
    denoised = dlmodel.load(model_path, python=ENGINE_PYTHON or None).predict(tifffile.imread(first), axes="yx")["output0"]
    assert denoised.max() > 2  # the model's own intensities (the image's scale), not 0-1
    assert float(row["Intensity_MeanIntensity_Denoised"]) == pytest.approx(float(denoised.mean()), rel=1e-5)


# --- the model in its own Python environment ("Python environment for the model") ------------

def _worker_python():
    """The environment the worker tests run models in: DLMODEL_ENGINE_PYTHON, else this test's own."""
    return ENGINE_PYTHON or sys.executable


def test_the_python_environment_setting_is_checked_before_the_run(cp, tmp_path):
    from cellprofiler_core.setting import ValidationError

    from conftest import make_environment

    m = cp("RunDLModel")
    m.inputs[0].image_name.value = "DNA"
    # a shared pipeline naming a program: validation (which the GUI runs on opening a pipeline)
    # starts nothing that is not approved on this machine
    started = tmp_path / "started"
    not_python = tmp_path / "not_python"
    not_python.write_text(f"#!/bin/sh\ntouch {started}\necho 'this is not a Python' >&2\nexit 3\n")
    not_python.chmod(0o755)
    no_onnx = make_environment(tmp_path / "no_onnx", _worker_python(), block=["onnxruntime", "torch"])
    unapproved = "this pipeline's 'Python environment for the model' {} is not approved on this machine, so it was not started"
    for python, message in ((tmp_path / "nope" / "bin" / "python", "no such Python"),
                            (not_python, unapproved.format(not_python)),
                            (no_onnx, f"no engine installed for model '{DEFAULT_NAME}'")):
        m.python.value = str(python)
        with pytest.raises(ValidationError) as err:
            _validate(m)
        assert message in err.value.message and str(python) in err.value.message
        assert err.value.get_setting() is m.python
    assert not started.exists()
    assert f"dlmodel env add {not_python}" in unapproved_message(m, not_python) and _worker_python() in \
        unapproved_message(m, not_python)  # and it lists the approved ones to choose from
    m.python.value = _worker_python()
    _validate(m)
    if importlib.util.find_spec("bioimageio") is None:  # CellProfiler 4.2.8 as it comes: the model needs an environment
        m.python.value = ""
        with pytest.raises(ValidationError, match="lacks bioimageio.spec: set a Python environment") as err:
            _validate(m)
        assert err.value.get_setting() is m.python


def unapproved_message(m, python):
    from cellprofiler_core.setting import ValidationError

    m.python.value = str(python)
    try:
        _validate(m)
    except ValidationError as e:
        return e.message
    return ""


def test_a_shared_pipeline_naming_an_unapproved_program_runs_nothing_headless(tmp_path):
    """A colleague's .cppipe whose RunDLModel names a program: the headless run starts nothing,
    fails loudly (not a run that "finishes normally"), and says how to approve it."""
    started = tmp_path / "started"
    program = tmp_path / "evil" / "bin" / "python"
    program.parent.mkdir(parents=True)
    program.write_text(f"#!/bin/sh\ntouch {started}\nexit 3\n")
    program.chmod(0o755)
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted((DSB_VAL / "images").glob("*.tif"))[:1]:
        shutil.copy(f, images / f.name)
    res = run_cellprofiler("nuclei.cppipe", images, tmp_path / "out", python=str(program), timeout=600)
    assert not started.exists()
    log = res.stdout + res.stderr
    assert f"{program} is not approved on this machine, so it was not started" in log, log[-3000:]
    assert f"dlmodel env add {program}" in log
    assert res.returncode != 0 and not (tmp_path / "out" / "Nuclei.csv").exists()


def _workspace(module, image, file_name, number):
    from cellprofiler_core.image import Image, ImageSetList
    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.object import ObjectSet
    from cellprofiler_core.pipeline import Pipeline
    from cellprofiler_core.workspace import Workspace

    pipeline = Pipeline()
    pipeline.add_module(module)
    image_sets = ImageSetList()
    image_set = image_sets.get_image_set(0)
    image_set.add("DNA", Image(image))
    measurements = Measurements()
    if number > 1:
        measurements.next_image_set(number)
    measurements.add_image_measurement("FileName_DNA", file_name)
    return Workspace(pipeline, module, image_set, ObjectSet(), measurements, image_sets)


def test_the_default_module_saves_its_probability_and_objects_at_the_images_size(cp):
    """RunDLModel as added, on an odd-sized image: the default model predicts on every 2nd pixel;
    its probability image and its objects still stand on the image's pixels."""
    m = cp("RunDLModel")
    m.inputs[0].image_name.value = "DNA"
    _validate(m)
    assert m.outputs[0].save_image.value and m.outputs[0].make_objects.value
    image = tifffile.imread(sorted((DSB_VAL / "images").glob("*.tif"))[3])[:251, :237] / 255.0
    ws = _workspace(m, image, "odd.tif", 1)
    m.run(ws)
    probability = ws.image_set.get_image("Probability").pixel_data
    nuclei = ws.object_set.get_objects("Nuclei").segmented
    assert probability.shape == nuclei.shape == image.shape and nuclei.max() > 10
    # each cell of the grid covers 2 x 2 pixels; the odd last row and column repeat the last cell
    assert np.array_equal(probability[0:250:2, 0:236:2], probability[1:251:2, 1:237:2])
    assert np.array_equal(probability[250], probability[249])
    assert probability[nuclei > 0].mean() > probability[nuclei == 0].mean() + 0.3


def test_a_killed_worker_fails_that_image_set_and_the_next_starts_afresh(cp):
    import dlmodel

    python = _worker_python()
    m = cp("RunDLModel")
    m.python.value = python
    m.inputs[0].image_name.value = "DNA"
    m.set_module_num(1)
    files = sorted((DSB_VAL / "images").glob("*.tif"))[:3]
    counts = []
    ws = _workspace(m, tifffile.imread(files[0]), files[0].name, 1)
    m.run(ws)
    counts.append(ws.measurements.get_current_image_measurement("Count_Nuclei"))
    worker = dlmodel.client.worker_for(python)
    first_pid = worker.pid
    # dies while working on image set 2 (as a crash or the OOM killer would): stopped first, so the
    # kill lands mid-request every time
    os.kill(first_pid, signal.SIGSTOP)
    threading.Timer(0.5, os.kill, (first_pid, signal.SIGKILL)).start()
    ws = _workspace(m, tifffile.imread(files[1]), files[1].name, 2)
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError) as err:
        m.run(ws)
    msg = str(err.value)
    assert msg.startswith(f"RunDLModel #1, image set 2 ({files[1].name}): the model's Python environment {python} "
                          f"was killed (signal 9) while running model '{DEFAULT_NAME}'") and "\n" not in msg
    assert time.perf_counter() - t0 < 10  # noticed at once, no timeout needed
    ws = _workspace(m, tifffile.imread(files[2]), files[2].name, 3)
    m.run(ws)  # a fresh worker, the model loaded again
    assert worker.pid != first_pid
    assert ws.measurements.get_current_image_measurement("Count_Nuclei") > 0
    second_pid = worker.pid
    m.post_run(ws)  # the end of the run: the worker exits
    for pid in (first_pid, second_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _processes_with(marker):
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


# what differs between any two runs: times, paths, CellProfiler's own bookkeeping
RUN_COLUMNS = ("ExecutionTime_", "DLModel_InferenceSeconds_", "PathName_", "URL_", "ModuleError_", "ImageSet_",
               "MD5Digest_", "Frame_", "Series_", "SeriesName_", "Channel_", "C_", "T_", "Z_", "Height_", "Width_",
               "Scaling_", "Group_", "Metadata_Frame", "Metadata_Series", "Metadata_Well", "Metadata_FileLocation")
# what CellProfiler 4.2.8's MeasureObjectIntensity computes otherwise than 5.0's (ties, the MAD)
CP4_VS_CP5 = ("Intensity_MADIntensity_", "Location_MaxIntensity_")


def _same_values(a, b, columns):
    """Rows equal in ``columns``: text exactly, numbers to float32 precision (4.2.8 writes 243.0
    where 5.0 writes 243, and float32 thresholds with fewer digits)."""
    bad = []
    for i, (ra, rb) in enumerate(zip(a, b)):
        for k in columns:
            x, y = ra[k], rb[k]
            if x == y:
                continue
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                bad.append((i, k, x, y))
                continue
            if (CP4 and k.endswith("AreaShape_Orientation") and abs(fx) == abs(fy) == 45.0
                    and ra.get("AreaShape_Eccentricity") == rb.get("AreaShape_Eccentricity")):
                # an object whose second moments along y and x are equal: scikit-image 0.18 (CellProfiler
                # 4.2.8) gives +45 where later versions (5.0) give -45 and vice versa (its fixed special case)
                continue
            if not (np.isnan(fx) and np.isnan(fy)) and abs(fx - fy) > 1e-6 * max(1.0, abs(fx)):
                bad.append((i, k, x, y))
    return bad


@pytest.mark.parametrize("pipeline, take", [("nuclei.cppipe", 3), ("plate_screen.cppipe", 3)])
def test_csvs_equal_an_in_process_run(tmp_path, pipeline, take):
    """This CellProfiler runs the model in another environment (4.2.8: with no engine and no
    bioimageio.spec of its own); CellProfiler 5 runs it in its own process; same CSVs. No
    worker outlives the run."""
    if pipeline == "nuclei.cppipe":
        images = tmp_path / "images"
        images.mkdir()
        for p in sorted((DSB_VAL / "images").glob("*.tif"))[:take]:
            shutil.copy(p, images)
    else:
        images = _plate_subset(tmp_path, ["B-05", "D-07", "H-12"][:take])
    python = _worker_python()
    reference = Path(python).parent / "cellprofiler" if CP4 else None  # CellProfiler 5, in-process
    ref = run_cellprofiler(pipeline, images, tmp_path / "in_process", python="", cellprofiler=reference)
    assert ref.returncode == 0, ref.stderr[-3000:]
    marker = f"DLMODEL_TEST_RUN={os.getpid()}_{time.monotonic_ns()}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    res = run_cellprofiler(pipeline, images, tmp_path / "worker", python=python, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "dlmodel: started a worker in" in res.stderr and res.stderr.count("dlmodel: loaded model") == 1
    assert _processes_with(marker) == []  # the worker ended with the run
    # Experiment.csv records the pipeline's text and CellProfiler's version: not results
    csvs = sorted(p.name for p in (tmp_path / "in_process").glob("*.csv") if p.name != "Experiment.csv")
    assert csvs and csvs == sorted(p.name for p in (tmp_path / "worker").glob("*.csv") if p.name != "Experiment.csv")
    skip = RUN_COLUMNS + (CP4_VS_CP5 if CP4 else ())
    for name in csvs:
        a, b = read_csv(tmp_path / "in_process" / name), read_csv(tmp_path / "worker" / name)
        common = {k for k in set(a[0]) & set(b[0]) if not k.startswith(skip) and not any(c in k for c in CP4_VS_CP5 if c in skip)}
        ours = {"Count_Nuclei", "DLModel_Name_Nuclei", "DLModel_RdfSha256_Nuclei"} if name == "Image.csv" else \
            {"Location_Center_X", "Location_Center_Y", "Number_Object_Number"}
        assert ours <= common, (name, sorted(set(a[0]) ^ set(b[0])))
        assert len(a) == len(b) and not _same_values(a, b, sorted(common)), (name, _same_values(a, b, sorted(common))[:5])


DUMP = """
import json, sys
import cellprofiler_core.preferences as prefs
prefs.set_headless()
prefs.set_plugin_directory(sys.argv[3])
from cellprofiler_core.utilities.core.modules import fill_modules
fill_modules()
from cellprofiler_core.pipeline import Pipeline
p = Pipeline()
p.load(sys.argv[1])
with open(sys.argv[2], "w") as f:
    p.dump(f)
print(json.dumps([[m.module_name, [s.unicode_value for s in m.settings()]] for m in p.modules()]))
"""


def _load_and_save(python, pipeline, saved):
    res = subprocess.run([str(python), "-c", DUMP, str(pipeline), str(saved), str(ROOT / "plugins")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def _other_cellprofiler():
    """The Python of the other CellProfiler: 5's (the engine environment) from the 4.2.8 leg,
    4.2.8's (.venv-cp4, made by make cp4-setup) from the 5 leg."""
    other = Path(ENGINE_PYTHON) if CP4 else ROOT / ".venv-cp4" / "bin" / "python"
    if not other.exists():
        pytest.skip("the other CellProfiler is not installed (make cp4-setup)")
    return other


@pytest.mark.parametrize("pipeline", ["nuclei.cppipe", "plate_screen.cppipe", "nuclei_3d.cppipe", "stardist_nuclei.cppipe",
                                      "make_training_data.cppipe"])
def test_pipelines_saved_by_one_version_load_in_the_other(tmp_path, pipeline):
    """Our pipelines saved by 4.2.8 (example_pipelines/cellprofiler4/) load in 5.0 setting for
    setting as those saved by 5.0; 5.0's load in 4.2.8 as 4.2.8's own, but for plate_screen's
    Metadata module: 4.2.8 reads 5.0's revision 7 as its revision 6, and the second extraction
    group (the per-well CSV) comes out shifted (docs/cellprofiler.md: which file to use)."""
    import json

    cp4_python, cp5_python = (Path(sys.executable), _other_cellprofiler()) if CP4 else (_other_cellprofiler(), Path(sys.executable))
    by5, by4 = pipeline_file(pipeline, cp4=False), pipeline_file(pipeline, cp4=True)
    in5 = [json.loads(_load_and_save(cp5_python, f, tmp_path / "saved.cppipe")) for f in (by5, by4)]
    assert in5[0] == in5[1]
    in4 = [json.loads(_load_and_save(cp4_python, f, tmp_path / "saved.cppipe")) for f in (by5, by4)]
    assert [m for m, _ in in4[0]] == [m for m, _ in in4[1]] == [m for m, _ in in5[0]]
    misread = [m for (m, a), (_, b) in zip(*in4) if a != b]
    assert misread == (["Metadata"] if pipeline == "plate_screen.cppipe" else [])


def test_fastest_engine_says_which_engine_ran_and_why(tmp_path):
    """RunDLModel's Engine: Fastest in a headless run: the core measures once (the cache is
    CellProfiler's process's), and DLModel_Engine gives the engine with the reason."""
    if ENGINE_PYTHON:
        pytest.skip("with a Python environment the measurement happens in the worker (see docs/cellprofiler.md)")
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((DSB_VAL / "images").glob("*.tif"))[:2]:
        shutil.copy(p, folder)
    pipeline = tmp_path / "fastest.cppipe"
    text = pipeline_file("nuclei.cppipe", CP4).read_text()
    assert "Engine:Automatic" in text
    pipeline.write_text(text.replace("Engine:Automatic", "Engine:Fastest"))
    env = {**os.environ, "DLMODEL_CACHE": str(tmp_path / "cache")}
    res = run_cellprofiler(pipeline, folder, tmp_path / "out", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_csv(tmp_path / "out" / "Image.csv")
    assert len(rows) == 2
    for r in rows:
        engine = r["DLModel_Engine_Nuclei"]
        assert engine.startswith(("onnx (fastest: ", "torchscript (fastest: ")) and "measured" in engine, engine
    assert (tmp_path / "cache" / "fastest.json").is_file()
