"""Integer and matrix-shape factorisation for tensor trains.

:func:`factorize` splits an integer into balanced factors; :func:`tensorize` turns a
weight matrix ``(out_features, in_features)`` into the per-core factors ``(row_shape,
col_shape)`` of a :class:`~ttdecomp.TTMatrix`, in one of two layouts:

* ``"split"`` (TT-LoRA): the first cores carry the input factors (``m_k = 1``), the last
  cores the output factors (``n_k = 1``). The large factors sit at the two ends, where the
  rank is 1 and a large mode costs least.
* ``"interleaved"`` (classic TT-matrix): every core pairs a row and a column factor.

Dimensions with a large prime factor (e.g. 4099) cannot be split usefully; they raise a
:class:`~ttdecomp.errors.ShapeError` that names the nearest size that can, and
``pad=True`` pads to it. Nothing here ever returns a one-factor shape silently.

:func:`to_tt_shape` and :func:`from_tt_shape` convert between ``(row_shape, col_shape)``
and the flat ``tt_shape`` list of the TT-LoRA paper (input factors, then output factors).

Examples
--------
>>> from ttdecomp import shapes
>>> shapes.factorize(384, 3)
(8, 8, 6)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import InvalidInputError, ShapeError
from .integers import SMOOTH, balanced_factors, check_int, next_smooth, prime_factors

__all__ = [
    "LAYOUTS",
    "MAX_FACTORS",
    "MAX_PRIME",
    "check_factor_count",
    "factorize",
    "from_tt_shape",
    "next_smooth",
    "prime_factors",
    "split_shapes",
    "tensorize",
    "to_tt_shape",
]

LAYOUTS = ("split", "interleaved")
"""The TT-matrix layouts :func:`tensorize` produces."""

MAX_PRIME = 64
"""Largest prime factor a dimension may have before :func:`factorize` refuses it."""

MAX_FACTORS = 64
"""Most factors a flat ``tt_shape`` (or a ``(row_shape, col_shape)`` pair) may hold.

A flat ``tt_shape`` of 64 factors of at least 2 describes a layer of at least 2⁶⁴ weights, so
no real layer needs more; the bound stops a malformed or hostile config (tens of thousands of
factors) before any work is done on it.
"""

_END_FACTOR = 16  # target size of the outermost factor of each side in the split layout
_SMOOTH = SMOOTH  # padded sizes have no prime factor above this


def _default_n_factors(n: int, base: float) -> int:
    return max(1, round(math.log(n) / math.log(base)))


def _prime_error(n: int, name: str, n_factors: int, max_prime: int, large: int | None) -> str:
    padded = next_smooth(n, min_factors=n_factors)
    if large is not None:
        why = (
            f"{name} = {n} has the prime factor {large} (> max_prime = {max_prime}), so it "
            "has no useful factorisation"
        )
    else:
        why = (
            f"{name} = {n} has only {len(prime_factors(n))} prime factor(s) "
            f"{list(prime_factors(n))}, so it cannot be split into {n_factors} factors >= 2"
        )
    shown = max(n_factors, min(len(prime_factors(padded)), _default_n_factors(padded, 4)))
    if shown <= _SHOWN_SPLIT:
        split = " x ".join(map(str, balanced_factors(padded, shown)))
    else:  # a balanced split into many factors is a large search: the prime powers are cheap
        ps = prime_factors(padded)
        split = " · ".join(
            f"{p}^{ps.count(p)}" if ps.count(p) > 1 else str(p) for p in sorted(set(ps))
        )
    return (
        f"{why}. Pad it to {padded} = {split} "
        f"(the nearest size that can be), e.g. pass pad=True to factorize, or ask for fewer "
        "factors."
    )


_SHOWN_SPLIT = 8  # most factors the error message splits a padded size into


def factorize(
    n: int,
    n_factors: int | None = None,
    *,
    pad: bool = False,
    max_prime: int = MAX_PRIME,
) -> tuple[int, ...]:
    """Balanced factors of an integer, each ``≥ 2``, in descending order.

    Parameters
    ----------
    n : int
        The integer to split, ``≥ 2``.
    n_factors : int, optional
        How many factors. Default: the count that makes the factors closest to 4
        (``round(log₄ n)``), capped by the number of prime factors of ``n``.
    pad : bool
        If ``n`` cannot be split (a prime factor above ``max_prime``, or fewer prime
        factors than ``n_factors``), split the nearest larger size that can be instead
        (see :func:`next_smooth`); ``math.prod(result)`` is then that padded size.
    max_prime : int
        Largest prime factor accepted without padding (default 64: 11008 = 2⁸·43 is fine,
        4099 is not).

    Returns
    -------
    tuple of int
        Factors whose product is ``n`` (or the padded size), as equal as possible (minimum
        spread of their logarithms), largest first. Deterministic.

    Raises
    ------
    ShapeError
        ``n < 2``; a prime factor above ``max_prime``; more factors asked for than ``n``
        has prime factors. The message names the nearest padded size.

    Examples
    --------
    >>> factorize(4096)
    (4, 4, 4, 4, 4, 4)
    >>> factorize(768, 3)
    (12, 8, 8)
    >>> factorize(4099)
    Traceback (most recent call last):
    ...
    ttdecomp.errors.ShapeError: n = 4099 has the prime factor 4099 (> max_prime = 64), ...
    >>> factorize(4099, 3, pad=True)
    (21, 14, 14)
    """
    n = check_int(n, "n", minimum=2, hint=" A dimension of 1 has no factors to split.")
    max_prime = check_int(max_prime, "max_prime", minimum=2)
    if n_factors is not None:
        n_factors = check_int(n_factors, "n_factors", minimum=1)
    ps = prime_factors(n)
    large = ps[-1] if ps[-1] > max_prime else None
    k = n_factors if n_factors is not None else min(len(ps), _default_n_factors(n, 4))
    if large is not None or k > len(ps):
        if not pad:
            raise ShapeError(_prime_error(n, "n", k, max_prime, large))
        n = next_smooth(n, min_factors=k)
        if n_factors is None:
            k = min(len(prime_factors(n)), _default_n_factors(n, 4))
    return balanced_factors(n, k)


def end_heavy_factors(n: int, k: int) -> tuple[int, ...]:
    """``k`` factors of ``n`` with the first close to 16 and the rest balanced, descending."""
    if k == 1:
        return (n,)
    ps = prime_factors(n)
    best = None
    for outer in range(2, n + 1):
        if n % outer or len(prime_factors(n // outer)) < k - 1:
            continue
        score = (abs(math.log(outer / _END_FACTOR)), -outer)
        if best is None or score < best[0]:
            best = (score, outer)
        if outer > _END_FACTOR * 4 and outer > ps[-1]:
            break
    if best is None:
        return balanced_factors(n, k)
    return tuple(sorted((best[1], *balanced_factors(n // best[1], k - 1)), reverse=True))


def _side_count(n: int) -> int:
    """Default number of factors for one side of the split layout."""
    return max(1, min(len(prime_factors(n)), _default_n_factors(n, 4) - 1))


def valley_order(factors: Sequence[int]) -> tuple[int, ...]:
    """Order factors largest at both ends, smallest in the middle."""
    ordered = sorted(factors, reverse=True)
    left, right = [], []
    for i, f in enumerate(ordered):
        (left if i % 2 == 0 else right).append(f)
    return tuple(left + right[::-1])


def _check_dims(
    out_features: Any, in_features: Any, pad: bool, max_prime: int, counts: tuple[int, int]
) -> tuple[int, int]:
    dims = []
    for name, value, k in (
        ("out_features", out_features, counts[0]),
        ("in_features", in_features, counts[1]),
    ):
        value = check_int(value, name, minimum=2, hint=" Every dimension must be at least 2.")
        ps = prime_factors(value)
        large = ps[-1] if ps[-1] > max_prime else None
        if large is not None or k > len(ps):
            if not pad:
                raise ShapeError(_prime_error(value, name, k, max_prime, large))
            value = next_smooth(value, min_factors=k)
        dims.append(value)
    return dims[0], dims[1]


def _split_counts(M: int, N: int, n_cores: int | None) -> tuple[int, int]:
    """(output-side count, input-side count) of the split layout."""
    if n_cores is None:
        return _side_count(M), _side_count(N)
    share = math.log(N) / (math.log(M) + math.log(N))
    k_in = min(max(1, round(n_cores * share)), n_cores - 1)
    return n_cores - k_in, k_in


def tensorize(
    out_features: int,
    in_features: int,
    n_cores: int | None = None,
    layout: str = "split",
    *,
    pad: bool = False,
    max_prime: int = MAX_PRIME,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-core factors ``(row_shape, col_shape)`` of a TT-matrix for an ``(out, in)`` weight.

    Parameters
    ----------
    out_features, in_features : int
        The weight's shape ``(M, N)`` (PyTorch's ``nn.Linear`` convention), each ``≥ 2``.
    n_cores : int, optional
        Number of cores ``d``. Default: split layout, about ``log₄(dim) − 1`` cores per side
        (a factor near 16 at each end, factors near 4 inside, as in the TT-LoRA paper);
        interleaved, ``round(log₈ √(MN))`` cores (factors near 8).
    layout : {"split", "interleaved"}
        ``"split"``: the first cores hold the input factors (``m_k = 1``) in descending
        order, the last cores the output factors (``n_k = 1``) in ascending order, so the
        large factors sit at the two ends where the rank is 1. ``"interleaved"``: every core
        has ``m_k, n_k ≥ 2`` where the prime factors allow it (else some are 1), largest
        factors at the ends.
    pad : bool
        Pad a dimension that cannot be split (a prime factor above ``max_prime``, too few
        prime factors for ``n_cores``) to the nearest size that can; the products of
        ``row_shape`` / ``col_shape`` are then the padded sizes.
    max_prime : int
        Largest prime factor accepted without padding.

    Returns
    -------
    row_shape, col_shape : tuple of int
        Equal lengths ``d``; ``prod(row_shape) == out_features`` and ``prod(col_shape) ==
        in_features`` (or the padded sizes).

    Raises
    ------
    ShapeError
        A dimension below 2, a large prime factor (the message suggests the padded size),
        ``n_cores`` larger than the number of prime factors allows, or below 2.
    InvalidInputError
        An unknown layout or a non-integer argument.

    Examples
    --------
    >>> tensorize(768, 768)
    ((1, 1, 1, 1, 3, 4, 4, 16), (16, 4, 4, 3, 1, 1, 1, 1))
    >>> tensorize(1024, 4096, layout="split")
    ((1, 1, 1, 1, 1, 4, 4, 4, 16), (16, 4, 4, 4, 4, 1, 1, 1, 1))
    >>> tensorize(4096, 4096, layout="interleaved")
    ((8, 8, 8, 8), (8, 8, 8, 8))
    >>> tensorize(4099, 4096)
    Traceback (most recent call last):
    ...
    ttdecomp.errors.ShapeError: out_features = 4099 has the prime factor 4099 ...
    """
    check_layout(layout)
    max_prime = check_int(max_prime, "max_prime", minimum=2)
    if n_cores is not None:
        n_cores = check_int(
            n_cores, "n_cores", minimum=2, hint=" A one-core TT-matrix is the dense matrix."
        )
    if layout == "split":
        return _tensorize_split(out_features, in_features, n_cores, pad, max_prime)
    return _tensorize_interleaved(out_features, in_features, n_cores, pad, max_prime)


def _tensorize_split(
    out_features: Any, in_features: Any, n_cores: int | None, pad: bool, max_prime: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    M, N = _check_dims(out_features, in_features, pad, max_prime, (1, 1))
    if n_cores is not None:
        room = len(prime_factors(M)) + len(prime_factors(N))
        if n_cores > room:
            if not pad:
                raise ShapeError(
                    f"n_cores = {n_cores} but {out_features} x {in_features} has only {room} "
                    f"prime factors in all ({list(prime_factors(M))} and "
                    f"{list(prime_factors(N))}); a split TT-matrix has at most one core per "
                    f"prime factor. Use n_cores <= {room}, or pad=True to pad the dimensions."
                )
            k_out, k_in = _split_counts(M, N, n_cores)
            M, N = _check_dims(M, N, True, max_prime, (k_out, k_in))
    k_out, k_in = _split_counts(M, N, n_cores)
    # move cores between sides when one side lacks prime factors
    while k_in > len(prime_factors(N)):
        k_in, k_out = k_in - 1, k_out + 1
    while k_out > len(prime_factors(M)):
        k_in, k_out = k_in + 1, k_out - 1
    return split_shapes(end_heavy_factors(M, k_out), end_heavy_factors(N, k_in))


def split_shapes(
    out_factors: Sequence[int], in_factors: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Arrange output and input factors in the split layout.

    Input factors go first, largest at the left end; output factors last, largest at the
    right end (the order of the given factors is otherwise ignored).

    Examples
    --------
    >>> split_shapes((4, 16), (64, 3, 4))
    ((1, 1, 1, 4, 16), (64, 4, 3, 1, 1))
    """
    ins = sorted((int(f) for f in in_factors), reverse=True)
    outs = sorted(int(f) for f in out_factors)
    row = (1,) * len(ins) + tuple(outs)
    col = tuple(ins) + (1,) * len(outs)
    return row, col


def _tensorize_interleaved(
    out_features: Any, in_features: Any, n_cores: int | None, pad: bool, max_prime: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    M, N = _check_dims(out_features, in_features, pad, max_prime, (1, 1))
    room = max(len(prime_factors(M)), len(prime_factors(N)))
    if n_cores is None:
        d = _default_n_factors(math.isqrt(M * N), 8)
        d = max(2, min(d, len(prime_factors(M)), len(prime_factors(N))))
        if room < 2:
            if not pad:
                raise ShapeError(
                    f"{M} x {N} is too small for a TT-matrix of 2 or more cores (both are "
                    "prime); pass pad=True to pad them, or keep the matrix dense."
                )
            M, N = _check_dims(M, N, True, max_prime, (2, 2))
    else:
        d = n_cores
        if d > room:
            if not pad:
                raise ShapeError(
                    f"n_cores = {d} but neither {M} ({len(prime_factors(M))} prime factors) "
                    f"nor {N} ({len(prime_factors(N))}) can be split into {d} factors. Use "
                    f"n_cores <= {room}, or pad=True to pad the dimensions."
                )
            M, N = _check_dims(M, N, True, max_prime, (d, d))
    rows = _pad_ones(balanced_factors(M, min(d, len(prime_factors(M)))), d)
    cols = _pad_ones(balanced_factors(N, min(d, len(prime_factors(N)))), d)
    return valley_order(rows), valley_order(cols)


def _pad_ones(factors: tuple[int, ...], d: int) -> tuple[int, ...]:
    return factors + (1,) * (d - len(factors))


def to_tt_shape(row_shape: Sequence[int], col_shape: Sequence[int]) -> tuple[int, ...]:
    """The flat TT-LoRA ``tt_shape`` of a TT-matrix: each core's ``m_k · n_k``.

    For the split layout this is the paper's list (input factors, then output factors);
    for any layout it is the mode sizes of the underlying 3-D tensor train, so
    ``counts.tt_n_params(to_tt_shape(rs, cs), ranks)`` is the TT-matrix's parameter count.

    Examples
    --------
    >>> to_tt_shape((1, 1, 1, 3, 4, 64), (64, 4, 3, 1, 1, 1))
    (64, 4, 3, 3, 4, 64)
    """
    rs, cs = _check_pair(row_shape, col_shape)
    return tuple(m * n for m, n in zip(rs, cs))


def from_tt_shape(
    tt_shape: Sequence[int], out_features: int, in_features: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(row_shape, col_shape)`` of a flat TT-LoRA ``tt_shape`` (input factors first).

    The input factors are the shortest prefix of ``tt_shape`` whose product is
    ``in_features``; the rest must multiply to ``out_features``. The factor order is
    kept as given.

    Examples
    --------
    >>> from_tt_shape([64, 4, 3, 3, 4, 64], 768, 768)
    ((1, 1, 1, 3, 4, 64), (64, 4, 3, 1, 1, 1))
    >>> from_tt_shape([16, 16, 4, 2, 2, 16, 16], 512, 2048)[0]
    (1, 1, 1, 1, 2, 16, 16)
    """
    M = check_int(out_features, "out_features", minimum=1)
    N = check_int(in_features, "in_features", minimum=1)
    if isinstance(tt_shape, (str, bytes)) or not isinstance(tt_shape, Sequence):
        raise InvalidInputError(
            f"tt_shape must be a sequence of ints, got {type(tt_shape).__name__}."
        )
    check_factor_count(len(tt_shape), "tt_shape")
    shape = [check_int(s, "tt_shape entry", minimum=2) for s in tt_shape]
    split, prefix = None, 1
    for k, s in enumerate(shape[:-1], start=1):  # running product: linear in len(shape)
        prefix *= s
        if prefix >= N:
            split = k if prefix == N else None
            break
    if split is None or math.prod(shape[split:]) != M:
        total = math.prod(shape)
        why = (
            f"its product {total} is right ({M} x {N}), but no leading factors multiply to "
            f"in_features={N}: the order is wrong"
            if total == M * N
            else f"its product is {total}, and {M} x {N} = {M * N}"
        )
        raise ShapeError(
            f"tt_shape {shape} does not split into input factors multiplying to "
            f"in_features={N} followed by output factors multiplying to out_features={M}: "
            f"{why}. List the input factors first, e.g. [64, 4, 3, 3, 4, 64] for a 768 x 768 "
            "layer, or tt_shape=[*factorize(in_features), *factorize(out_features)]."
        )
    return (1,) * split + tuple(shape[split:]), tuple(shape[:split]) + (1,) * (len(shape) - split)


def check_factor_count(n_factors: int, name: str = "tt_shape") -> None:
    """Refuse a shape of more than :data:`MAX_FACTORS` factors, before any work on it.

    Examples
    --------
    >>> check_factor_count(6)
    >>> check_factor_count(50_000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ttdecomp.errors.ShapeError: tt_shape has 50000 factors; at most 64 are allowed ...
    """
    if n_factors > MAX_FACTORS:
        raise ShapeError(
            f"{name} has {n_factors} factors; at most {MAX_FACTORS} are allowed (64 factors of "
            "at least 2 already describe more than 2^64 weights). Give a shape with one factor "
            "per core, e.g. tt_shape=[*factorize(in_features), *factorize(out_features)]."
        )


def check_layout(layout: Any) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`, else an error naming them."""
    if layout not in LAYOUTS:
        raise InvalidInputError(
            f"layout must be one of {LAYOUTS}, got {layout!r}: 'split' for TT-LoRA (input "
            "factors first), 'interleaved' for the classic TT-matrix."
        )
    return layout


def _check_pair(
    row_shape: Sequence[int], col_shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    for name, s in (("row_shape", row_shape), ("col_shape", col_shape)):
        if isinstance(s, (str, bytes)) or not isinstance(s, Sequence):
            raise InvalidInputError(f"{name} must be a sequence of ints, got {s!r}.")
        check_factor_count(len(s), name)
    rs = tuple(check_int(m, "row_shape entry", minimum=1) for m in row_shape)
    cs = tuple(check_int(n, "col_shape entry", minimum=1) for n in col_shape)
    if len(rs) != len(cs) or not rs:
        raise ShapeError(
            f"row_shape {rs} and col_shape {cs} must be non-empty and of equal length (one "
            "entry per core, 1 where a core has no row or column factor)."
        )
    return rs, cs
