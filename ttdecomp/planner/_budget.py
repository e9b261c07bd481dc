"""``parse_budget``: a parameter budget as people write it (``"2k"``, ``"50%"``, ``0.25``)."""

from __future__ import annotations

import math
import numbers
import re

from ..errors import InvalidInputError

__all__ = ["parse_budget"]

_SUFFIX = {"k": 10**3, "m": 10**6, "g": 10**9}


def parse_budget(budget: str | int | float) -> int | float:
    """A budget: a parameter count (an int) or a fraction of the dense size (a float).

    Strings are read as the command line reads ``--budget``: ``"50000"``, ``"50_000"`` and
    ``"50,000"`` are counts; ``"50k"``, ``"1.5M"``, ``"2G"`` are counts in thousands,
    millions and billions; ``"50%"`` and ``"0.25"`` are fractions. Numbers are returned as
    they are (an int counts parameters, a float is a fraction). The value itself (positive,
    a fraction at most 1) is checked by the planner.

    Raises
    ------
    InvalidInputError
        Text that is not a number, a boolean, or a value that is not finite.

    Examples
    --------
    >>> parse_budget("50000"), parse_budget("50_000"), parse_budget("1.5M"), parse_budget("2k")
    (50000, 50000, 1500000, 2000)
    >>> parse_budget("1%"), parse_budget("0.25"), parse_budget(300)
    (0.01, 0.25, 300)
    """
    if isinstance(budget, bool) or not isinstance(budget, (str, numbers.Real)):
        raise InvalidInputError(
            f"budget must be a parameter count, a fraction or a string such as '50%' or '2k'; "
            f"got {budget!r} of type {type(budget).__name__}."
        )
    if isinstance(budget, numbers.Integral):
        return int(budget)
    if isinstance(budget, numbers.Real):
        value = float(budget)
        if not math.isfinite(value):
            raise InvalidInputError(f"budget {budget!r} is not finite; give e.g. 0.5 or 50000.")
        return value
    raw = budget.strip().replace("_", "").replace(",", "")
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100
        elif raw[-1:].lower() in _SUFFIX:
            value = float(raw[:-1]) * _SUFFIX[raw[-1].lower()]
            if math.isfinite(value):
                return round(value)
        elif re.fullmatch(r"[+-]?\d+", raw):  # a count, also when negative (refused as one)
            return int(raw)
        else:
            value = float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise InvalidInputError(
            f"budget {budget!r} is not a finite number; use e.g. 50000, 50k, 2M, 1% or 0.01."
        )
    return value
