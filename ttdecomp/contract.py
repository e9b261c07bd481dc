"""TT-matrix × dense contraction: :func:`apply`, :func:`linear` and their cost model.

The code lives in :mod:`ttdecomp.cost_model` while it is split into the cost model, the
executor and this module (issue 10); this module keeps the public names importable.
"""

from __future__ import annotations

from .cost_model import (
    ORDERS,
    ContractionCost,
    ContractionPlan,
    MachineModel,
    apply,
    contraction_plan,
    estimate_costs,
    linear,
    ttm_matmul,
)

__all__ = [
    "ORDERS",
    "ContractionCost",
    "ContractionPlan",
    "MachineModel",
    "apply",
    "contraction_plan",
    "estimate_costs",
    "linear",
    "ttm_matmul",
]
