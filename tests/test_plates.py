"""Per-well summaries and plate heatmaps from per-image tables."""
import subprocess
import sys

import numpy as np
import pytest

import dlmodel
from dlmodel.plates import plate_shape, summarise, well_values
from zoo import write_csv


def test_well_means_and_heatmap(tmp_path):
    rows = [{"Metadata_Row": r, "Metadata_Column": f"{c:02d}", "Count_Nuclei": n, "GFP": g}
            for r, c, n, g in [("A", 1, 10, 0.5), ("A", 1, 20, 0.7), ("H", 12, 5, 0.1), ("B", 3, "", 0.2)]]
    table = write_csv(tmp_path / "Image.csv", rows)
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
    table = write_csv(tmp_path / "Image.csv", [{"Metadata_Row": "A", "Metadata_Column": "1", "X": 1}])
    with pytest.raises(dlmodel.DLModelError, match="no column 'Count_Nuclei'"):
        well_values(table, ["Count_Nuclei"])


def test_384_well_plates():
    assert plate_shape([("P", 24), ("A", 1)]) == (16, 24)


def test_1536_well_rows_aa_to_af_do_not_overwrite_a_to_f(tmp_path):
    """Rows AA-AF of a 1536-well plate are rows 27-32, not A-F again (issue 17)."""
    from matplotlib.image import imread

    from dlmodel.plates import heatmaps, plate_grid, row_index, row_name

    assert [row_index(r) for r in ("A", "F", "Z", "AA", "AF")] == [0, 5, 25, 26, 31]
    assert all(row_name(row_index(r)) == r for r in ("A", "Z", "AA", "AF"))
    values = {("A", 1): {"v": 1.0}, ("AA", 1): {"v": 100.0}, ("AF", 48): {"v": 50.0}}
    assert plate_shape(list(values)) == (32, 48)
    grid = plate_grid(values, "v", (32, 48))
    assert grid[0, 0] == 1.0 and grid[26, 0] == 100.0 and grid[31, 47] == 50.0
    assert np.isnan(grid).sum() == 32 * 48 - 3
    png = heatmaps(values, ["v"], tmp_path / "p.png")
    assert imread(png).shape[0] > 0
    with pytest.raises(dlmodel.DLModelError, match="not a row name"):
        row_index("A1")
