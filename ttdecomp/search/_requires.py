"""Imported first by :mod:`ttdecomp.search`: a missing package is an ``ImportError`` that
names the ``pip install`` bringing it, before any submodule fails on a bare ``import``."""

from __future__ import annotations

from .._validation import require_packages

require_packages(["torch", "transformers", "peft", "optuna"], "finetune,search", "ttdecomp.search")
