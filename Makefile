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

.PHONY: setup test demo clean gui-setup gui-test cp4-setup test-cp4 np2-setup test-numpy2

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[all]"
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt cellprofiler-nightly
	# tf.keras 2.x for .h5 files Keras 3 cannot read; its metadata asks for the GPU `tensorflow`
	# distribution, which would land beside tensorflow-cpu: the same version, without its deps
	$(BIN)/python -m pip install -q --no-deps "tf_keras==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu").rsplit(".", 1)[0])').*"
	$(BIN)/cellprofiler --version
	touch $@

test: setup
	$(BIN)/python -m pytest

demo: setup
	$(BIN)/dlmodel test $$($(BIN)/python -c 'import dlmodel; print(dlmodel.DEFAULT_MODEL)')
	$(BIN)/cellprofiler -c -r -p example_pipelines/plate_screen.cppipe --plugins-directory plugins \
		-i $(IMAGES) -o $(OUT) $(READERS)
	$(BIN)/dlmodel heatmap $(OUT)/Image.csv -o $(OUT)/plate_heatmap.png \
		--measure Count_Nuclei --measure Mean_Nuclei_Intensity_MeanIntensity_GFP
	@echo "per-image (per-well) CSV: $(OUT)/Image.csv; per-object CSVs: $(OUT)/Nuclei.csv $(OUT)/Cells.csv $(OUT)/Cytoplasm.csv"
	@echo "CalculateStatistics (Z', V, EC50 of every measurement): $(OUT)/Experiment.csv"
	@echo "plate heatmap (nuclei count, mean GFP per well): $(OUT)/plate_heatmap.png"

# make gui-test: the real CellProfiler window on a virtual display (Xvfb), driven by
# tests/gui_driver.py; needs Debian's wxPython (python3-wxgtk4.0), so its own venv made with
# --system-site-packages from Debian's Python 3.11. Screenshots land in docs/images/.
GUI_VENV := .venv-gui
GUI_PY := /usr/bin/python3.11
APT_GUI := python3-wxgtk4.0 xvfb default-libmysqlclient-dev pkg-config xdotool imagemagick
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

gui-setup: $(GUI_VENV)/.installed

$(GUI_VENV)/.installed: setup.py constraints.txt
	@if ! ($(GUI_PY) -c "import wx" && command -v Xvfb && command -v import) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_GUI); fi
	$(GUI_PY) -m venv --system-site-packages $(GUI_VENV)
	$(GUI_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	# the full cellprofiler-nightly (GUI) with its declared needs; appose is imported by the GUI
	# but not declared
	$(GUI_VENV)/bin/python -m pip install -q -c constraints.txt -e ".[onnx,test,cellprofiler]" cellprofiler-nightly appose
	# CellProfiler's settings panels fail to lay out on Python >= 3.10 (upstream issues #4715, #4819)
	$(GUI_VENV)/bin/python scripts/patch_cellprofiler_gui.py
	$(GUI_VENV)/bin/python -c "import wx, cellprofiler.gui.app; print('wxPython', wx.version())"
	touch $@

gui-test: gui-setup
	rm -rf out/gui-shots
	DLMODEL_GUI_SHOTS=out/gui-shots $(GUI_VENV)/bin/python -m pytest -m gui tests/test_gui.py
	mkdir -p docs/images
	cp out/gui-shots/add_module_dialog.png out/gui-shots/settings_panel.png out/gui-shots/display_window.png \
		out/gui-shots/choose_model_dialog.png out/gui-shots/choose_model_download.png out/gui-shots/choose_model_checked.png \
		docs/images/

# make test-cp4: the CellProfiler tests against CellProfiler 4.2.8.1 (Python 3.9, headless), the
# release most biologists run. .venv-cp4 holds CellProfiler and its needs only: no engine, no
# bioimageio.spec, as in the app from the website; RunDLModel runs its models in .venv (Python 3.11)
# through its setting "Python environment for the model" (docs/cellprofiler.md).
CP4_VENV := .venv-cp4
# Python 3.9 from pyenv where there is one, else from PATH
PY39 ?= $(shell p=$$(pyenv prefix 3.9 2>/dev/null) && echo $$p/bin/python3.9 || command -v python3.9)
# the JDK python-javabridge compiles against: $JAVA_HOME, else Debian's openjdk-17-jdk-headless
CP4_JAVA_HOME = $(or $(JAVA_HOME),$(firstword $(wildcard /usr/lib/jvm/java-17-openjdk-*)))
CP4_NEEDS := "scipy==1.9.0" "scikit-image==0.18.3" "centrosome>=1.2.3,<1.3" "docutils==0.15.2" "h5py>=3.6,<3.8" \
	imageio "inflect<7" Jinja2 joblib mahotas "matplotlib<3.8" Pillow "prokaryote==2.4.4" "pyzmq~=22.3" \
	"sentry-sdk==0.18.0" requests "scikit-learn<1" six "tifffile<2022.4.22" boto3 psutil \
	"python-bioformats>=4.0.7,<5" pytest

cp4-setup: $(CP4_VENV)/.installed

$(CP4_VENV)/.installed:
	@[ -x "$(PY39)" ] || { echo "cp4-setup needs Python 3.9 (pyenv install 3.9, or python3.9 on PATH)"; exit 1; }
	@[ -f "$(CP4_JAVA_HOME)/include/jni.h" ] || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq openjdk-17-jdk-headless; }
	$(PY39) -m venv $(CP4_VENV)
	$(CP4_VENV)/bin/python -m pip install -q "numpy<1.25" cython wheel "setuptools<70"
	# with build isolation javabridge compiles against numpy 2 and fails
	JAVA_HOME=$(CP4_JAVA_HOME) \
		$(CP4_VENV)/bin/python -m pip install -q --no-build-isolation python-javabridge==4.0.3
	# --no-deps: CellProfiler declares wxPython and mysqlclient, which headless runs do not need
	$(CP4_VENV)/bin/python -m pip install -q --no-deps cellprofiler==4.2.8.1 cellprofiler-core==4.2.8.1
	$(CP4_VENV)/bin/python -m pip install -q "numpy<1.25" $(CP4_NEEDS)
	$(CP4_VENV)/bin/cellprofiler --version
	touch $@

# the CellProfiler tests in CellProfiler 4.2.8.1; models run in .venv (Python 3.11) through the
# module's "Python environment for the model"
test-cp4: setup cp4-setup
	DLMODEL_ENGINE_PYTHON=$(abspath $(BIN)/python) PYTHONPATH=$(abspath src) \
		$(CP4_VENV)/bin/python -m pytest -p no:cacheprovider tests/test_cellprofiler.py

# make test-numpy2: the core and its engines under numpy 2, in .venv-np2 (Python 3.11) without
# CellProfiler: only CellProfiler 5 needs numpy < 2 (the `cellprofiler` extra), so a user of the
# Python API or the CLI in a numpy-2 environment (napari...) installs dlmodel as it is. Same
# constraints.txt as .venv (it pins no numpy); the tests are those of the core that need no CellProfiler.
NP2_VENV := .venv-np2
# every engine, processing, tiling, instances, the families (StarDist's NMS), deepImageJ's macros,
# the default model, bioimageio.core's outputs, the worker, packaging and the docstrings' examples
# (numpy 2 prints scalars differently): about 3 minutes. Tests of
# Cellpose and CellProfiler skip here (Cellpose 3 needs numpy < 2.1: not installed here).
NP2_TESTS := $(addprefix tests/test_,api.py tiling.py processing.py instances.py engines.py spec_v0_4.py \
	hostile_numbers.py plates.py families.py deepimagej.py deepimagej_packages.py default_model.py \
	nuclei_model.py confidence.py worker.py protocol.py packaging.py) tests/test_docstrings.py

np2-setup: $(NP2_VENV)/.installed

$(NP2_VENV)/.installed: setup.py constraints.txt
	$(PY) -m venv $(NP2_VENV)
	$(NP2_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(NP2_VENV)/bin/python -m pip install -q -c constraints.txt -e ".[onnx,torch,tensorflow,distributed,reference,test]" "numpy>=2"
	# tf.keras 2.x for .h5 files, as in .venv (its metadata asks for the GPU `tensorflow`)
	$(NP2_VENV)/bin/python -m pip install -q --no-deps "tf_keras==$$($(NP2_VENV)/bin/python -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu").rsplit(".", 1)[0])').*"
	$(NP2_VENV)/bin/python -c "import numpy; assert int(numpy.__version__.split('.')[0]) >= 2, numpy.__version__; print('numpy', numpy.__version__)"
	touch $@

# with .venv there (numpy 1), a worker test runs the default model across the two numpys
test-numpy2: np2-setup
	$(if $(wildcard $(BIN)/python),DLMODEL_OTHER_NUMPY_PYTHON=$(abspath $(BIN)/python)) \
		$(NP2_VENV)/bin/python -m pytest -p no:cacheprovider $(NP2_TESTS)

clean:
	rm -rf $(VENV) $(GUI_VENV) $(CP4_VENV) $(NP2_VENV) out .pytest_cache .hypothesis
