"""Moved to :mod:`ttdecomp.finetune.tasks.causal_lm`; this module keeps imports written before
working."""

from __future__ import annotations

from .tasks.causal_lm import (
    CAUSAL_SPLIT,
    DEFAULT_CAUSAL_TARGETS,
    CausalJob,
    evaluate_base,
    prepare_causal,
    run_causal,
)

__all__ = [
    "CAUSAL_SPLIT",
    "DEFAULT_CAUSAL_TARGETS",
    "CausalJob",
    "evaluate_base",
    "prepare_causal",
    "run_causal",
]
