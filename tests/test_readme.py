"""The README's Python examples run as written (files they write go to the test's tmp_path)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs land here
    if "from transformers" in BLOCKS[index]:  # the language-model examples need the llm extra
        pytest.importorskip("transformers")
    code = BLOCKS[index].replace("/tmp/", f"{tmp_path}/")  # absolute example paths too
    exec(compile(code, f"README.md[python block {index}]", "exec"), {})
