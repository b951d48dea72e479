"""The Python examples in docs/ run as written."""
import re

import pytest

from conftest import ROOT


@pytest.mark.parametrize("page", ["python-api.md"])
def test_examples_run(page, nuclei_model, monkeypatch, capsys):
    text = (ROOT / "docs" / page).read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    monkeypatch.chdir(ROOT)
    exec(compile(code, page, "exec"), {})
    out = capsys.readouterr().out
    assert "(700, 300) float32 yx" in out and "(2, 700, 300)" in out and "wants 1 channel" in out
    assert "stardist int32" in out
