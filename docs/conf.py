"""Sphinx configuration for ttdecomp's documentation."""

from __future__ import annotations

import ttdecomp

project = "ttdecomp"
author = "ttdecomp developers"
release = ttdecomp.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]
autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
exclude_patterns = ["_build"]
html_theme = "alabaster"
nitpicky = False
