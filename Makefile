# make test: set up .venv (Python 3.11) with everything, then run the tests.
# make demo: set up, then run the plate-screen pipeline headless with the default nuclei model
#            over ../shared/data/ExampleSBSImages (or IMAGES=...), and draw per-well heatmaps.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
IMAGES ?= ../shared/data/ExampleSBSImages
OUT ?= out/demo
# offline: CellProfiler's Bio-Formats reader would download Java jars from Maven first
READERS := --enable-readers imageio_reader imageio_reader_v3

.PHONY: setup test demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[all]"
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt cellprofiler-nightly
	$(BIN)/cellprofiler --version
	touch $@

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/dlmodel test models/nuclei_default
	$(BIN)/cellprofiler -c -r -p example_pipelines/plate_screen.cppipe --plugins-directory plugins \
		-i $(IMAGES) -o $(OUT) $(READERS)
	$(BIN)/dlmodel heatmap $(OUT)/Image.csv -o $(OUT)/plate_heatmap.png \
		--measure Count_Nuclei --measure Mean_Nuclei_Intensity_MeanIntensity_GFP
	@echo "per-image (per-well) CSV: $(OUT)/Image.csv; per-object CSVs: $(OUT)/Nuclei.csv $(OUT)/Cells.csv $(OUT)/Cytoplasm.csv"
	@echo "plate heatmap (nuclei count, mean GFP per well): $(OUT)/plate_heatmap.png"

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
