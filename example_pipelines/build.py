"""Write the example pipelines from CellProfiler's own module defaults.

Each pipeline is assembled from the settings CellProfiler itself writes for a fresh module
(so every setting a module expects is there), with the values our examples need, then loaded
back through cellprofiler_core and saved again, so what lands in the .cppipe is exactly what
CellProfiler reads and writes.

    .venv/bin/python example_pipelines/build.py
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
    print(f"wrote {path.relative_to(ROOT)}")


def rundlmodel(instantiate, image, objects, notes, model="../shared/models/unet2d_nuclei_broad", **kw):
    values = {"Model": model, "Input image": image, "Name the objects": objects,
              "Name the output image": kw.pop("probability", "Probability")}
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
        rundlmodel(instantiate, "DNA", "Nuclei", "Nuclei from the zoo U-Net: probabilities, then a watershed split of touching nuclei."),
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


def main():
    instantiate = _cp()
    save(nuclei(instantiate), HERE / "nuclei.cppipe")


if __name__ == "__main__":
    sys.exit(main())
