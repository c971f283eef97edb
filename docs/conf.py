"""Sphinx configuration for tenantry's documentation."""

from __future__ import annotations

from tenantry import __name__ as _package
from tenantry import __version__

project = _package
author = "The tenantry developers"
copyright = "2026, the tenantry developers"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
]

# Docstrings write `name` for cross-references, as trio's do. This machine has
# no network, so there is no intersphinx: names outside tenantry render as code.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"tenantry {release}"
exclude_patterns = ["_build"]

doctest_global_setup = "import tenantry\nfrom tenantry import *"
