"""Fine-tuning with TT adapters: what ``ttdecomp finetune`` runs, as a Python API.

Sits above :mod:`ttdecomp.adapters` and below the command line. One training function
(:func:`~ttdecomp.finetune.train.fit`, on ``transformers.Trainer``) serves every method and
task; :func:`finetune` runs methods × seeds on one model and data set and writes the report.

* :mod:`ttdecomp.assets` — the packaged models and data, the one model loader, the readers
  (``ttdecomp.finetune.assets``, ``.smollm2``, ``.dialogues`` and ``.chat_tokens`` re-export
  what moved there).
* :mod:`~ttdecomp.finetune.data` — labelled text: cleaning, balancing, seeded splits.
* :mod:`~ttdecomp.finetune.methods` — TT-LoRA, LoRA (PEFT), LoRETTA-rep/adp, head-only.
* :mod:`~ttdecomp.finetune.train` — :func:`fit`: validation-chosen state, timings, memory.
* :mod:`~ttdecomp.finetune.classify` — one classification run; reloading its adapter.
* :mod:`~ttdecomp.finetune.lm_eval` — held-out loss and replies of a causal LM.
* :mod:`~ttdecomp.finetune.causal` — one causal-LM run (SmolLM2 on dialogues).
* :mod:`~ttdecomp.finetune.report` — the table, ``results.json``, the figures.
* :mod:`~ttdecomp.finetune.config` — :class:`FinetuneConfig`: the options and their defaults.
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
from .batching import LengthGroupedSampler, chunk_by_length, length_chunked, length_grouped
from .causal import run_causal
from .classify import load_finetuned
from .data import Splits, load_classification, unlabelled_texts
from .lm_eval import evaluate_lm, generate_reply
from .methods import DEFAULT_METHODS, METHODS, MethodSettings, apply_method, default_settings
from .parallel import plan_jobs
from .report import load_results
from .run import FinetuneConfig, FinetuneResult, finetune, prepare_job
from .train import FitResult, PeakMemory, TrainSettings, fit

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "AssetMissingError",
    "FinetuneConfig",
    "FinetuneResult",
    "FitResult",
    "LengthGroupedSampler",
    "MethodSettings",
    "PeakMemory",
    "Splits",
    "TrainSettings",
    "apply_method",
    "asset_status",
    "chunk_by_length",
    "default_settings",
    "evaluate_lm",
    "finetune",
    "fit",
    "generate_reply",
    "length_chunked",
    "length_grouped",
    "load_chatterbot",
    "load_classification",
    "load_finetuned",
    "load_results",
    "load_smollm2",
    "plan_jobs",
    "prepare_job",
    "run_causal",
    "split_dialogues",
    "unlabelled_texts",
]
