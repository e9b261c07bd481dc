"""Argument checks shared by :func:`~ttdecomp.plan` and :func:`~ttdecomp.plan_model`: every one
raises before any work, saying what was given and what to pass instead."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError, ShapeError

__all__ = ["PLAN_LAYOUTS", "check_budget", "check_opt_int", "check_plan_layout", "check_shape"]

#: What the planner accepts: ``"auto"`` compares the split and the interleaved candidates.
PLAN_LAYOUTS = ("auto", "split", "interleaved")


def check_plan_layout(layout: Any, with_weight: bool) -> str:
    """``layout``, with ``None`` meaning ``"auto"`` given a weight and ``"split"`` without."""
    if layout is None:
        return "auto" if with_weight else "split"
    if layout not in PLAN_LAYOUTS:
        raise InvalidInputError(
            f"layout must be one of {PLAN_LAYOUTS} or None, got {layout!r}: 'auto' compares "
            "the split and interleaved layouts and their core counts by the error reached "
            "(needs a weight), 'split' for TT-LoRA (input factors first), 'interleaved' for "
            "the classic TT-matrix."
        )
    if layout == "auto" and not with_weight:
        raise InvalidInputError(
            "layout='auto' compares layouts by the error they reach and needs the weight; pass "
            "weight=W (use_weights=True), or layout='split' / 'interleaved' to plan by shapes."
        )
    return layout


def check_shape(shape: Any) -> tuple[int, int]:
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or len(shape) != 2
        or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape)
    ):
        raise ShapeError(
            f"shape must be (out_features, in_features), two integers, got {shape!r}; e.g. "
            "plan((4096, 4096), 50_000), or pass weight=W."
        )
    m, n = int(shape[0]), int(shape[1])
    if m < 2 or n < 2:
        raise ShapeError(
            f"shape {(m, n)} has a dimension below 2; a TT-matrix needs out_features and "
            "in_features of at least 2 each."
        )
    return m, n


def check_budget(budget: Any, dense: int, what: str = "the weight") -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise InvalidInputError(f"budget must be an int or a float fraction, got {budget!r}.")
    if isinstance(budget, numbers.Integral):
        if budget < 1:
            raise InvalidInputError(
                f"budget must be a positive number of parameters, got {budget}; e.g. "
                "budget=50_000, or budget=0.01 for 1% of the dense size."
            )
        return int(budget)
    if isinstance(budget, numbers.Real):
        frac = float(budget)
        if not math.isfinite(frac) or frac <= 0 or frac >= 1:
            raise InvalidInputError(
                f"a float budget is a fraction of the dense size and must lie in (0, 1), got "
                f"{budget!r}; pass an int for a parameter count (e.g. budget=50_000)."
            )
        return max(1, math.floor(frac * dense))
    raise InvalidInputError(
        f"budget must be an int (parameters) or a float in (0, 1) (fraction of {what}'s "
        f"dense size), got {type(budget).__name__}."
    )


def check_opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer or None, got {value!r}.")
    return int(value)
