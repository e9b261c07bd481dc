"""Moved to :mod:`ttdecomp.finetune.tasks.lm_eval`; this module keeps imports written before
working."""

from __future__ import annotations

from .tasks.lm_eval import evaluate_lm, generate_reply

__all__ = ["evaluate_lm", "generate_reply"]
