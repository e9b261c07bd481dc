"""ttdecomp: tensor trains for compressing and fine-tuning neural networks.

The core works on numpy, torch and any array-API library, dispatching on the input's
type (no global state, no torch import). Adapters for Hugging Face models live in
:mod:`ttdecomp.adapters` (needs torch).
"""

from __future__ import annotations

from . import counts, errors, shapes
from ._validation import attainable_ranks
from .contract import ContractionCost, ContractionPlan, contraction_plan, linear, ttm_matmul
from .decompose import truncate, tt_svd
from .interop import from_tensorly, to_tensorly
from .random import random_tt, random_ttm
from .rounding import orthogonalize, round
from .shapes import factorize, tensorize
from .tensor_train import TensorTrain
from .tt_matrix import TTMatrix

__version__ = "0.1.0"

__all__ = [
    "ContractionCost",
    "ContractionPlan",
    "TTMatrix",
    "TensorTrain",
    "__version__",
    "attainable_ranks",
    "contraction_plan",
    "counts",
    "errors",
    "factorize",
    "from_tensorly",
    "linear",
    "orthogonalize",
    "random_tt",
    "random_ttm",
    "round",
    "shapes",
    "tensorize",
    "to_tensorly",
    "truncate",
    "tt_svd",
    "ttm_matmul",
]
