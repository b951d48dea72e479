# make test: set up .venv (Python 3.11) with everything, then run the tests.
# make demo: set up, then run the default model over a folder of images (IMAGES=...).
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
IMAGES ?= ../shared/data/dsb2018_nuclei_val/images
MODEL ?= ../shared/models/unet2d_nuclei_broad
OUT ?= out/demo

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
	$(BIN)/dlmodel test $(MODEL)
	$(BIN)/dlmodel predict $(MODEL) $(IMAGES) -o $(OUT)
	@echo "probability images written to $(OUT)/"

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
