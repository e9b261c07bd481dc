"""The checks of an adapter config's values, and the TT shape specs it accepts.

:class:`~ttdecomp.adapters.config.TTLoRAConfig` and
:class:`~ttdecomp.adapters.config.LoRETTAConfig` check every value when they are built, with
the helpers here: declared types only (a bool is not a number, a string not a bool), positive
integer ranks and sizes, and ``tt_shape`` specs (a flat list of factors or a pair
``(row_shape, col_shape)``), which :func:`resolve_shape_spec` later fits to a layer. Values are
stored JSON-ready (:func:`jsonable`), so a config survives a round trip through its file.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidInputError, RankError, ShapeError
from ..shapes import check_factor_count, from_tt_shape

__all__ = ["resolve_shape_spec"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (a bool is not).

    Examples
    --------
    >>> is_int(3), is_int(True), is_int(3.0)
    (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value: Any, name: str, fix: str) -> None:
    """Refuse ``value`` unless it is a positive int (:class:`~ttdecomp.errors.RankError`,
    ending with ``fix``).

    Examples
    --------
    >>> check_positive_int(4, "tt_rank", "Use 4.")
    >>> check_positive_int(0, "tt_rank", "Use 4.")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.RankError: tt_rank must be a positive int; got 0. Use 4.
    """
    if not is_int(value) or value < 1:
        raise RankError(f"{name} must be a positive int; got {value!r}. {fix}")


def check_type(value: Any, name: str, kind: str) -> None:
    """``kind``: ``"bool"``, ``"str"``, ``"str or None"`` or ``"real"`` (a bool is not a number).

    Examples
    --------
    >>> check_type(8.0, "alpha", "real")
    >>> check_type("no", "train_norms", "bool")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: train_norms must be a bool; got 'no' (str). ...
    """
    ok = {
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "str or None": value is None or isinstance(value, str),
        "real": isinstance(value, numbers.Real) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise InvalidInputError(
            f"{name} must be a {kind}; got {value!r} ({type(value).__name__}). Configs take "
            "values of their declared type only (a string such as 'no' would read as true)."
        )


def is_pair(spec: Any) -> bool:
    """Whether a shape spec is a pair ``(row_shape, col_shape)`` (not a flat list).

    Examples
    --------
    >>> is_pair([[4, 4], [8, 8]]), is_pair([64, 4, 3, 3, 4, 64])
    (True, False)
    """
    return (
        isinstance(spec, Sequence)
        and len(spec) == 2
        and all(isinstance(s, Sequence) and not isinstance(s, str) for s in spec)
    )


def check_shape_spec(spec: Any, name: str) -> None:
    """A shape spec is a flat list of positive ints or a pair ``(row_shape, col_shape)``.

    Examples
    --------
    >>> check_shape_spec([64, 4, 3, 3, 4, 64], "tt_shape")
    >>> check_shape_spec([[4, 4], [8]], "tt_shape")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ttdecomp.errors.ShapeError: tt_shape: row_shape [4, 4] and col_shape [8] must be ...
    """
    if is_pair(spec):
        rows, cols = spec
        check_factor_count(max(len(rows), len(cols)), name)
        if len(rows) != len(cols) or not rows:
            raise ShapeError(
                f"{name}: row_shape {list(rows)} and col_shape {list(cols)} must be non-empty "
                "and of equal length (one (m_k, n_k) per core)."
            )
        for s in (*rows, *cols):
            check_positive_int(s, f"{name} entry", "Use positive integer mode sizes.")
        return
    if isinstance(spec, str) or not isinstance(spec, Sequence) or len(spec) < 2:
        raise ShapeError(
            f"{name} must be a flat list of positive ints (input factors then output factors, "
            f"e.g. [64, 4, 3, 3, 4, 64]) or a pair (row_shape, col_shape); got {spec!r}."
        )
    check_factor_count(len(spec), name)
    for s in spec:
        check_positive_int(s, f"{name} entry", "Use positive integer factors.")


def resolve_shape_spec(spec: Any, out_features: int, in_features: int) -> tuple:
    """Turn a validated shape spec into ``(row_shape, col_shape)`` for an (out × in) matrix.

    Parameters
    ----------
    spec : sequence
        A flat list (input factors, then output factors) or a pair ``(row_shape, col_shape)``.
    out_features, in_features : int
        The matrix the shape must cover.

    Returns
    -------
    tuple
        ``(row_shape, col_shape)``, two tuples of length d.

    Examples
    --------
    >>> resolve_shape_spec([64, 4, 3, 3, 4, 64], 768, 768)
    ((1, 1, 1, 3, 4, 64), (64, 4, 3, 1, 1, 1))
    """
    if is_pair(spec):
        rows, cols = tuple(int(s) for s in spec[0]), tuple(int(s) for s in spec[1])
        if math.prod(rows) != out_features or math.prod(cols) != in_features:
            raise ShapeError(
                f"tt_shape rows {list(rows)} (product {math.prod(rows)}) and cols {list(cols)} "
                f"(product {math.prod(cols)}) do not cover a {out_features} x {in_features} "
                "(out x in) weight; the products must equal out_features and in_features."
            )
        return rows, cols
    return from_tt_shape(spec, out_features, in_features)


def jsonable(value: Any) -> Any:
    """Tuples to lists, recursively, so a config survives a JSON round trip unchanged.

    Examples
    --------
    >>> jsonable({"q": ((4, 4), (8, 8))})
    {'q': [[4, 4], [8, 8]]}
    """
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return int(value) if is_int(value) else value
