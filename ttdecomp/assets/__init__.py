"""Packaged models and data, the readers of a user's text, and the one model loader.

The floor under the three jobs (``finetune``, ``search``, ``compress``): nothing here trains.
Importing it needs neither torch nor transformers (they are imported inside the functions that
load a model); nothing here sets an environment variable.

* :mod:`~ttdecomp.assets.registry` — the packaged offline models and data, by name.
* :mod:`~ttdecomp.assets.loader` — :func:`load_pretrained`, :func:`load_tokenizer`,
  :func:`resolve_model`: a packaged name, a local folder or a Hugging Face Hub id.
* :mod:`~ttdecomp.assets.quantized` — checkpoints saved quantized (bitsandbytes 4-/8-bit,
  torchao int8): their kind, refusing another quantization on top, counting quantized layers.
* :mod:`~ttdecomp.assets.text_files` — :func:`read_labelled`: CSV/TSV/JSONL/JSON files, saved 🤗
  datasets folders and Hub datasets, read strictly.
* :mod:`~ttdecomp.assets.smollm2`, :mod:`~ttdecomp.assets.mpnet` — SmolLM2-135M from its GGUF
  file and all-mpnet-base-v2 from its split zip, each assembled once into the ttdecomp cache.
* :mod:`~ttdecomp.assets.dialogues`, :mod:`~ttdecomp.assets.chat_tokens` — the chatterbot
  dialogues, a leak-free split, chat-formatted tokens.

Examples
--------
>>> from ttdecomp.assets import model_task
>>> model_task({"architectures": ["GPT2LMHeadModel"]})
'causal'
"""

from __future__ import annotations

from .chat_tokens import CausalDataset, make_collator, tokenize_dialogues
from .dialogues import load_chatterbot, split_dialogues
from .loader import (
    ModelSource,
    check_model_folder,
    check_tokenizer,
    load_pretrained,
    load_tokenizer,
    model_task,
    resolve_model,
)
from .mpnet import mpnet_checkpoint
from .quantized import (
    check_same_quantization,
    count_quantized_layers,
    describe_quantization,
    saved_kind,
)
from .registry import DATA, MODELS, AssetMissingError, asset_status, data_path, model_path
from .smollm2 import load_smollm2, smollm2_checkpoint
from .text_files import LabelledRecords, read_labelled, read_records

__all__ = [
    "DATA",
    "MODELS",
    "AssetMissingError",
    "CausalDataset",
    "LabelledRecords",
    "ModelSource",
    "asset_status",
    "check_model_folder",
    "check_same_quantization",
    "check_tokenizer",
    "count_quantized_layers",
    "data_path",
    "describe_quantization",
    "load_chatterbot",
    "load_pretrained",
    "load_smollm2",
    "load_tokenizer",
    "make_collator",
    "model_path",
    "model_task",
    "mpnet_checkpoint",
    "read_labelled",
    "read_records",
    "resolve_model",
    "saved_kind",
    "smollm2_checkpoint",
    "split_dialogues",
    "tokenize_dialogues",
]
