"""Moved to :mod:`ttdecomp.assets.smollm2`; this module keeps imports written before working."""

from __future__ import annotations

from ..assets.smollm2 import (
    GGUF_FILE,
    INSTALL_LINE,
    PACKAGE,
    clear_quantizer,
    default_cache_dir,
    find_gguf,
    load_smollm2,
    quantized_model_message,
    smollm2_checkpoint,
)

__all__ = [
    "GGUF_FILE",
    "INSTALL_LINE",
    "PACKAGE",
    "clear_quantizer",
    "default_cache_dir",
    "find_gguf",
    "load_smollm2",
    "quantized_model_message",
    "smollm2_checkpoint",
]
