"""The fine-tuning tasks: a registry of :class:`Task` objects and the :class:`Job` protocol.

=====================  ======================================================================
``classification``     sequence classification (:mod:`.classification`): accuracy, a new head
``causal``             causal-LM fine-tuning on dialogues (:mod:`.causal_lm`): loss, a reply
=====================  ======================================================================

A task is a :class:`Task` subclass in a file of its own plus one :func:`register_task` line
(below); :func:`detect_task` picks one from the data and the model.
"""

from __future__ import annotations

from .causal_lm import TASK as CAUSAL_LM
from .causal_lm import CausalJob, CausalLMTask, run_causal
from .classification import TASK as CLASSIFICATION
from .classification import ClassificationJob, ClassificationTask
from .registry import (
    Job,
    Task,
    check_max_length,
    check_pairing,
    default_data,
    detect_task,
    get_task,
    register_task,
    task_names,
    unregister_task,
)

__all__ = [
    "CausalJob",
    "CausalLMTask",
    "ClassificationJob",
    "ClassificationTask",
    "Job",
    "Task",
    "check_max_length",
    "check_pairing",
    "default_data",
    "detect_task",
    "get_task",
    "register_task",
    "run_causal",
    "task_names",
    "unregister_task",
]

# the built-in tasks: one line per task (the first registered with fallback=True takes data
# and models no task claims)
register_task(CLASSIFICATION)
register_task(CAUSAL_LM)
