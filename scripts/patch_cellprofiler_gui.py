"""Fix the float-for-int bugs of the CellProfiler 5 GUI on Python >= 3.10 (run by ``make gui-setup``).

wxPython on Python >= 3.10 refuses floats where C++ wants ints. CellProfiler 5.0.0.dev784 hands
it floats in three places:
- the settings panel's ModuleSizer places widgets with ``/ 2`` and ``/ 3``: every module's settings are
  laid out only partly (widgets overlap; the log says "Detected WX error"). Known upstream:
  CellProfiler/CellProfiler issues #4715 and #4819 (their advice: Python 3.8/3.9);
- HTML boxes in settings (RunDLModel's model information) get a float minimum size, which wx
  silently ignores: the box collapses to nothing;
- the progress bar of Analyze Images gets a float percentage: the run stops at once with
  "Failure in analysis startup".
The fix is integer arithmetic in those expressions; this script applies it to the installed
copy, once, and says what it did. Nothing else in CellProfiler is touched.

    python scripts/patch_cellprofiler_gui.py          # in the venv that has the GUI
"""
import importlib.util
import sys
from pathlib import Path

FIXES = [
    ("module_view/_module_sizer.py",
     "third_width = (text_width + edit_width - 2 * border) / 3", "third_width = (text_width + edit_width - 2 * border) // 3"),
    ("module_view/_module_sizer.py",
     "text_width - third_width / 2, height + border + item_height / 2",
     "text_width - third_width // 2, height + border + item_height // 2"),
    ("module_view/_module_sizer.py",
     "item_y = height + (row_height - item_size[1]) / 2", "item_y = height + (row_height - item_size[1]) // 2"),
    ("module_view/_module_sizer.py",
     "item_x += (widths[j] - item_size[0]) / 2", "item_x += (widths[j] - item_size[0]) // 2"),
    ("module_view/_module_view.py",
     "control.SetMinSize((v.size[0] * unit, v.size[1] * unit))",
     "control.SetMinSize((int(v.size[0] * unit), int(v.size[1] * unit)))"),
    ("preferences_view/_preferences_view.py",
     "(100 * elapsed_time) / (elapsed_time + remaining_time + 0.00001)",
     "int((100 * elapsed_time) / (elapsed_time + remaining_time + 0.00001))"),
]


def main() -> int:
    spec = importlib.util.find_spec("cellprofiler")
    if spec is None or spec.origin is None:
        print("cellprofiler is not installed here: nothing to patch", file=sys.stderr)
        return 1
    gui = Path(spec.origin).parent / "gui"
    done = 0
    for name, old, new in FIXES:
        path = gui / name
        text = path.read_text()
        if new in text:
            continue
        if old not in text:
            print(f"{path}: expected code not found ({old!r}); CellProfiler changed, check whether the fix is still needed",
                  file=sys.stderr)
            return 1
        path.write_text(text.replace(old, new))
        done += 1
    print(f"CellProfiler GUI ({gui}): {done} of {len(FIXES)} float expressions made integer"
          + (" (the others were already)" if done < len(FIXES) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
