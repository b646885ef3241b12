"""Every Python code block in README.md and docs/ runs as written, so the documentation cannot
drift from the code. The blocks of one page run in order in one namespace (a page builds on
its earlier blocks), in a temporary working directory (blocks that save files leave nothing
behind). A page whose blocks import torch or keras runs where those are installed (CI installs
both) and is skipped elsewhere."""

import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]) if (ROOT / "docs").is_dir() \
    else [ROOT / "README.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _pages_with_code():
    return [p for p in PAGES if p.exists() and BLOCK.search(p.read_text())]


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_blocks_run(page, tmp_path, monkeypatch):
    blocks = BLOCK.findall(page.read_text())
    text = "\n".join(blocks)
    if re.search(r"^\s*import torch|^\s*from torch", text, re.M):
        pytest.importorskip("torch")
    if re.search(r"^\s*import keras|^\s*from keras|elman\.keras", text, re.M):
        os.environ.setdefault("KERAS_BACKEND", "torch")
        pytest.importorskip("keras")
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name} block {i + 1}", "exec"), namespace)


def test_the_docs_are_found():
    """The collector sees the pages (a moved docs folder must not make this test vacuous)."""
    if not (ROOT / "docs").is_dir():
        pytest.skip("docs/ is not next to the tests")
    names = {p.name for p in _pages_with_code()}
    assert {"quickstart.md", "shapes.md", "bptt.md"} <= names


DOCTEST_MODULES = ["elman._module", "elman.rnn", "elman.linear", "elman.functional",
                   "elman.losses", "elman.optim", "elman.training", "elman.serialization",
                   "elman.reference"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
    """The examples in the docstrings (the API reference shows them) run and print what they
    say."""
    import doctest
    import importlib
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
