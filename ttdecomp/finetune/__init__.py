"""Fine-tuning with TT adapters: what ``ttdecomp finetune`` runs, as a Python API.

Sits above :mod:`ttdecomp.adapters` and below the command line. One training function
(:func:`~ttdecomp.finetune.train.fit`, on ``transformers.Trainer``) serves every method and
task; :func:`finetune` runs methods × seeds on one model and data set and writes the report.

* :mod:`ttdecomp.assets` — the packaged models and data, the one model loader, the readers
  (``ttdecomp.finetune.assets``, ``.smollm2``, ``.dialogues`` and ``.chat_tokens`` re-export
  what moved there).
* :mod:`~ttdecomp.finetune.data` — labelled text: cleaning, balancing, seeded splits.
* :mod:`~ttdecomp.finetune.methods` — the Method registry: TT-LoRA, LoRA (PEFT),
  LoRETTA-rep/adp, head-only; a new method is one class and one registration.
* :mod:`~ttdecomp.finetune.tasks` — the Task registry and the Job protocol: sequence
  classification, causal-LM fine-tuning on dialogues.
* :mod:`~ttdecomp.finetune.train` — :func:`fit`: validation-chosen state, timings, memory.
* :mod:`~ttdecomp.finetune.tasks.lm_eval` — held-out loss and replies of a causal LM.
* :mod:`~ttdecomp.finetune.report` — the table, ``results.json``, the figures.
* :mod:`~ttdecomp.finetune.config` — :class:`FinetuneConfig`: the options and their defaults.
* :mod:`~ttdecomp.finetune.options` — each option's help, group and the tasks' default
  tables, as the command line shows them.
* :mod:`~ttdecomp.finetune.overrides` — per-method options resolved into each method's
  settings and each run's schedule.
* :mod:`~ttdecomp.finetune.parallel` — runs side by side, a process each (:func:`plan_jobs`).
* :mod:`~ttdecomp.finetune.run` — :func:`finetune`: every run, resumable.

Examples
--------
>>> from ttdecomp.finetune import FinetuneConfig, finetune
>>> result = finetune(FinetuneConfig(quick=True), output="quick-run")  # doctest: +SKIP
>>> print(result.table)  # doctest: +SKIP
"""

from __future__ import annotations

from ..assets.dialogues import load_chatterbot, split_dialogues
from ..assets.registry import AssetMissingError, asset_status
from ..assets.smollm2 import load_smollm2
from . import _requires  # noqa: F401 (first: a missing package names its pip install)
from .batching import LengthGroupedSampler, chunk_by_length, length_chunked, length_grouped
from .data import Splits, load_classification, unlabelled_texts
from .methods import (
    DEFAULT_METHODS,
    METHODS,
    Method,
    MethodSettings,
    apply_method,
    default_settings,
    get_method,
    method_names,
    register_method,
    resolve_settings,
)
from .parallel import plan_jobs
from .report import load_results
from .run import FinetuneConfig, FinetuneResult, finetune, load_finetuned, prepare_job
from .tasks import Job, Task, get_task, register_task, run_causal, task_names
from .tasks.lm_eval import evaluate_lm, generate_reply
from .train import FitResult, PeakMemory, TrainSettings, fit

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "AssetMissingError",
    "FinetuneConfig",
    "FinetuneResult",
    "FitResult",
    "Job",
    "LengthGroupedSampler",
    "Method",
    "MethodSettings",
    "PeakMemory",
    "Splits",
    "Task",
    "TrainSettings",
    "apply_method",
    "asset_status",
    "chunk_by_length",
    "default_settings",
    "evaluate_lm",
    "finetune",
    "fit",
    "generate_reply",
    "get_method",
    "get_task",
    "length_chunked",
    "length_grouped",
    "load_chatterbot",
    "load_classification",
    "load_finetuned",
    "load_results",
    "load_smollm2",
    "method_names",
    "plan_jobs",
    "prepare_job",
    "register_method",
    "register_task",
    "resolve_settings",
    "run_causal",
    "split_dialogues",
    "task_names",
    "unlabelled_texts",
]
