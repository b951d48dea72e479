"""Write the example pipelines from CellProfiler's own module defaults.

Each pipeline is assembled from the settings CellProfiler itself writes for a fresh module
(so every setting a module expects is there), with the values our examples need, then loaded
back through cellprofiler_core and saved again, so what lands in the .cppipe is exactly what
CellProfiler reads and writes.

    .venv/bin/python example_pipelines/build.py
    .venv-cp4/bin/python example_pipelines/build.py    # CellProfiler 4.2.8's own files, in cellprofiler4/

CellProfiler 4.2.8 reads a file saved by 5.0 without refusing newer module revisions: it reads
5.0's Metadata (revision 7) as its revision 6, and a second extraction group (plate_screen's CSV
import) comes out shifted and lost. So 4.2.8 gets its own files, written by 4.2.8 (they load in
5.0 as they are: tests/test_cellprofiler.py).
"""
import io
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _cp():
    import cellprofiler_core.preferences as prefs

    prefs.set_headless()
    prefs.set_plugin_directory(str(ROOT / "plugins"))
    from cellprofiler_core.utilities.core.modules import fill_modules, instantiate_module

    fill_modules()
    return instantiate_module


def _version():
    from importlib import metadata

    for dist in ("cellprofiler-core", "cellprofiler-core-nightly"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


def module(instantiate, name, notes, values=(), extra=()):
    """A module with the given ``(label, value)`` changes; ``(label, n)`` picks the n-th
    setting of that label. ``extra`` settings are appended (for repeated groups)."""
    m = instantiate(name)
    labelled = [[s.text, s.unicode_value] for s in m.settings()]
    for key, value in dict(values).items():
        label, nth = key if isinstance(key, tuple) else (key, 1)
        hits = [row for row in labelled if row[0] == label]
        if len(hits) < nth:
            raise KeyError(f"{name} has no setting {label!r} #{nth}")
        hits[nth - 1][1] = value
    settings = [str(v) for _, v in labelled] + [str(v) for v in extra]
    m.set_settings_from_values(settings, m.variable_revision_number, name)
    m.notes = [notes]
    return m


def save(modules, path):
    from cellprofiler_core.pipeline import Pipeline

    p = Pipeline()
    for i, m in enumerate(modules, 1):
        m.set_module_num(i)
        p.add_module(m)
    buf = io.StringIO()
    p.dump(buf)
    path.write_text(buf.getvalue())
    # read back: what we wrote must load as written
    q = Pipeline()
    q.load(io.StringIO(path.read_text()))
    assert [m.module_name for m in q.modules()] == [m.module_name for m in modules]
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def rundlmodel(instantiate, image, objects, notes, model=None, **kw):
    """RunDLModel; without ``model``, the module's own default (``dlmodel.DEFAULT_MODEL``)."""
    values = {"Input image": image, "Name the objects": objects,
              "Name the output image": kw.pop("probability", "Probability")}
    if model:
        values["Model"] = model
    values.update(kw)
    return module(instantiate, "RunDLModel", notes, values)


def nuclei(instantiate):
    return [
        module(instantiate, "Images", "The images of the folder given with -i (the DSB 2018 validation images in the tests)."),
        module(instantiate, "Metadata", "No metadata needed."),
        module(instantiate, "NamesAndTypes", "Every image is a nucleus (DNA) image.",
               {"Assign a name to": "All images", ("Name to assign these images", 1): "DNA",
                "Set intensity range from": "Image bit-depth"}),
        module(instantiate, "Groups", "No grouping."),
        rundlmodel(instantiate, "DNA", "Nuclei", "Nuclei from the default nuclei model (StarDist-style, ONNX/TorchScript), "
                   "with the package's own recipe: StarDist's non-maximum suppression keeps one star-convex outline per "
                   "nucleus. Its raw output (centre probability + 32 ray distances, on every 2nd pixel) is not kept as an image.",
                   **{"Save the output as an image?": "No"}),
        module(instantiate, "MeasureObjectSizeShape", "Size and shape of each nucleus.",
               {"Select object sets to measure": "Nuclei", "Calculate the Zernike features?": "No"}),
        module(instantiate, "MeasureObjectIntensity", "DNA intensity in each nucleus.",
               {"Select images to measure": "DNA", "Select objects to measure": "Nuclei"}),
        module(instantiate, "ConvertObjectsToImage", "The nuclei as a 16-bit label image.",
               {"Select the input objects": "Nuclei", "Name the output image": "NucleiLabels", "Select the color format": "uint16"}),
        module(instantiate, "SaveImages", "Save each label image as <image>_nuclei.tiff in the output folder.",
               {"Select the image to save": "NucleiLabels", "Select image name for file prefix": "DNA",
                "Append a suffix to the image file name?": "Yes", "Text to append to the image name": "_nuclei",
                "Image bit depth": "16-bit integer", "Overwrite existing files without warning?": "Yes",
                # tifffile 2026 refuses the compression argument CellProfiler passes
                "Save with lossless compression?": "No"}),
        module(instantiate, "ExportToSpreadsheet", "Image.csv (one row per image) and Nuclei.csv (one row per nucleus).",
               {"Add image metadata columns to your object data file?": "Yes",
                "Add image file and folder names to your object data file?": "Yes",
                "Add a prefix to file names?": "No", "Overwrite existing files without warning?": "Yes"}),
    ]


SBS_TYPES = '{"SBS_Controls": "integer", "SBS_Doses": "float", "Row": "text", "Column": "text", "ChannelNumber": "text", "ImageNumber": "text"}'
SBS_REGEX = r"^Channel(?P<ChannelNumber>[12])-(?P<ImageNumber>[0-9]{2})-(?P<Row>[A-H])-(?P<Column>[0-9]{2})"


def plate_screen(instantiate):
    """CellProfiler's 96-well example plate: Hoechst (Channel2) and GFP (Channel1) per well."""
    csv_join = "[{'CSV Metadata': 'Row', 'Image Metadata': 'Row'}, {'CSV Metadata': 'Column', 'Image Metadata': 'Column'}]"
    image_join = "[{'DNA': 'Row', 'GFP': 'Row'}, {'DNA': 'Column', 'GFP': 'Column'}]"
    csv_group = ["Import from file", "File name", SBS_REGEX, "(?P<Date>[0-9]{4}_[0-9]{2}_[0-9]{2})$", "All images",
                 'and (file does contain "")', "Default Input Folder|", csv_join, "No", "1049_Metadata.csv"]
    # an extraction group has more settings in 4.2.8 (its revision 6) than in 5.0: those at their defaults
    fresh = [s.unicode_value for s in instantiate("Metadata").settings()]
    csv_group += fresh[4 + len(csv_group):]
    return [
        module(instantiate, "Images", "The plate's images: the folder given with -i."),
        module(instantiate, "Metadata",
               "Well row and column from the file names; dose and controls per well from 1049_Metadata.csv in the same folder.",
               {"Extract metadata?": "Yes", "Extraction method count": "2",
                "Regular expression to extract from file name": SBS_REGEX,
                # numbers, not text: CalculateStatistics groups wells by them
                "Metadata data type": "Choose for each", "Metadata types": SBS_TYPES},
               # second extraction method: the per-well CSV, joined on Row and Column
               extra=csv_group),
        module(instantiate, "NamesAndTypes", "Channel2 is Hoechst (DNA), Channel1 is GFP; matched by well.",
               {"Assign a name to": "Images matching rules", ("Name to assign these images", 1): "DNA",
                "Match metadata": image_join, "Image set matching method": "Metadata",
                "Set intensity range from": "Image bit-depth", "Assignments count": "2",
                "Select the rule criteria": 'and (file does startwith "Channel2")', ("Name to assign these images", 2): "DNA",
                ("Select the image type", 2): "Grayscale image", ("Set intensity range from", 2): "Image bit-depth"},
               extra=['and (file does startwith "Channel1")', "GFP", "Cell", "Grayscale image", "Image bit-depth", "255.0"]),
        module(instantiate, "Groups", "No grouping."),
        rundlmodel(instantiate, "DNA", "Nuclei", "Nuclei from the Hoechst image.", **{"Save the output as an image?": "No"}),
        module(instantiate, "IdentifySecondaryObjects", "Cells grown from the nuclei over the GFP image.",
               {"Select the input objects": "Nuclei", "Name the objects to be identified": "Cells",
                "Select the input image": "GFP"}),
        module(instantiate, "IdentifyTertiaryObjects", "Cytoplasm: cells minus nuclei.",
               {"Select the larger identified objects": "Cells", "Select the smaller identified objects": "Nuclei",
                "Name the tertiary objects to be identified": "Cytoplasm"}),
        module(instantiate, "MeasureObjectSizeShape", "Size and shape of nuclei and cells.",
               {"Select object sets to measure": "Nuclei, Cells", "Calculate the Zernike features?": "No"}),
        module(instantiate, "MeasureObjectIntensity", "GFP and DNA intensity in nuclei, cytoplasm and cells.",
               {"Select images to measure": "DNA, GFP", "Select objects to measure": "Nuclei, Cytoplasm, Cells"}),
        module(instantiate, "ExportToSpreadsheet",
               "Image.csv (one row per well, with dose and controls, and per-image means of object measurements) and one CSV per object type, "
               "written before CalculateStatistics runs, so that a run whose statistics fail (a -f/-l slice with one "
               "control kind or one dose) still has its tables.",
               {"Add image metadata columns to your object data file?": "Yes",
                "Add image file and folder names to your object data file?": "Yes",
                "Calculate the per-image mean values for object measurements?": "Yes",
                "Add a prefix to file names?": "No", "Overwrite existing files without warning?": "Yes"}),
        module(instantiate, "CalculateStatistics",
               "Z'-factor and V-factor of every per-well measurement from the control wells (SBS_Controls: -1 negative, "
               "1 positive) and the doses (SBS_Doses), and EC50 from CellProfiler's dose-response fit: computed when the "
               "run ends; the next module writes them to Experiment.csv.",
               {"Select the image measurement describing the positive and negative control status": "Metadata_SBS_Controls",
                "Select the image measurement describing the treatment dose": "Metadata_SBS_Doses"}),
        module(instantiate, "ExportToSpreadsheet",
               "Experiment.csv: CalculateStatistics' Zfactor_, OneTailedZfactor_, Vfactor_ and EC50_ of each measurement.",
               {"Export all measurement types?": "No", "Data to export": "Experiment", "File name": "Experiment.csv",
                "Add a prefix to file names?": "No", "Overwrite existing files without warning?": "Yes"}),
    ]


def nuclei_3d(instantiate):
    """A volume through the demo 3D model: 3D objects, measured in 3D."""
    return [
        module(instantiate, "Images", "The folder given with -i (../shared/data/nuclei3d_synthetic in the tests)."),
        module(instantiate, "Metadata", "No metadata needed."),
        module(instantiate, "NamesAndTypes", "Volumes named img*.tif are DNA, processed as 3D.",
               {"Assign a name to": "Images matching rules", "Process as 3D?": "Yes", "Set intensity range from": "Image bit-depth",
                "Select the rule criteria": 'and (file does startwith "img")', ("Name to assign these images", 2): "DNA",
                ("Set intensity range from", 2): "Image bit-depth"}),
        module(instantiate, "Groups", "No grouping."),
        rundlmodel(instantiate, "DNA", "Nuclei", "3D nuclei from the demo 3D model shipped in models/.",
                   model="models/nuclei3d_demo", **{"Typical object diameter (pixels)": "8", "Minimum object size (pixels)": "10"}),
        module(instantiate, "MeasureObjectSizeShape", "Volume and shape of each nucleus.",
               {"Select object sets to measure": "Nuclei", "Calculate the Zernike features?": "No"}),
        module(instantiate, "MeasureObjectIntensity", "DNA intensity in each nucleus.",
               {"Select images to measure": "DNA", "Select objects to measure": "Nuclei"}),
        module(instantiate, "ExportToSpreadsheet", "Image.csv and Nuclei.csv.",
               {"Add image metadata columns to your object data file?": "Yes", "Add a prefix to file names?": "No",
                "Overwrite existing files without warning?": "Yes"}),
    ]


def stardist_nuclei(instantiate, model="models/stardist_nuclei"):
    """Nuclei by a StarDist package: StarDist's own non-maximum suppression makes the objects."""
    steps = nuclei(instantiate)
    star = rundlmodel(instantiate, "DNA", "Nuclei",
                      "Nuclei from a StarDist package (made by StarDist's own bioimage.io export): method Automatic runs "
                      "StarDist's non-maximum suppression with the thresholds in the package (pip install "
                      "'dlmodel[stardist]'). The raw output (probability + ray distances) is not kept as an image.",
                      model=model, **{"Save the output as an image?": "No", "Minimum object size (pixels)": "10",
                                      "Fill holes in objects?": "No"})
    return steps[:4] + [star] + steps[5:]


def make_training_data(instantiate):
    """Training data for `dlmodel finetune`: RunDLModel's objects, corrected by hand in
    EditObjectsManually, saved as image + label pairs of the same name in images/ and labels/
    of the output folder (the layout `dlmodel finetune MODEL OUT/images OUT/labels` reads)."""
    steps = [module(instantiate, "Images", "The images to annotate: the folder given with -i (a handful is enough).")]
    steps += nuclei(instantiate)[1:4]
    save_common = {"Select image name for file prefix": "DNA", "Append a suffix to the image file name?": "No",
                   "Saved file format": "tiff", "Image bit depth": "16-bit integer",
                   "Overwrite existing files without warning?": "Yes", "Save with lossless compression?": "No"}
    return steps + [
        rundlmodel(instantiate, "DNA", "Nuclei", "Nuclei from the model you want to fine-tune (here the default "
                   "model): the objects to correct. Choose your model here.", **{"Save the output as an image?": "No"}),
        module(instantiate, "EditObjectsManually",
               "Correct the nuclei by hand: delete wrong ones, draw missed ones, split or join (the GUI opens a window "
               "per image, in Test mode or Analyze Images). Headless (cellprofiler -c) nothing can ask you, and the module "
               "stops the run: turn it off there and choose Nuclei in ConvertObjectsToImage to save the model's objects "
               "as they are.",
               {"Select the objects to be edited": "Nuclei", "Name the edited objects": "CorrectedNuclei",
                "Display a guiding image?": "Yes", "Select the guiding image": "DNA"}),
        module(instantiate, "ConvertObjectsToImage", "The corrected nuclei as a 16-bit label image (0 background, "
               "1..N one number per nucleus).",
               {"Select the input objects": "CorrectedNuclei", "Name the output image": "NucleiLabels",
                "Select the color format": "uint16"}),
        module(instantiate, "SaveImages", "The image, as <image>.tiff in the images sub-folder of the output folder "
               "(16-bit; the models' own normalisation makes the scale irrelevant).",
               {"Select the image to save": "DNA", "Output file location": "Default Output Folder sub-folder|images",
                **save_common}),
        module(instantiate, "SaveImages", "Its labels, as <image>.tiff in the labels sub-folder: the same name pairs "
               "them for dlmodel finetune.",
               {"Select the image to save": "NucleiLabels", "Output file location": "Default Output Folder sub-folder|labels",
                **save_common}),
    ]


def classic_baseline(instantiate):
    """The comparison: CellProfiler's IdentifyPrimaryObjects with its default settings."""
    steps = nuclei(instantiate)
    ipo = module(instantiate, "IdentifyPrimaryObjects", "Classic nuclei: IdentifyPrimaryObjects, default settings.",
                 {"Select the input image": "DNA", "Name the primary objects to be identified": "Nuclei"})
    return steps[:4] + [ipo] + steps[5:]


def main():
    instantiate = _cp()
    if _version().startswith("4."):
        out = HERE / "cellprofiler4"
        out.mkdir(exist_ok=True)
        for name, build in (("nuclei", nuclei), ("plate_screen", plate_screen), ("nuclei_3d", nuclei_3d),
                            ("stardist_nuclei", stardist_nuclei), ("make_training_data", make_training_data)):
            save(build(instantiate), out / f"{name}.cppipe")
        return 0
    save(classic_baseline(instantiate), ROOT / "benchmarks" / "identify_primary_baseline.cppipe")
    save(nuclei_3d(instantiate), HERE / "nuclei_3d.cppipe")
    save(nuclei(instantiate), HERE / "nuclei.cppipe")
    save(plate_screen(instantiate), HERE / "plate_screen.cppipe")
    save(stardist_nuclei(instantiate), HERE / "stardist_nuclei.cppipe")
    save(make_training_data(instantiate), HERE / "make_training_data.cppipe")


if __name__ == "__main__":
    sys.exit(main())
