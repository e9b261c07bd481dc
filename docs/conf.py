"""Sphinx configuration for ttdecomp's documentation.

Builds offline with warnings as errors (``python -m sphinx -W -b html docs docs/_build``):

* the notebooks in ``notebooks/`` are copied to ``docs/notebooks/`` (git-ignored) and rendered
  by myst-nb from their stored outputs (``nb_execution_mode = "off"``; the test-suite runs them
  under a Jupyter kernel, ``tests/test_notebooks.py``);
* the intersphinx inventories of numpy, torch, transformers and peft are vendored in
  ``docs/_inv/`` (written by ``docs/_inv/make_inventories.py``), so no network is needed;
* the CLI reference is generated from :func:`ttdecomp.cli.build_parser` by sphinx-argparse;
* the concepts figure is drawn at build time by ``docs/figures/layouts.py`` into
  ``docs/_generated/`` (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import ttdecomp  # noqa: E402


def _copy_notebooks() -> None:
    """Mirror ``notebooks/*.ipynb`` into ``docs/notebooks/`` (only files that changed)."""
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    sources = {p.name: p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    for stale in target.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, src in sources.items():
        dst = target / name
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)


_copy_notebooks()
# autosummary writes docs/generated/ (git-ignored) afresh each build: a page left from a name
# that is no longer listed would otherwise be an orphan, a warning under -W
shutil.rmtree(DOCS / "generated", ignore_errors=True)


def _draw_figures() -> None:
    """Draw the figures of ``docs/figures/*.py`` into ``docs/_generated/`` (git-ignored)."""
    import importlib.util

    import matplotlib

    matplotlib.use("Agg")
    out = DOCS / "_generated"
    out.mkdir(exist_ok=True)
    for script in sorted((DOCS / "figures").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_fig_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fig = module.main()[0]  # main() returns (figure, ...)
        fig.savefig(out / f"{script.stem}.png", dpi=110)
        matplotlib.pyplot.close(fig)


_draw_figures()

project = "ttdecomp"
author = "ttdecomp developers"
copyright = "ttdecomp developers"
release = version = ttdecomp.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_nb",
    "sphinx_copybutton",
    "sphinxarg.ext",
    "sphinx_design",
    # MathJax from the docs' own _static folder, not a CDN: the pages render math offline
    "sphinx-mathjax-offline",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_inv", "figures", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# API reference
autosummary_generate = True
autodoc_typehints = "none"
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
nitpicky = False

# Notebooks: rendered from their stored outputs, never executed by the docs build
nb_execution_mode = "off"
nb_output_stderr = "remove"  # progress bars and library warnings are not documentation
nb_merge_streams = True  # one output box per cell, however the kernel chunked its prints
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# intersphinx, offline: the inventories are files in docs/_inv/
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(DOCS / "_inv" / "python.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(DOCS / "_inv" / "numpy.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable/", str(DOCS / "_inv" / "torch.inv")),
    "transformers": (
        "https://huggingface.co/docs/transformers/main/en/",
        str(DOCS / "_inv" / "transformers.inv"),
    ),
    "peft": ("https://huggingface.co/docs/peft/main/en/", str(DOCS / "_inv" / "peft.inv")),
}
intersphinx_timeout = 1

# copy buttons: strip prompts and console output
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = False

html_theme = "pydata_sphinx_theme"
html_title = f"ttdecomp {release}"
html_static_path = ["_static"]
html_css_files = ["ttdecomp.css"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# pages without sub-pages: no (empty) section navigation on the left
html_sidebars = {
    page: [] for page in ("index", "getting_started", "concepts", "cli", "benchmarks", "comparison")
}
html_show_sourcelink = False
