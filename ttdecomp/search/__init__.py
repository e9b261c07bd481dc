"""Hyperparameter search for TT adapters: what ``ttdecomp search`` runs, as a Python API.

Sits above :mod:`ttdecomp.finetune` (every trial is one of its fine-tuning runs, through the
same training function) and below the command line. An Optuna study samples TT-LoRA shapes,
ranks, α and learning rates (and LoRA's r, ``lora_alpha``, lr), reports validation accuracy
(validation loss for causal LMs) after every epoch to a ``HyperbandPruner``, and with
``pareto=True`` also minimises adapter parameters. Storage is a SQLite file in the output
folder, or any Optuna RDB URL (PostgreSQL) shared by workers on many machines.

* :mod:`~ttdecomp.search.space` — the search space: defaults, YAML/JSON files, overrides.
* :mod:`~ttdecomp.search.storage` — the study's storage: SQLite or PostgreSQL, checked.
* :mod:`~ttdecomp.search.study` — samplers, the pruner, the study, the trial objective.
* :mod:`~ttdecomp.search.report` — the Pareto front, ``search.json``, the figure.
* :mod:`~ttdecomp.search.run` — :func:`search`: the study, workers, re-training the best.
* :mod:`~ttdecomp.search.worker` — one worker process of ``--workers N``.

Examples
--------
>>> from ttdecomp.search import SearchConfig, search
>>> result = search(SearchConfig(quick=True), output="quick-search")  # doctest: +SKIP
>>> print(result.table)  # doctest: +SKIP
"""

from __future__ import annotations

from . import _requires  # noqa: F401 (first: a missing package names its pip install)
from .report import pareto_front
from .run import SearchConfig, SearchResult, search
from .space import PARAMETERS, Param, SearchSpace, default_space, load_space, tt_shape_candidates

__all__ = [
    "PARAMETERS",
    "Param",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "default_space",
    "load_space",
    "pareto_front",
    "search",
    "tt_shape_candidates",
]
