"""Per-well summaries and plate heatmaps from per-image tables."""
import csv
import subprocess
import sys

import pytest

import dlmodel
from dlmodel.plates import plate_shape, summarise, well_values


def _table(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_well_means_and_heatmap(tmp_path):
    rows = [{"Metadata_Row": r, "Metadata_Column": f"{c:02d}", "Count_Nuclei": n, "GFP": g}
            for r, c, n, g in [("A", 1, 10, 0.5), ("A", 1, 20, 0.7), ("H", 12, 5, 0.1), ("B", 3, "", 0.2)]]
    table = _table(tmp_path / "Image.csv", rows)
    values = well_values(table, ["Count_Nuclei", "GFP"])
    assert values[("A", 1)] == {"Count_Nuclei": 15.0, "GFP": pytest.approx(0.6)}
    assert values[("B", 3)] == {"GFP": 0.2}  # a failed count is left out, not zero
    assert plate_shape(list(values)) == (8, 12)
    png, wells = summarise(table, ["Count_Nuclei", "GFP"], tmp_path / "plate.png")
    assert wells == 3 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = subprocess.run([sys.executable, "-m", "dlmodel.cli", "heatmap", table, "-o", tmp_path / "p2.png",
                          "--measure", "Count_Nuclei"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "over 2 wells" in res.stdout  # B3 has no count


def test_missing_column_is_named(tmp_path):
    table = _table(tmp_path / "Image.csv", [{"Metadata_Row": "A", "Metadata_Column": "1", "X": 1}])
    with pytest.raises(dlmodel.DLModelError, match="no column 'Count_Nuclei'"):
        well_values(table, ["Count_Nuclei"])


def test_384_well_plates():
    assert plate_shape([("P", 24), ("A", 1)]) == (16, 24)
