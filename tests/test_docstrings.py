"""Every example in the core's docstrings runs and gives what it says (numpydoc examples are
tests). Each module of src/dlmodel is imported and run through doctest here, rather than with
pytest's --doctest-modules, which would also import the scripts under tests/fixtures (they train
models at import)."""
import doctest
import importlib
import pkgutil

import pytest

import dlmodel

# RunDLModel's wx dialog: imported only in CellProfiler's GUI (make gui-test's venv)
NEEDS_WX = {"dlmodel.gui.chooser"}
MODULES = sorted(m.name for m in pkgutil.walk_packages(dlmodel.__path__, "dlmodel.") if m.name not in NEEDS_WX)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (output above)"


def test_the_examples_are_many():
    # a walk that found no modules, or examples that doctest stopped seeing, would pass silently above
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for n in MODULES for t in finder.find(importlib.import_module(n)))
    assert len(MODULES) > 40 and examples > 40
