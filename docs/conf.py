"""Sphinx configuration of flink-torch-ml's documentation site (``make docs``).

Builds offline: no intersphinx, no remote images; pages are Markdown (MyST), the API reference
is generated from the package's docstrings (autodoc). CI builds it with warnings as errors.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

from flink_torch_ml._version import __version__  # noqa: E402

project = "flink-torch-ml"
author = "flink-torch-ml developers"
copyright = "2026, flink-torch-ml developers"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_heading_anchors = 3  # [text](page.md#a-heading) links, as GitHub renders them
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# The public API imports pyflink and torch; both are installed wherever the docs build.
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"flink-torch-ml {release}"
html_static_path: list = []
