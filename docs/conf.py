"""Sphinx configuration of elman's documentation (built in CI with warnings as errors:
``python -m sphinx -W --keep-going -b html docs docs/_build/html``)."""

import importlib.metadata
import os

# elman.keras's reference imports keras, which needs a backend chosen first (CI installs torch)
os.environ.setdefault("KERAS_BACKEND", "torch")

project = "elman"
author = "The elman developers"
copyright = "2026, The elman developers"
try:
    release = importlib.metadata.version("elman")
except importlib.metadata.PackageNotFoundError:
    release = "0+unknown"
version = release

extensions = [
    "myst_parser",            # the pages are Markdown
    "sphinx.ext.autodoc",     # the API reference from the docstrings
    "numpydoc",               # which are numpydoc-formatted
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "none"            # the signatures and numpydoc sections say it
numpydoc_show_class_members = False   # members are listed by autodoc's :members:
numpydoc_validation_checks = set()

html_theme = "pydata_sphinx_theme"
html_title = f"elman {release}"
html_theme_options = {"navigation_with_keys": False}
html_static_path = []
