"""
RunDLModel
==========

**RunDLModel** runs a trained deep-learning model from the BioImage Model Zoo
(https://bioimage.io) on the images of each image set, with the model package's own pre- and
post-processing, and turns its outputs into images and objects that the usual modules
(MeasureObjectSizeShape, MeasureObjectIntensity, RelateObjects, IdentifySecondaryObjects,
ExportToSpreadsheet...) measure.

Point **Model** at a model package: its folder, its ``bioimageio.yaml``/``rdf.yaml``, its
``.zip``, a URL, or a zoo id such as ``affable-shark`` (downloaded once into a cache), or press
**Choose a model…** to search the BioImage Model Zoo and this computer's models, read each
model's card and use one. The module shows the model's cover, name, authors, licence, citation
and tensors. **Check model** runs the package's own test images and reports whether this
computer reproduces them.

Images of any size are tiled as the model needs, with per-image normalisation computed on the
whole image. Intensities reach the model as stored in the file (CellProfiler's 0-1 rescaling is
undone), as the model's authors saw them.

The model is loaded once per process and reused for every image set and by every RunDLModel
module using the same model, engine and device. **Python environment for the model** runs it in
another Python environment (one with the engines and bioimageio.spec installed, e.g. made by
``dlmodel env create``): one worker process per CellProfiler process, images and outputs passed
through shared memory; this CellProfiler then needs only numpy.

============ ============ ===============
Supports 2D? Supports 3D? Respects masks?
============ ============ ===============
YES          YES          NO
============ ============ ===============

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Image measurements** (suffixed with the first output's name): *DLModel_Name*,
*DLModel_Version* (zoo id and version, if any), *DLModel_RdfSha256* (identifies the exact model
package), *DLModel_Engine*, *DLModel_Device* and *DLModel_InferenceSeconds*; *Count_<objects>*.

**Object measurements**: *Location_Center_X*, *Location_Center_Y*, *Location_Center_Z*,
*Number_Object_Number*.
"""
# Importing this file must stay cheap: no engine (torch, TensorFlow, onnxruntime) is imported
# until a model is loaded, so CellProfiler starts fast and lists the module without them. With a
# "Python environment for the model" this side needs only numpy and the standard library
# (dlmodel.client), so it runs in CellProfiler 4.2.8 (Python 3.9): keep the syntax 3.9's.
import logging
import os
import sys
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
from cellprofiler_core.constants.measurement import COLTYPE_FLOAT, COLTYPE_VARCHAR, IMAGE
from cellprofiler_core.image import Image
from cellprofiler_core.module import Module
from cellprofiler_core.object import Objects
from cellprofiler_core.setting import Binary, Divider, HiddenCount, HTMLText, SettingsGroup, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.do_something import DoSomething, RemoveSettingButton
from cellprofiler_core.setting.subscriber import ImageSubscriber
from cellprofiler_core.setting.text import Float, ImageName, Integer, LabelName, Text

LOGGER = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEVICES = ["Automatic", "CPU", "GPU"]
DEVICE_ARG = {"Automatic": "auto", "CPU": "cpu", "GPU": "cuda"}
TILE_AUTO, TILE_CUSTOM = "Automatic", "Custom"
BATCH_AUTO, BATCH_CUSTOM = "Automatic", "Custom"
M_AUTO = "Automatic: the model's own recipe, else a watershed split"
M_WATERSHED = "Threshold, then split touching objects (watershed)"
M_THRESHOLD = "Threshold, then connected components"
M_LABELS = "The output is a label image: use it as is"
METHOD_ARG = {M_AUTO: "auto", M_WATERSHED: "watershed", M_THRESHOLD: "threshold", M_LABELS: "labels"}
FIRST_OUTPUT = "First output"
# the per-image confidence measurements (feature, dlmodel.confidence component) and the text one
CONFIDENCE_FEATURES = (("Confidence", "confidence"), ("ConfidenceConsistency", "consistency"),
                       ("ConfidenceTTAF1", "tta_f1"), ("ConfidenceTTAMeanAbsDifference", "tta_mad"),
                       ("ConfidenceForegroundMeanAbsDifference", "foreground_mad"),
                       ("ConfidenceAmbiguity", "ambiguity"), ("ConfidenceOutsideFraction", "outside_fraction"),
                       ("ConfidenceHistogramDistance", "histogram_distance"))
CONFIDENCE_COPIES = "ConfidenceCopies"
FOUND_IN_COPIES = "FoundInCopies"  # per object: the fraction of augmented copies that found it again

# settings per output in revision 1 (revision 2 added fill holes and discard border)
N_PER_OUTPUT_V1 = 10


WORKERS_ENV = "DLMODEL_CP_WORKERS"
ZOO_CITATION = {"BioImage Model Zoo": "https://doi.org/10.1101/2022.06.07.495102"}


def _worker_threads():
    """Engine threads for this process: None (all cores) unless it is one of CellProfiler's
    analysis workers, which share the machine's cores (workers x threads <= cores)."""
    if "--work-server" not in sys.argv:  # GUI test mode, or a headless `cellprofiler -c` run
        return None
    workers = os.environ.get(WORKERS_ENV)
    if not workers:
        from cellprofiler_core.preferences import get_max_workers

        workers = get_max_workers()
    return _dlmodel().engines.threads_for_workers(int(workers))


def _dlmodel():
    try:
        import dlmodel
    except ModuleNotFoundError as e:
        # not installed in this CellProfiler (the app from the website, say): the copy in the
        # project this plugin comes from
        src = PROJECT_ROOT / "src"
        if e.name != "dlmodel" or not (src / "dlmodel").is_dir():
            raise
        sys.path.append(str(src))
        import dlmodel
    return dlmodel


# RunDLModel's *Engine* choices and the engine argument each passes: the core's engine registry
# (dlmodel.engines imports numpy and the standard library only)
ENGINE_ARG = dict(_dlmodel().engines.engine_choices())
ENGINES = list(ENGINE_ARG)
DEFAULT_AUGMENTATIONS = _dlmodel().confidence.DEFAULT_AUGMENTATIONS  # the core's (numpy only)


def resolve_source(text):
    """A model source as typed: absolute, relative to the current folder, or relative to the
    project (so example pipelines run from anywhere); URLs and zoo ids pass unchanged."""
    text = (text or "").strip()
    if not text or "://" in text or os.path.isabs(text) or os.path.exists(text):
        return text
    candidate = PROJECT_ROOT / text
    return str(candidate) if candidate.exists() else text


_SPECS = {}


def _spec(source, python=""):
    """The model's description (no engine), read here or by the model's environment; cached per
    source, rdf modification time and environment."""
    dl = _dlmodel()
    path = Path(source)
    key = (source, path.stat().st_mtime if path.exists() else None, python)
    if key not in _SPECS:
        _SPECS[key] = dl.client.read_spec(source, python or None)
    return _SPECS[key]


READING = "Reading the model package (downloading it first if it is a URL, zoo id or DOI)"
# GUI only: work that may take seconds (downloads, engine start) runs on one background thread.
GUI_WAIT_S = 2.0
_JOBS = {}
_EXECUTOR = []


def _in_gui():
    from cellprofiler_core.preferences import get_headless

    return not get_headless()


def _executor():
    if not _EXECUTOR:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="RunDLModel"))
    return _EXECUTOR[0]


def _in_background(key, fn):
    """``fn()`` once per key on the background thread; its Future."""
    job = _JOBS.get(key)
    if job is None:
        job = _JOBS[key] = _executor().submit(fn)
    return job


def _forget_failed():
    # a failed read (a typo, no network) is tried again next time, not remembered
    for key in [k for k, job in _JOBS.items() if job.done() and job.exception() is not None]:
        del _JOBS[key]


def _pairs(value):
    """{'y': 32, 'x': 32} as 'y=32, x=32' (other values as they are)."""
    return ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def _mtime(source):
    try:
        return os.stat(source).st_mtime
    except OSError:
        return None


class RunDLModel(Module):
    module_name = "RunDLModel"
    category = "Object Processing"
    variable_revision_number = 6
    def create_settings(self):
        self.model_source = Text(
            "Model",
            _dlmodel().DEFAULT_MODEL,  # the core's default; relative paths are also looked up in the project
            doc="""\
The model package: a folder holding a *bioimageio.yaml* (or *rdf.yaml*), that file itself, a
package *.zip*, a URL, or a BioImage Model Zoo id (e.g. *affable-shark*). Remote models are
downloaded once into the cache (*DLMODEL_CACHE*, default your user cache folder); every file is
checked against the hash the package gives. Relative paths are looked up in the current folder,
then in the RunDLModel project folder. The default, *models/nuclei_stardist_torch*, is the nuclei
model shipped with RunDLModel (2D fluorescence nuclei, StarDist-style: each nucleus a star-convex
outline; F1 0.918 on the DSB 2018 validation nuclei). *models/nuclei_default*, the default until
December 2026 (F1 0.803), is still shipped, so pipelines that name it give the same numbers.""",
        )
        self.choose_model_button = DoSomething(
            "", "Choose a model…", self.do_choose_model,
            doc="""\
Search the BioImage Model Zoo and the models on this computer (shipped, downloaded, and the
folders in *DLMODEL_MODEL_FOLDERS*) by words, task, tag and whether they run here; read each
model's card (cover, description, authors, licence, citation, weights, inputs and outputs).
*Use this model* downloads a zoo model (every file checked against its sha256; *Cancel* keeps
nothing), fills **Model** and runs **Check model**. *Browse…* picks a package folder, .zip or
rdf file on this computer. Needs bioimageio.spec in CellProfiler's Python (not in CellProfiler
4.2.8's app: there, type the model's zoo id or folder).""",
        )
        self.model_info = HTMLText("Model information", content="", size=(20, 9))
        self.check_model = DoSomething(
            "", "Check model", self.do_check_model,
            doc="Run the package's own test images through the model and report whether this computer reproduces its test outputs.",
        )
        self.engine = Choice(
            "Engine", ENGINES, ENGINES[0],
            doc="""\
The framework that runs the model's weights. *Automatic* picks, among the weight formats the
package has and whose engine is installed, the first in a fixed order (ONNX on CPU, TorchScript
on a GPU). *Fastest* times each of them on this computer, on the tile size the image uses, and
keeps the fastest whose outputs match the others within the package's test tolerance; the
timing is done once per model, computer and tile size and remembered.""",
        )
        self.device = Choice("Device", DEVICES, DEVICES[0], doc="*Automatic* uses a GPU when one is usable, else the CPU.")
        self.python = Text(
            "Python environment for the model", "",
            doc="""\
Empty: the model runs in CellProfiler's own Python, which then needs dlmodel and the engine
installed. Or the path of another environment's Python (e.g. *~/dlmodel-env/bin/python*, or the
environment's folder), one with dlmodel, its engines and bioimageio.spec installed (``dlmodel env
create ~/dlmodel-env``): the model then runs in one worker process of that environment per
CellProfiler process, loaded once; images and outputs pass through shared memory. This is how
CellProfiler 4.2.8, or an app you cannot install packages into, runs models.

The environment must be approved on this computer: ``dlmodel env create`` approves the ones it
makes, ``dlmodel env add PATH`` an existing one. A pipeline from someone else that names another
environment starts nothing: the module says so and lists the approved ones.""",
        )
        self.tile_mode = Choice(
            "Tile size", [TILE_AUTO, TILE_CUSTOM], TILE_AUTO,
            doc="""\
*Automatic*: the largest tile the model accepts, up to about one megapixel (tiles overlap by the
model's halo, so results have no seams). *Custom*: set the tile size yourself, e.g. to use less
memory.""",
        )
        self.tile_size = Integer("Tile size (pixels)", 512, minval=1, doc="Length of each tile side; rounded up to a size the model accepts.")
        self.batch_mode = Choice(
            "Tiles per batch", [BATCH_AUTO, BATCH_CUSTOM], BATCH_AUTO,
            doc="""\
Tiles run together through the model. *Automatic*: dlmodel decides (several tiles per pass on a
GPU, where a wide U-Net ran 1.4x faster with 4 than with 1 on an H200; one on a CPU, where more
only uses more memory). *Custom*: set the number yourself.""",
        )
        self.batch_size = Integer("Tiles per batch (number)", 1, minval=1, doc="Tiles run together through the model (more uses more memory).")
        self.trust = Binary(
            "Trust code from the model package?", False,
            doc="""\
Some packages ship code: a PyTorch architecture file, custom post-processing, Keras Lambda
layers, TensorFlow graph operations that read or write files. That code runs with your rights,
so it runs only when this is *Yes*, whatever the package's source (folder, zip, URL, zoo id,
DOI). *No* means no: such a package is refused with a message naming the code. ONNX and
TorchScript weights run no package code and never need it.""",
        )
        self.measure_confidence = Binary(
            "Measure the model's confidence?", False,
            doc="""\
*Yes*: also predict flipped and rotated copies of each image, and measure how far to trust the
prediction without ground truth (docs/confidence.md). Per image: *DLModel_Confidence* (0 to 1,
higher is more trustworthy) and its components: *ConfidenceConsistency* (how well the copies
agree), *ConfidenceTTAF1* (F1 at IoU 0.5 of the copies' objects against the plain ones),
*ConfidenceTTAMeanAbsDifference* (mean absolute difference of the copies' outputs, in the
output's units), *ConfidenceForegroundMeanAbsDifference* (the same for the foreground probability,
over the pixels the plain output or a copy calls foreground), *ConfidenceAmbiguity* (fraction
of foreground pixels with a probability between 0.3 and 0.7), *ConfidenceOutsideFraction* and *ConfidenceHistogramDistance* (how far the image,
after the package's pre-processing, lies from the package's test input), and
*ConfidenceCopies* (which copies were compared, and which transforms the model does not allow).
Per object of the first output that makes objects: *DLModel_FoundInCopies*, the fraction of copies
in which the object is found again. Each copy costs one more prediction.""",
        )
        self.augmentations = Integer(
            "Number of augmented copies", DEFAULT_AUGMENTATIONS, minval=1, maxval=15,
            doc="Flipped or rotated copies predicted per image (at most the transforms the model allows: 7 in "
                "2D, 15 in 3D). Each costs one prediction; 3 agreed with the benchmark's F1 as well as more.",
        )
        self.inputs = []
        self.outputs = []
        self.input_count = HiddenCount(self.inputs, "Input image count")
        self.output_count = HiddenCount(self.outputs, "Output count")
        self.add_input(can_remove=False)
        self.add_input_button = DoSomething("", "Add another image", self.add_input)
        self.add_output(can_remove=False)
        self.add_output_button = DoSomething("", "Add another output", self.add_output)

    def add_input(self, can_remove=True):
        group = SettingsGroup()
        group.append("image_name", ImageSubscriber(
            "Input image", "None",
            doc="""\
Images are fed to the model's inputs in order: an input with N channels takes N grey images
(one per channel) or one colour image with N channels.""",
        ))
        if can_remove:
            group.append("remover", RemoveSettingButton("", "Remove this image", self.inputs, group))
        self.inputs.append(group)

    def add_output(self, can_remove=True):
        group = SettingsGroup()
        group.append("divider", Divider(line=True))
        group.append("output_id", Text(
            "Model output", FIRST_OUTPUT,
            doc="The id of the model output to use (see the model information), or *First output*.",
        ))
        group.append("channel", Integer("Output channel", 1, minval=1, doc="Which channel of that output (1 = the first)."))
        group.append("save_image", Binary("Save the output as an image?", True, doc="Keep the output (e.g. probabilities) as an image for later modules."))
        group.append("image_name", ImageName("Name the output image", "Probability"))
        group.append("make_objects", Binary("Make objects from the output?", True, doc="Turn the output into objects (e.g. nuclei)."))
        group.append("objects_name", LabelName("Name the objects", "Nuclei"))
        group.append("method", Choice(
            "Method", [M_AUTO, M_WATERSHED, M_THRESHOLD, M_LABELS], M_AUTO,
            doc="""\
- *%s*: packages made with ``dlmodel package`` (the default nuclei model, say) carry their
  own recipe for objects (e.g. interior seeds grown over interior + boundary); otherwise as
  the next choice.
- *%s*: pixels above the threshold are foreground; touching objects are split where the
  distance map has a neck, one object per expected-diameter blob. Good for round nuclei.
- *%s*: each connected foreground region is one object.
- *%s*: for models whose output already numbers the objects.""" % (M_AUTO, M_WATERSHED, M_THRESHOLD, M_LABELS),
        ))
        # the core's defaults, so that CellProfiler, `dlmodel predict --labels` and Python agree
        d = _dlmodel().instances.DEFAULT_RECIPE
        group.append("threshold", Float("Threshold", d["threshold"], doc="Output values above this are foreground (0.5 for probabilities)."))
        group.append("diameter", Integer("Typical object diameter (pixels)", d["diameter"] or 0, minval=0,
                                         doc="Used to split touching objects; 0 estimates it from the image."))
        group.append("min_size", Integer("Minimum object size (pixels)", d["min_size"], minval=0, doc="Smaller objects are removed."))
        group.append("fill_holes", Binary("Fill holes in objects?", d["fill_holes"]))
        group.append("discard_border", Binary("Discard objects touching the image border?", d["discard_border"]))
        if can_remove:
            group.append("remover", RemoveSettingButton("", "Remove this output", self.outputs, group))
        self.outputs.append(group)

    # ------------------------------------------------------------------ settings plumbing
    def settings(self):
        result = [self.model_source, self.engine, self.device, self.tile_mode, self.tile_size, self.batch_size,
                  self.input_count, self.output_count]
        for g in self.inputs:
            result.append(g.image_name)
        for g in self.outputs:
            result += [g.output_id, g.channel, g.save_image, g.image_name, g.make_objects, g.objects_name,
                       g.method, g.threshold, g.diameter, g.min_size, g.fill_holes, g.discard_border]
        result += [self.trust, self.python, self.measure_confidence, self.augmentations, self.batch_mode]
        return result

    def prepare_settings(self, setting_values):
        n_in, n_out = int(setting_values[6]), int(setting_values[7])
        del self.inputs[n_in:]
        while len(self.inputs) < n_in:
            self.add_input()
        del self.outputs[n_out:]
        while len(self.outputs) < n_out:
            self.add_output()

    def upgrade_settings(self, setting_values, variable_revision_number, module_name):
        if variable_revision_number == 1:
            # Revision 1 (the first prototype): model, engine, tile mode, tile size, image count,
            # output count; outputs had no fill-holes / discard-border choices; CPU only, one
            # tile per batch.
            model, engine, tile_mode, tile_size, n_in, n_out = setting_values[:6]
            rest = setting_values[6:]
            images = rest[: int(n_in)]
            outs = rest[int(n_in):]
            new = [model, engine, "CPU", tile_mode, tile_size, "1", n_in, n_out] + images
            for k in range(int(n_out)):
                new += outs[k * N_PER_OUTPUT_V1:(k + 1) * N_PER_OUTPUT_V1] + ["Yes", "No"]
            setting_values, variable_revision_number = new, 2
        if variable_revision_number == 2:
            # Revision 3 added "Trust code from the model package?" (default: No), at the end.
            setting_values, variable_revision_number = list(setting_values) + ["No"], 3
        if variable_revision_number == 3:
            # Revision 4 added "Python environment for the model" (default: this process), at the end.
            setting_values, variable_revision_number = list(setting_values) + [""], 4
        if variable_revision_number == 4:
            # Revision 5 added "Measure the model's confidence?" (default: No) and its number of
            # augmented copies, at the end.
            setting_values = list(setting_values) + ["No", str(DEFAULT_AUGMENTATIONS)]
            variable_revision_number = 5
        if variable_revision_number == 5:
            # Revision 6 added the choice "Tiles per batch" (Automatic: the core decides), at the
            # end; the number it shows when Custom is the old setting. 1 was the old default, which
            # Automatic keeps on a CPU; any other number was the user's own.
            mode = BATCH_AUTO if setting_values[5] == "1" else BATCH_CUSTOM
            setting_values, variable_revision_number = list(setting_values) + [mode], 6
        return setting_values, variable_revision_number

    def visible_settings(self):
        result = [self.model_source, self.choose_model_button, self.model_info, self.check_model, self.engine, self.device,
                  self.python, self.tile_mode]
        if self.tile_mode.value == TILE_CUSTOM:
            result.append(self.tile_size)
        result.append(self.batch_mode)
        if self.batch_mode.value == BATCH_CUSTOM:
            result.append(self.batch_size)
        result += [self.trust, self.measure_confidence]
        if self.measure_confidence.value:
            result.append(self.augmentations)
        self.model_info.content = self._info_html()
        for g in self.inputs:
            result += g.visible_settings()
        result.append(self.add_input_button)
        for g in self.outputs:
            result += [g.divider, g.output_id, g.channel, g.save_image]
            if g.save_image.value:
                result.append(g.image_name)
            result.append(g.make_objects)
            if g.make_objects.value:
                result += [g.objects_name, g.method]
                if g.method.value in (M_WATERSHED, M_THRESHOLD):
                    result.append(g.threshold)
                if g.method.value == M_WATERSHED:
                    result.append(g.diameter)
                result += [g.min_size, g.fill_holes, g.discard_border]
            if hasattr(g, "remover"):
                result.append(g.remover)
        result.append(self.add_output_button)
        return result

    def help_settings(self):
        return [self.model_source, self.engine, self.device, self.python, self.tile_mode, self.tile_size, self.batch_mode,
                self.batch_size, self.trust, self.measure_confidence, self.augmentations, self.inputs[0].image_name] + [s for s in self.outputs[0].settings if s not in (self.outputs[0].divider,)]

    def volumetric(self):
        return True

    @property
    def doi(self):
        """What CellProfiler 5's File > Export > Citation list (Pipeline.save_pipeline_citations)
        fetches from doi.org for this module: the BioImage Model Zoo's paper and every citation
        of the model that has a DOI (the others have nothing that list can fetch)."""
        found = dict(ZOO_CITATION)
        if "model_source" not in self.__dict__:  # Module.__init__ asks before create_settings
            return found
        try:
            spec = self._read_spec()
            cite = _dlmodel().client.describe(spec)["cite"] if spec is not None else []
        except Exception:  # a model that cannot be read has nothing to cite; the settings say why
            return found
        from dlmodel.gui.cards import cited_dois

        dois = cited_dois(cite)
        for i, (text, url) in enumerate(dois, 1):
            found[f"Model '{spec.name}' ({self.model_source.value})" + (f", citation {i}" if len(dois) > 1 else "")
                  + ":"] = url
        return found

    # ------------------------------------------------------------------ model
    def _source(self):
        return resolve_source(self.model_source.value)

    def _python(self):
        """The model's environment ('' for this process)."""
        return self.python.value.strip()

    def _info_html(self):
        if not self.model_source.value.strip():
            return "<i>Choose a model package.</i>"
        try:
            spec = self._read_spec()
            if spec is None:
                return f"<i>{READING}. Select the module again in a moment to see it.</i>"
            info = _dlmodel().client.describe(spec)
        except Exception as e:  # shown in the panel, not raised: the user is still typing
            return f"<b>Cannot read the model:</b> {_escape(str(e))}"
        rows = "".join(
            f"<li>{kind} <b>{_escape(t['id'])}</b>: axes {t['axes']}, "
            + ", ".join(f"{k}={v}" for k, v in t["shape"].items())
            + (f"; halo {_pairs(t['halo'])}" if t["halo"] else "") + "</li>"
            for kind, ts in (("input", info["inputs"]), ("output", info["outputs"])) for t in ts
        )
        note = f"Format {info['format_version']}: {_escape(info['format_note'])}<br>" if info["format_note"] else ""
        cite = "".join(f"<br>Cite: {_escape(c)}" for c in info["cite"])
        text = (
            f"<b>{_escape(info['name'])}</b><br>{_escape(info['description'])}<br>"
            f"Authors: {_escape(', '.join(info['authors']))}<br>Licence: {_escape(info['license'])}{cite}<br>{note}"
            f"Weights: {', '.join(info['weights'])}<ul>{rows}</ul>"
            f"Objects (method Automatic): {_escape(info['objects'])}"
            + "".join(f"<br>Note: {_escape(n)}" for n in info["notes"])
        )
        cover = self._cover(info["rdf"])
        if cover is None:
            return text
        from urllib.request import pathname2url

        return (f"<table cellspacing=0 cellpadding=0><tr><td valign=top><img src='file:{pathname2url(str(cover))}'>"
                f"&nbsp;&nbsp;</td><td valign=top>{text}</td></tr></table>")

    def _cover(self, rdf):
        """The model's cover as a small thumbnail (a PNG in the cache), or None: in the window
        only, where this Python can read the package's card (not CellProfiler 4.2.8's app), and
        without making the window wait for it more than a moment."""
        if not _in_gui():
            return None
        from dlmodel.gui import cards

        if cards.unavailable():
            return None
        job = _in_background(("cover", rdf, _mtime(rdf)), lambda: cards.package_cover(Path(rdf)))
        try:
            return job.result(timeout=GUI_WAIT_S)
        except FutureTimeout:
            return None
        except Exception as e:  # no cover is no reason to hide the rest
            LOGGER.info("RunDLModel: no cover for %s: %s", rdf, e)
            return None

    def _read_spec(self):
        """The model's description; in the GUI None while it is still being read or downloaded
        (on a background thread: the window never waits more than GUI_WAIT_S for it)."""
        source, python = self._source(), self._python()
        if not _in_gui():
            return _spec(source, python)
        job = _in_background(("spec", source, _mtime(source), python), lambda: _spec(source, python))
        try:
            spec = job.result(timeout=GUI_WAIT_S)
        except FutureTimeout:
            return None
        except Exception:
            _forget_failed()
            raise
        # and start its engine now, so that the first test-mode step does not wait for it
        _in_background(("engine", source, self.engine.value, self.device.value, self.trust.value, python), self._model)
        return spec

    def _model(self):
        # one model per (source, engine, device, environment) per process, shared by every
        # RunDLModel module; in another environment, one worker per environment per process
        return _dlmodel().client.load_cached(self._source(), engine=ENGINE_ARG[self.engine.value],
                                             device=DEVICE_ARG[self.device.value], threads=_worker_threads(),
                                             trust=bool(self.trust.value), python=self._python() or None)

    def prepare_run(self, workspace):
        # Runs in the GUI process just before "Analyze Images" starts its worker processes,
        # which inherit the environment: tell them how many they will be, so that their engines
        # share the cores instead of each taking all of them.
        from cellprofiler_core.preferences import get_headless, get_max_workers

        if not get_headless():
            sets = len(workspace.measurements.get_image_numbers()) or get_max_workers()
            os.environ[WORKERS_ENV] = str(max(1, min(sets, get_max_workers())))
        return True

    def do_check_model(self):
        def check():
            report = self._model().test()
            return report.summary() + ("\n\nThe model reproduces its test outputs." if report.ok else
                                       "\n\nThe model does NOT reproduce its test outputs on this computer.")

        if not _in_gui():
            try:
                message = check()
            except Exception as e:
                message = f"Cannot check the model: {e}"
            LOGGER.warning(message)
            return message
        import wx

        # loading and testing take seconds: on the background thread, the window stays alive
        job = _executor().submit(check)
        with wx.ProgressDialog("RunDLModel: check model", "Running the package's test images through the model...",
                               style=wx.PD_APP_MODAL | wx.PD_AUTO_HIDE) as dlg:
            while not job.done():
                dlg.Pulse()
                wx.MilliSleep(100)
        try:
            message = job.result()
        except Exception as e:
            message = f"Cannot check the model: {e}"
        LOGGER.info("Check model (%s): %s", self.model_source.value, message)  # the log keeps what the box said
        wx.MessageBox(message, caption="RunDLModel: check model", style=wx.OK | wx.CENTRE)
        return message

    def do_choose_model(self):
        """The *Choose a model…* button: the catalogue's dialog (dlmodel.gui.chooser); the model
        chosen fills Model, then Check model runs. Where this Python cannot read the catalogue
        (CellProfiler 4.2.8's app has no bioimageio.spec) one line says why. Returns the model
        chosen, or that line ('' when cancelled)."""
        _dlmodel()  # dlmodel importable (the project's copy in an app without it installed)
        from dlmodel.gui.cards import unavailable

        why = unavailable()
        if not _in_gui():  # only the window has the button; headless, say what it would do
            return why
        import wx

        if why:
            wx.MessageBox(why, caption="RunDLModel: choose a model", style=wx.OK | wx.CENTRE | wx.ICON_INFORMATION)
            return why
        from dlmodel.gui.chooser import choose_model  # wx and the catalogue: only now

        chosen = choose_model(wx.GetActiveWindow() or wx.GetApp().GetTopWindow(), self.model_source.value)
        if not chosen:
            return ""
        self.model_source.value = chosen
        # once CellProfiler has shown the new model's settings (after this button's handler returns)
        wx.CallAfter(self.do_check_model)
        return chosen

    def validate_module(self, pipeline):
        if not self.model_source.value.strip():
            raise ValidationError("Choose a model package (folder, bioimageio.yaml, .zip, URL or zoo id)", self.model_source)
        dl = _dlmodel()
        python = self._python()
        if python:
            try:  # a pipeline is a colleague's file: the program it names starts only if approved here
                dl.client.approved_python(python, "this pipeline's 'Python environment for the model'")
            except dl.DLModelError as e:
                raise ValidationError(str(e), self.python)
        elif dl.client.missing_here():  # CellProfiler 4.2.8's app, say: the model needs an environment
            raise ValidationError(f"This CellProfiler's Python lacks {', '.join(dl.client.missing_here())}: set a Python "
                                  "environment for the model (dlmodel env create), or install dlmodel with an engine here",
                                  self.python)
        try:
            spec = self._read_spec()
        except dl.WorkerError as e:  # the environment cannot start, or lacks dlmodel
            raise ValidationError(str(e), self.python)
        except dl.DLModelError as e:
            raise ValidationError(str(e), self.model_source)
        if spec is None:
            raise ValidationError(READING, self.model_source)
        try:
            dl.client.choose_format(spec, ENGINE_ARG[self.engine.value], "cpu", python or None)
        except dl.DLModelError as e:
            # the package has weights for it, the environment lacks the engine: where the model runs is at fault
            if isinstance(e, dl.WorkerError):
                raise ValidationError(str(e), self.python)
            if python and getattr(e, "choice", None) == "environment":
                raise ValidationError(f"{python}: {e}", self.python)
            raise ValidationError(str(e), self.engine)
        channels = spec.input_channels
        if len(self.inputs) < len(spec.inputs) or len(self.inputs) > channels:
            raise ValidationError(
                f"The model has {len(spec.inputs)} input(s) with {channels} channel(s) in all; "
                f"{len(self.inputs)} image(s) are selected", self.inputs[-1].image_name)
        if spec.is_3d and not pipeline.volumetric():
            raise ValidationError(f"{spec.name} is a 3D model: process the images as 3D in NamesAndTypes", self.model_source)
        ids = [t.id for t in spec.outputs]
        for g in self.outputs:
            oid = self._output_id(g, spec)
            if oid not in ids:
                raise ValidationError(f"The model has no output {oid!r} (it has: {', '.join(ids)})", g.output_id)
            n = spec.output(oid).n_channels or 1
            if g.channel.value > n:
                raise ValidationError(f"Output {oid!r} has {n} channel(s)", g.channel)
            if g.save_image.value and not spec.input_grid_factors(oid):
                raise ValidationError(
                    f"Output {oid!r} is not on the input's pixel grid (another size or a finer resolution), so it "
                    "cannot be saved as a CellProfiler image beside it: do not save it as an image", g.save_image)
            if not (g.save_image.value or g.make_objects.value):
                raise ValidationError("Save the output as an image, make objects from it, or remove it", g.save_image)
            if g.make_objects.value:
                try:  # the core's answer to "which objects", asked before the run
                    dl.client.resolve_recipe(spec.instance_recipe, python or None, **self._object_choices(g, spec))
                except dl.WorkerError as e:
                    raise ValidationError(str(e), self.python)
                except dl.DLModelError as e:
                    setting = {"channel": g.channel, "method": g.method}.get(getattr(e, "choice", None), g.output_id)
                    raise ValidationError(str(e), setting)

    @staticmethod
    def _output_id(group, spec):
        value = group.output_id.value.strip()
        return spec.outputs[0].id if value in ("", FIRST_OUTPUT) else value

    # ------------------------------------------------------------------ run
    def run(self, workspace):
        dl = _dlmodel()
        names = [g.image_name.value for g in self.inputs]
        images = [workspace.image_set.get_image(n, must_be_grayscale=False) for n in names]
        files = _file_names(workspace, names)
        where = f"{self.module_name} #{self.module_num}, image set {workspace.measurements.image_set_number} ({files})"
        try:
            model = self._model()
            arrays = [(_raw_pixels(im), _axes_of(im)) for im in images]
            inputs, axes = dl.axes.assign_images(model.spec.inputs, arrays, names)
            tile = self.tile_size.value if self.tile_mode.value == TILE_CUSTOM else None
            batch_size = self.batch_size.value if self.batch_mode.value == BATCH_CUSTOM else None  # None: the core's
            t0 = time.perf_counter()
            measured, first = None, self._first_objects()
            if self.measure_confidence.value:
                # the plain prediction (and the first objects) come with it: nothing is predicted twice
                choices = self._object_choices(first, model.spec) if first is not None else None
                measured = model.confidence(inputs, axes=axes, augmentations=self.augmentations.value, objects=choices,
                                            tile=tile, batch_size=batch_size, name=files)
                pred = measured.prediction
            else:
                pred = model.predict(inputs, axes=axes, tile=tile, batch_size=batch_size, name=files)
            seconds = time.perf_counter() - t0
            results = []
            for g in self.outputs:
                # on the image's pixels: a coarser grid's values (StarDist's) repeated over each cell
                arr = pred.channel_on_input_grid(self._output_id(g, model.spec), g.channel.value - 1)
                labels = None
                if g.make_objects.value and measured is not None and g is first and measured.labels is not None:
                    labels = measured.labels
                elif g.make_objects.value:
                    labels = model.labels(pred, **self._object_choices(g, model.spec))
                results.append((g, arr, labels))
        except dl.DLModelError as e:
            raise RuntimeError(f"{where}: {e}") from e

        parent = images[0]
        for g, arr, labels in results:
            if g.save_image.value:
                workspace.image_set.add(g.image_name.value, Image(arr.astype(np.float32, copy=False), parent_image=parent,
                                                                   dimensions=parent.dimensions, convert=False))
            if labels is not None:
                objects = Objects()
                objects.segmented = labels
                objects.parent_image = parent
                workspace.object_set.add_objects(objects, g.objects_name.value)
                self._add_object_measurements(workspace.measurements, g.objects_name.value, labels)
                if measured is not None and g is first:
                    workspace.measurements.add_measurement(g.objects_name.value, f"DLModel_{FOUND_IN_COPIES}",
                                                           np.asarray(measured.object_fraction, dtype=float))
        m = workspace.measurements
        tag = self._tag()
        if measured is not None:
            values = measured.components()
            for feature, key in CONFIDENCE_FEATURES:
                m.add_image_measurement(f"DLModel_{feature}_{tag}", float(values[key]))
            m.add_image_measurement(f"DLModel_{CONFIDENCE_COPIES}_{tag}", measured.describe())
        version = " ".join(x for x in (model.spec.id, model.spec.version) if x)
        for feature, value in (("Name", model.spec.name), ("Version", version), ("RdfSha256", model.spec.rdf_sha256),
                               ("Engine", _dlmodel().engines.engine_text(model)), ("Device", model.device),
                               ("InferenceSeconds", seconds)):
            m.add_image_measurement(f"DLModel_{feature}_{tag}", value)
        if self.show_window:
            workspace.display_data.dimensions = parent.dimensions
            workspace.display_data.input = parent.pixel_data
            workspace.display_data.results = [
                (g.image_name.value if g.save_image.value else None, arr,
                 g.objects_name.value if labels is not None else None, labels)
                for g, arr, labels in results
            ]

    def _object_choices(self, g, spec):
        """This output group's settings as the core's instance choices (resolve_recipe)."""
        return dict(method=METHOD_ARG[g.method.value], output=self._output_id(g, spec), channel=g.channel.value - 1,
                    threshold=g.threshold.value, diameter=g.diameter.value, min_size=g.min_size.value,
                    fill_holes=g.fill_holes.value, discard_border=g.discard_border.value)

    @staticmethod
    def _add_object_measurements(measurements, name, labels):
        # CellProfiler's own helpers: the same measurements IdentifyPrimaryObjects makes
        from cellprofiler_core.utilities.core.module.identify import (
            add_object_count_measurements, add_object_location_measurements)

        n = int(labels.max())
        add_object_count_measurements(measurements, name, n)
        add_object_location_measurements(measurements, name, labels, n)

    def post_run(self, workspace):
        # the run is over: give the engines' memory back (GPU included); workers exit
        _dlmodel().clear_cache()
        for key in [k for k in _JOBS if k[0] == "engine"]:  # so the GUI starts them again when needed
            del _JOBS[key]

    def display(self, workspace, figure):
        d = workspace.display_data
        n = 1 + sum((img is not None) + (obj is not None) for img, _, obj, _ in d.results)
        figure.set_subplots(dimensions=d.dimensions, subplots=(n, 1))
        figure.subplot_imshow_grayscale(0, 0, d.input if d.input.ndim == d.dimensions else d.input[..., 0],
                                        title="Input")
        x = 1
        for img, arr, obj, labels in d.results:
            if img is not None:
                figure.subplot_imshow_grayscale(x, 0, arr, title=img, sharexy=figure.subplot(0, 0))
                x += 1
            if obj is not None:
                figure.subplot_imshow(x, 0, _outlined(d.input, labels, d.dimensions),
                                      title=f"{obj} ({int(labels.max())} objects)", sharexy=figure.subplot(0, 0))
                x += 1

    # ------------------------------------------------------------------ measurements
    def _tag(self):
        g = self.outputs[0]
        return g.objects_name.value if g.make_objects.value else g.image_name.value

    def _object_names(self):
        return [g.objects_name.value for g in self.outputs if g.make_objects.value]

    def _first_objects(self):
        """The first output group that makes objects (its objects get the per-object confidence), or None."""
        return next((g for g in self.outputs if g.make_objects.value), None)

    def get_measurement_columns(self, pipeline):
        tag = self._tag()
        cols = [(IMAGE, f"DLModel_{f}_{tag}", COLTYPE_VARCHAR) for f in ("Name", "Version", "RdfSha256", "Engine", "Device")]
        cols.append((IMAGE, f"DLModel_InferenceSeconds_{tag}", COLTYPE_FLOAT))
        if self.measure_confidence.value:
            cols += [(IMAGE, f"DLModel_{feature}_{tag}", COLTYPE_FLOAT) for feature, _ in CONFIDENCE_FEATURES]
            cols.append((IMAGE, f"DLModel_{CONFIDENCE_COPIES}_{tag}", COLTYPE_VARCHAR))
            if self._first_objects() is not None:
                cols.append((self._first_objects().objects_name.value, f"DLModel_{FOUND_IN_COPIES}", COLTYPE_FLOAT))
        from cellprofiler_core.utilities.core.module.identify import get_object_measurement_columns

        volumetric = pipeline.volumetric() if pipeline is not None else False
        for name in self._object_names():
            cols += get_object_measurement_columns(name)
            if volumetric:  # CellProfiler's helper measures Z for 3D labels but does not list it
                cols.append((name, "Location_Center_Z", COLTYPE_FLOAT))
        return cols

    def get_categories(self, pipeline, object_name):
        if object_name == IMAGE:
            return ["Count", "DLModel"]
        if object_name in self._object_names():
            first = self._first_objects()
            own = self.measure_confidence.value and first is not None and object_name == first.objects_name.value
            return ["Location", "Number"] + (["DLModel"] if own else [])
        return []

    def get_measurements(self, pipeline, object_name, category):
        if object_name == IMAGE and category == "Count":
            return self._object_names()
        if object_name == IMAGE and category == "DLModel":
            found = ["Name", "Version", "RdfSha256", "Engine", "Device", "InferenceSeconds"]
            if self.measure_confidence.value:
                found += [feature for feature, _ in CONFIDENCE_FEATURES] + [CONFIDENCE_COPIES]
            return found
        if category == "DLModel" and "DLModel" in self.get_categories(pipeline, object_name):
            return [FOUND_IN_COPIES]
        if object_name in self._object_names():
            if category == "Location":
                return ["Center_X", "Center_Y"] + (["Center_Z"] if pipeline is not None and pipeline.volumetric() else [])
            if category == "Number":
                return ["Object_Number"]
        return []

    def get_measurement_objects(self, pipeline, object_name, category, measurement):
        if object_name == IMAGE and category == "DLModel":
            return [self._tag()]
        return []

    def is_object_identification_module(self):
        return bool(self._object_names())


def _outlined(image, labels, dimensions):
    """The input (grey, contrast-stretched) with the objects' outlines in yellow."""
    from skimage.segmentation import find_boundaries

    grey = image if image.ndim == dimensions else image[..., 0]
    lo, hi = np.percentile(grey, (1, 99.8))
    grey = np.clip((grey - lo) / (hi - lo + 1e-6), 0, 1)
    rgb = np.stack([grey] * 3, axis=-1)
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = (1.0, 1.0, 0.0)
    return rgb


def _raw_pixels(image):
    """Pixel values as stored in the file: CellProfiler scales integer images to 0-1."""
    data = image.pixel_data
    scale = getattr(image, "scale", None)
    if scale and scale != 1:
        return data * np.float32(scale)
    return data


def _axes_of(image):
    axes = ("zyx" if image.volumetric else "yx")
    return axes + "c" if image.multichannel else axes


def _file_names(workspace, names):
    m = workspace.measurements
    found = []
    for n in names:
        feature = f"FileName_{n}"
        found.append(str(m.get_current_image_measurement(feature)) if m.has_feature(IMAGE, feature) else n)
    return ", ".join(found)


def _escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
