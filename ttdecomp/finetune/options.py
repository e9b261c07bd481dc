"""The options of :class:`~ttdecomp.finetune.config.FinetuneConfig` as the command line shows them.

Each field's metadata (:data:`OPTIONS`: its help, option group, element type, choices and the
default shown in ``--help``), the tasks' training defaults (:data:`DEFAULTS`, :data:`QUICK`),
the choices of ``precision`` and ``report_to``, and the bounds the configuration checks its
integer options against. ``ttdecomp finetune`` builds its parser from the fields' metadata
(:mod:`ttdecomp.cli`); the configuration itself checks and resolves the values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .data import FRACTIONS
from .methods import format_defaults, method_names
from .quantization import BNB_4BIT_COMPUTE_DTYPES, BNB_4BIT_TYPES, QUANTIZE
from .tasks import get_task, task_names
from .train import LR_SCHEDULES

__all__ = ["DEFAULTS", "OPTIONS", "PRECISIONS", "QUICK", "REPORT_TO"]

#: The options whose default leaves a run's identity unchanged (``--resume`` names them only
#: when set): the Hub source and the quantized base.
SOURCE_DEFAULTS = {
    "revision": None,
    "trust_remote_code": False,
    "data_config": None,
    "text_column": "text",
    "label_column": "label",
    "quantize": "none",
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "float32",
}

#: The built-in tasks' training defaults (each registered task's ``defaults``, a copy).
DEFAULTS = {name: dict(get_task(name).defaults) for name in ("classification", "causal")}
#: Their ``--quick`` versions (each registered task's ``quick``, a copy).
QUICK = {name: dict(get_task(name).quick) for name in ("classification", "causal")}

#: ``precision``: ``auto`` is bf16 on a GPU that supports it, else fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ``report_to``: where the ``Trainer`` also logs.
REPORT_TO = ("none", "tensorboard", "wandb")
# option groups of the command line (the fields' "group")
_WHAT = "what to compare"
_METHOD = "method settings (VALUE for every method that has it, or METHOD=VALUE,...)"
_TRAINING = "training"
_DEVICE = "device and logging"
_QUANT = "quantized base model"
_SOURCE = "Hub model and data"
#: Upper bounds of the integer training options (all at least 1).
INT_LIMITS = {
    "epochs": 1000,
    "max_steps": 10**7,
    "batch_size": 65536,
    "eval_every": 10**7,
}


def _method_defaults(name: str) -> Callable[[], str]:
    """``"tt-lora 4, lora 8, ..."``: each registered method's recommended ``name``, read from
    the Method registry when the command line is built (methods registered at run time too)."""
    return functools.partial(format_defaults, setting=name)


def _registered_methods() -> str:
    return f"from the registered methods: {', '.join(method_names())}"


def _registered_tasks() -> str:
    return f"a registered task: {', '.join(task_names())}"


def _task_defaults(name: str, index: int | None = None) -> str:
    """``"4; --quick 3; causal LMs 1, --quick 1"``: a training default per task (for the help)."""

    def value(table: dict, task: str) -> Any:
        v = table[task][name]
        return v[index] if v is not None and index is not None else v

    parts = []
    for task, label in (("classification", ""), ("causal", "causal LMs ")):
        normal, quick = value(DEFAULTS, task), value(QUICK, task)
        text = [] if normal is None else [f"{label}{normal}"]
        if quick is not None:
            text.append(f"{'' if text or not label else label}--quick {quick}")
        if text:
            parts.append(", ".join(text))
    return "; ".join(parts) if parts else "none"


#: Each field's metadata, by field name: ``help`` (a string, or a callable read when the
#: command line is built), ``group``, and where they apply ``default_text``, ``type``,
#: ``list``, ``per_method``, ``choices`` and ``parts`` (one option per element).
OPTIONS: dict[str, dict[str, Any]] = {
    "model": {
        "help": "a packaged model (minilm, smollm2, mpnet), a local Hugging Face folder, "
        "or a Hub id (org/name, from the Hub or its cache)",
        "group": _WHAT,
    },
    "data": {
        "help": "packaged data (tweets, chatterbot), a CSV/JSONL file with text,label "
        "columns, a folder saved by datasets, or a Hub dataset id",
        "default_text": "tweets; chatterbot for a causal LM or --task causal",
        "group": _WHAT,
    },
    "methods": {"help": _registered_methods, "group": _WHAT, "list": True},
    "seeds": {"help": "one run per seed and method", "group": _WHAT, "list": True, "type": int},
    "rank": {
        "help": "TT-LoRA tt_rank, LoRA r, LoRETTA tensor_rank",
        "default_text": _method_defaults("rank"),
        "group": _METHOD,
        "per_method": True,
        "type": int,
    },
    "alpha": {
        "help": "TT-LoRA alpha, LoRA lora_alpha, LoRETTA-rep alpha",
        "default_text": _method_defaults("alpha"),
        "group": _METHOD,
        "per_method": True,
        "type": float,
    },
    "lr": {
        "help": "learning rate",
        "default_text": _method_defaults("lr"),
        "group": _METHOD,
        "per_method": True,
        "type": float,
    },
    "tt_shape": {
        "help": "TT-LoRA's flat shape, input then output factors, for every target",
        "default_text": "per layer, three balanced factors a side, e.g. 8,6,8,8,6,8",
        "group": _METHOD,
        "list": True,
        "type": int,
    },
    "epochs": {
        "help": "passes over the training split",
        "default_text": _task_defaults("epochs"),
        "group": _TRAINING,
        "type": int,
    },
    "max_steps": {
        "help": "optimizer steps instead of epochs",
        "default_text": _task_defaults("max_steps"),
        "group": _TRAINING,
        "type": int,
    },
    "batch_size": {
        "help": "global batch size",
        "default_text": _task_defaults("batch_size"),
        "group": _TRAINING,
        "type": int,
    },
    "max_length": {
        "help": "tokens per text",
        "default_text": _task_defaults("max_length"),
        "group": _TRAINING,
        "type": int,
    },
    "eval_every": {
        "help": "validate every N steps",
        "default_text": "every epoch",
        "group": _TRAINING,
        "type": int,
    },
    "weight_decay": {"help": "AdamW weight decay", "group": _TRAINING},
    "lr_schedule": {
        "help": f"learning-rate schedule after the warm-up, one of {', '.join(LR_SCHEDULES)}",
        "group": _TRAINING,
        "per_method": True,
        "type": str,
    },
    "warmup_ratio": {
        "help": "fraction of the steps spent warming the learning rate up from 0",
        "group": _TRAINING,
        "per_method": True,
        "type": float,
    },
    "targets": {
        "help": "target modules",
        "default_text": "the model's query and value projections",
        "group": _WHAT,
        "list": True,
        "type": str,
    },
    "sizes": {
        "help": "train, validation and test examples",
        "group": _TRAINING,
        "type": int,
        "parts": tuple(
            (
                flag,
                f"{what} ({_task_defaults('sizes', i)}; data of your own: "
                f"{100 * FRACTIONS[i]:.0f}% of its rows)",
            )
            for i, (flag, what) in enumerate(
                (
                    ("--train-size", "training examples"),
                    ("--val-size", "validation examples"),
                    ("--test-size", "test examples"),
                )
            )
        ),
    },
    "device": {
        "help": "auto (CUDA, then MPS, then CPU; under torchrun each process takes its "
        "LOCAL_RANK's GPU), cpu, cuda, cuda:N or mps",
        "group": _DEVICE,
    },
    "precision": {
        "help": "auto: bf16 on a GPU that supports it, else fp32",
        "group": _DEVICE,
        "choices": PRECISIONS,
    },
    "gradient_checkpointing": {
        "help": "recompute activations in the backward pass (less memory, more time)",
        "group": _DEVICE,
    },
    "report_to": {
        "help": "where the Trainer also logs (needs that package)",
        "group": _DEVICE,
        "choices": REPORT_TO,
    },
    "quantize": {
        "help": "load the base model quantized: bitsandbytes 4bit or 8bit, or torchao int8 "
        "weight-only (a model saved quantized, e.g. a *-bnb-4bit one, needs none: it loads "
        "as saved)",
        "group": _QUANT,
        "choices": tuple(QUANTIZE),
    },
    "bnb_4bit_quant_type": {
        "help": "4-bit data type (--quantize 4bit)",
        "group": _QUANT,
        "choices": BNB_4BIT_TYPES,
    },
    "bnb_4bit_compute_dtype": {
        "help": "dtype of the 4-bit matmuls (--quantize 4bit), as transformers names it",
        "group": _QUANT,
        "choices": BNB_4BIT_COMPUTE_DTYPES,
    },
    "quick": {
        "help": "small end-to-end check: "
        + ", ".join(f"{k} {v}" for k, v in QUICK["classification"].items() if v),
        "group": _TRAINING,
    },
    "revision": {"help": "a Hub model's branch, tag or commit", "group": _SOURCE, "type": str},
    "trust_remote_code": {
        "help": "run the Python code a Hub model ships (only for repositories you trust)",
        "group": _SOURCE,
    },
    "data_config": {
        "help": "a Hub dataset's configuration (e.g. sst2 of glue)",
        "group": _SOURCE,
        "type": str,
    },
    "text_column": {"help": "the text column of the data", "group": _SOURCE},
    "label_column": {"help": "the label column of the data", "group": _SOURCE},
    "task": {
        "help": _registered_tasks,
        "default_text": "chosen from the data, then the model",
        "group": _WHAT,
        "type": str,
    },
}
