"""ttdecomp: tensor trains for compressing and fine-tuning neural networks.

The core works on numpy, torch and any array-API library, dispatching on the input's
type (no global state, no torch import). Adapters for Hugging Face models live in
:mod:`ttdecomp.adapters` (needs torch).
"""

from __future__ import annotations

from importlib import metadata as _metadata

from . import counts, errors, shapes
from ._validation import attainable_ranks
from .contract import (
    ContractionCost,
    ContractionPlan,
    MachineModel,
    contraction_plan,
    estimate_costs,
    linear,
)
from .counts import (
    activation_memory,
    apply_flops,
    lora_n_params,
    max_ranks,
    tt_matrix_n_params,
    tt_n_params,
)
from .decompose import truncate, tt_svd
from .interop import from_tensorly, to_tensorly
from .planner import ModelPlan, Plan, parse_budget, plan, plan_model
from .random import random_tt, random_ttm
from .rounding import orthogonalize, round
from .shapes import factorize, from_tt_shape, tensorize, to_tt_shape
from .tensor_train import TensorTrain
from .tt_matrix import TTMatrix, ttm_matmul

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = _metadata.version("ttdecomp")
except _metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
del _metadata

__all__ = [
    "ContractionCost",
    "ContractionPlan",
    "MachineModel",
    "ModelPlan",
    "Plan",
    "TTMatrix",
    "TensorTrain",
    "__version__",
    "activation_memory",
    "apply_flops",
    "attainable_ranks",
    "contraction_plan",
    "counts",
    "errors",
    "estimate_costs",
    "factorize",
    "from_tensorly",
    "from_tt_shape",
    "linear",
    "lora_n_params",
    "max_ranks",
    "orthogonalize",
    "parse_budget",
    "plan",
    "plan_model",
    "random_tt",
    "random_ttm",
    "round",
    "shapes",
    "tensorize",
    "to_tensorly",
    "to_tt_shape",
    "truncate",
    "tt_matrix_n_params",
    "tt_n_params",
    "tt_svd",
    "ttm_matmul",
]
