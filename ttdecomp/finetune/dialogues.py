"""Moved to :mod:`ttdecomp.assets.dialogues`; this module keeps imports written before working."""

from __future__ import annotations

from ..assets.dialogues import (
    Dialogue,
    DialogueSplits,
    chatterbot_languages,
    load_chatterbot,
    load_data,
    load_dialogues_jsonl,
    reply_prompt,
    split_dialogues,
)

__all__ = [
    "Dialogue",
    "DialogueSplits",
    "chatterbot_languages",
    "load_chatterbot",
    "load_data",
    "load_dialogues_jsonl",
    "reply_prompt",
    "split_dialogues",
]
