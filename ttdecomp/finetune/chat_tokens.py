"""Moved to :mod:`ttdecomp.assets.chat_tokens`; this module keeps imports written before working."""

from __future__ import annotations

from ..assets.chat_tokens import (
    IGNORE_INDEX,
    CausalDataset,
    CausalLMCollator,
    TokenizeReport,
    make_collator,
    prompt_text,
    tokenize_dialogues,
    tokenize_splits,
)

__all__ = [
    "IGNORE_INDEX",
    "CausalDataset",
    "CausalLMCollator",
    "TokenizeReport",
    "make_collator",
    "prompt_text",
    "tokenize_dialogues",
    "tokenize_splits",
]
