"""The README's Python example runs as written and does what it says."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_learns(capsys):
    if not README.exists():
        pytest.skip("README.md is not next to the tests (installed-package run)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = blocks[0]
    namespace = {}
    exec(compile(example, "README.md example", "exec"), namespace)
    assert namespace["accuracy"] >= 0.9
    assert "accuracy" in capsys.readouterr().out
