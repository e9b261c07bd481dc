"""Parameter, FLOP and memory calculators for tensor trains, TT-matrices, LoRA and dense.

Everything here is pure integer arithmetic on shapes and ranks; no array is touched.
Conventions:

* ``n_params`` counts stored numbers; ``full_size`` would be the dense entries.
* A TT over mode sizes ``s`` with ranks ``r`` (``r_0 = r_d = 1``) stores
  ``Σ_k r_{k-1} · s_k · r_k`` numbers; a TT-matrix is the TT over ``s_k = m_k · n_k``.
* Ranks are an int (the same on every interior bond), ``d + 1`` values with boundary
  ones, or the ``d − 1`` interior values. They are counted as given (not clipped), so
  the published TT-LoRA counts come out exactly; :func:`max_ranks` gives the attainable
  maximum when you want to clip.
* FLOPs count a multiply-add as two. The FLOPs and activation memory of ``apply()`` come
  from the contraction cost model, :func:`ttdecomp.cost_model.estimate_costs`, so the
  calculators and the contraction code can never disagree.

Examples
--------
TT-LoRA on RoBERTa-base (q and v of 12 layers, shape [64, 4, 3, 3, 4, 64], rank 4):

>>> 2 * 12 * tt_n_params([64, 4, 3, 3, 4, 64], 4)
17664
>>> 2 * 12 * lora_n_params(768, 768, 8)
294912
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

from ._validation import attainable_ranks, normalize_ranks
from .cost_model import estimate_costs, matrix_n_params
from .errors import InvalidInputError, RankError, ShapeError
from .shapes import to_tt_shape

__all__ = [
    "activation_memory",
    "apply_flops",
    "compression_ratio",
    "contraction_costs",
    "dense_flops",
    "dense_n_params",
    "lora_flops",
    "lora_n_params",
    "max_ranks",
    "tt_matrix_n_params",
    "tt_n_params",
]


def _pos_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _modes(shape: Any, name: str = "shape") -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or not shape:
        raise ShapeError(f"{name} must be a non-empty sequence of mode sizes, got {shape!r}.")
    return tuple(_pos_int(s, f"{name} entry") for s in shape)


def _ranks(ranks: Any, d: int) -> tuple[int, ...]:
    if ranks is None:
        raise RankError("ranks are required: an int, d + 1 values or d − 1 interior values.")
    out = normalize_ranks(ranks, d)
    if out is None:  # unreachable: normalize_ranks returns None only for None
        raise RankError("ranks are required.")
    return out


def tt_n_params(shape: Sequence[int], ranks: int | Sequence[int]) -> int:
    """Stored numbers of a tensor train: ``Σ_k r_{k-1} · s_k · r_k``.

    Parameters
    ----------
    shape : sequence of int
        Mode sizes ``(s_1, ..., s_d)``; for a TT-matrix, each core's ``m_k · n_k`` (the
        TT-LoRA paper's flat ``tt_shape``).
    ranks : int or sequence of int
        An int for ``[1, r, ..., r, 1]``, ``d + 1`` ranks with boundary ones, or ``d − 1``
        interior ranks. Counted as given (see :func:`max_ranks` to clip).

    Returns
    -------
    int

    Examples
    --------
    The HyperBand search shapes of TT-LoRA for a 768 x 768 weight:

    >>> [tt_n_params([64, 16, 9, 64], r) for r in (1, 2, 4, 8, 10, 12, 16)]
    [153, 356, 912, 2624, 3780, 5136, 8448]
    >>> tt_n_params([4, 5, 6], [1, 2, 3, 1])
    56
    """
    modes = _modes(shape)
    r = _ranks(ranks, len(modes))
    return sum(r[k] * s * r[k + 1] for k, s in enumerate(modes))


def tt_matrix_n_params(
    row_shape: Sequence[int], col_shape: Sequence[int], ranks: int | Sequence[int]
) -> int:
    """Stored numbers of a TT-matrix: ``Σ_k r_{k-1} · m_k · n_k · r_k``.

    Examples
    --------
    >>> tt_matrix_n_params((1, 1, 1, 3, 4, 64), (64, 4, 3, 1, 1, 1), 4)
    736
    """
    rs, cs = _pair(row_shape, col_shape)
    return matrix_n_params(rs, cs, _ranks(ranks, len(rs)))


def max_ranks(
    row_shape: Sequence[int],
    col_shape: Sequence[int] | None = None,
    max_rank: int | None = None,
) -> tuple[int, ...]:
    """Attainable maximum TT ranks, ``min(∏ left modes, ∏ right modes)``, optionally capped.

    Parameters
    ----------
    row_shape : sequence of int
        Mode sizes of a tensor train, or the row factors of a TT-matrix.
    col_shape : sequence of int, optional
        The column factors of a TT-matrix (then the modes are ``m_k · n_k``).
    max_rank : int, optional
        A cap applied to every interior bond.

    Returns
    -------
    tuple of int
        ``d + 1`` ranks with boundary ones.

    Examples
    --------
    >>> max_ranks((1, 1, 1, 3, 4, 64), (64, 4, 3, 1, 1, 1))
    (1, 64, 256, 768, 256, 64, 1)
    >>> max_ranks((4, 4, 4, 4), max_rank=8)
    (1, 4, 8, 4, 1)
    """
    modes = _modes(row_shape) if col_shape is None else to_tt_shape(row_shape, col_shape)
    top = attainable_ranks(modes)
    if max_rank is None:
        return top
    cap = _pos_int(max_rank, "max_rank")
    return tuple(min(r, cap) for r in top)


def lora_n_params(out_features: int, in_features: int, rank: int) -> int:
    """Stored numbers of a LoRA pair ``B (M × r) @ A (r × N)``: ``r · (M + N)``.

    Examples
    --------
    >>> lora_n_params(4096, 4096, 8) + lora_n_params(1024, 4096, 8)
    106496
    """
    m, n, r = (
        _pos_int(v, k)
        for v, k in ((out_features, "out_features"), (in_features, "in_features"), (rank, "rank"))
    )
    return r * (m + n)


def dense_n_params(out_features: int, in_features: int, *, bias: bool = False) -> int:
    """Stored numbers of a dense ``(M, N)`` weight, plus ``M`` with a bias.

    Examples
    --------
    >>> dense_n_params(768, 768), dense_n_params(768, 768, bias=True)
    (589824, 590592)
    """
    m = _pos_int(out_features, "out_features")
    n = _pos_int(in_features, "in_features")
    return m * n + (m if bias else 0)


def compression_ratio(n_params: int, reference: int) -> float:
    """How many times fewer numbers than ``reference``: ``reference / n_params``.

    Use :func:`dense_n_params` or :func:`lora_n_params` for the reference.

    Examples
    --------
    >>> round(compression_ratio(736, dense_n_params(768, 768)), 1)
    801.4
    >>> round(compression_ratio(736, lora_n_params(768, 768, 8)), 2)
    16.7
    """
    return _pos_int(reference, "reference") / _pos_int(n_params, "n_params")


def contraction_costs(
    row_shape: Sequence[int], col_shape: Sequence[int], ranks: int | Sequence[int], batch: int = 1
) -> list[Any]:
    """Every contraction order's cost for ``apply()`` on ``batch`` rows.

    A thin wrapper over :func:`ttdecomp.cost_model.estimate_costs` that also accepts an int
    or ``d − 1`` interior ranks.

    Returns
    -------
    list of ttdecomp.cost_model.ContractionCost

    Examples
    --------
    >>> costs = contraction_costs((1, 1, 4, 4), (4, 4, 1, 1), 2, batch=3)
    >>> sorted({c.order for c in costs})
    ['dense', 'ltr', 'merged', 'rtl']
    """
    rs, cs = _pair(row_shape, col_shape)
    return estimate_costs(rs, cs, _ranks(ranks, len(rs)), _pos_int(batch, "batch"))


def _pair(row_shape: Any, col_shape: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    to_tt_shape(row_shape, col_shape)  # validates both
    return tuple(int(m) for m in row_shape), tuple(int(n) for n in col_shape)


def _pick(costs: list[Any], order: str) -> Any:
    if order == "best":
        return min(costs, key=lambda c: (c.flops, c.memory))
    chosen = [c for c in costs if c.order == order]
    if not chosen:
        orders = sorted({c.order for c in costs})
        raise InvalidInputError(f"order must be 'best' or one of {orders}, got {order!r}.")
    return min(chosen, key=lambda c: (c.flops, c.memory))


def apply_flops(
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    ranks: int | Sequence[int],
    batch: int = 1,
    order: str = "best",
) -> int:
    """FLOPs of ``TTMatrix.apply`` on ``batch`` rows (multiply-add = 2, setup included).

    Parameters
    ----------
    row_shape, col_shape : sequence of int
        Per-core factors of the TT-matrix.
    ranks : int or sequence of int
        Its ranks.
    batch : int
        Rows of ``x`` (tokens × sequences).
    order : {"best", "ltr", "rtl", "merged", "dense"}
        A contraction order (``"merged"``: the best split), or ``"best"`` for the cheapest.

    Examples
    --------
    A split TT-matrix applied via its merged blocks costs what LoRA of the same rank does,
    plus merging the cores once:

    >>> rs, cs = (1, 1, 4, 4), (4, 4, 1, 1)
    >>> c = [c for c in contraction_costs(rs, cs, 2, batch=10) if c.split == 2][0]
    >>> c.flops - c.setup_flops == lora_flops(16, 16, 2, batch=10)
    True
    """
    return int(_pick(contraction_costs(row_shape, col_shape, ranks, batch), order).flops)


def activation_memory(
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    ranks: int | Sequence[int],
    batch: int = 1,
    order: str = "best",
) -> dict[str, int]:
    """Memory of ``apply()`` on ``batch`` rows, in elements (multiply by the dtype's size).

    Returns
    -------
    dict
        ``{"peak": largest intermediate, "saved": elements kept for backward}`` for the
        given order (``"best"``: the cheapest in FLOPs).

    Examples
    --------
    >>> activation_memory((1, 1, 4, 4), (4, 4, 1, 1), 2, batch=10)["saved"] >= 10 * 16
    True
    """
    cost = _pick(contraction_costs(row_shape, col_shape, ranks, batch), order)
    return {"peak": int(cost.memory), "saved": int(cost.saved)}


def dense_flops(out_features: int, in_features: int, batch: int = 1) -> int:
    """FLOPs of ``x @ W.T`` for a dense ``(M, N)`` weight: ``2 · batch · M · N``.

    Examples
    --------
    >>> dense_flops(768, 768, batch=2)
    2359296
    """
    return 2 * _pos_int(batch, "batch") * dense_n_params(out_features, in_features)


def lora_flops(out_features: int, in_features: int, rank: int, batch: int = 1) -> int:
    """FLOPs of ``(x @ A.T) @ B.T`` for LoRA of rank ``r``: ``2 · batch · r · (M + N)``.

    Examples
    --------
    >>> lora_flops(768, 768, 8)
    24576
    """
    return 2 * _pos_int(batch, "batch") * lora_n_params(out_features, in_features, rank)
