"""Moved to :mod:`ttdecomp.finetune.tasks.classification` (and :func:`load_finetuned` to
:mod:`ttdecomp.finetune.run`); this module keeps imports written before working."""

from __future__ import annotations

from .run import load_finetuned
from .tasks.classification import (
    LOGITS_FILE,
    TextDataset,
    accuracy,
    load_classifier,
    predict_logits,
    run_classification,
)

__all__ = [
    "LOGITS_FILE",
    "TextDataset",
    "accuracy",
    "load_classifier",
    "load_finetuned",
    "predict_logits",
    "run_classification",
]
