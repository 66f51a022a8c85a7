"""Sphinx configuration: pydata-sphinx-theme, MyST-NB (Markdown pages and notebooks,
executed at every build against the sandbox), autodoc/autosummary with numpydoc.

Build: ``bash scripts/run.sh docs`` (warnings are errors). No request leaves the machine
while building: no intersphinx, and the notebooks start their own sandbox on 127.0.0.1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package from this checkout, even without an install
# the notebooks' kernels draw inline (ipykernel's default): a non-interactive backend set
# here would reach them through the environment and no figure would be shown
os.environ.pop("MPLBACKEND", None)

import xarray_terrascope  # noqa: E402

project = "xarray-terrascope"
author = "xarray-terrascope developers"
copyright = "xarray-terrascope developers, MIT License"
release = version = xarray_terrascope.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinxcontrib.mermaid",
    "sphinx_copybutton",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
# .rst first: autosummary writes its stubs (reStructuredText) with the first suffix
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# MyST: ```mermaid fences are diagrams (as GitHub draws them), ::: fences are directives
myst_enable_extensions = ["colon_fence", "deflist"]
myst_fence_as_directive = ["mermaid"]
myst_heading_anchors = 3

# MyST-NB: every notebook runs at every build (offline: each starts its own sandbox);
# an error in a cell fails the build
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# holoviews' own mime types drive a live Jupyter kernel (comms); the static page shows
# the slider from the same output's HTML and JavaScript, so they are skipped, silently
suppress_warnings = ["mystnb.unknown_mime_type"]

# API reference
autosummary_generate = True
autodoc_typehints = "none"  # numpydoc renders the docstrings' own types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

html_theme = "pydata_sphinx_theme"
html_title = "xarray-terrascope"
html_theme_options = {
    "github_url": "https://github.com/xarray-terrascope/xarray-terrascope",
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
templates_path = ["_templates"]
