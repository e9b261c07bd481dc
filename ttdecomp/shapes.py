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
import numbers
from collections.abc import Sequence
from typing import Any

from .errors import InvalidInputError, ShapeError

__all__ = [
    "LAYOUTS",
    "MAX_PRIME",
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

_END_FACTOR = 16  # target size of the outermost factor of each side in the split layout
_SMOOTH = 7  # padded sizes have no prime factor above this


def _check_int(value: Any, name: str, *, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidInputError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__}).{hint}"
        )
    value = int(value)
    if value < minimum:
        raise ShapeError(f"{name} must be at least {minimum}, got {value}.{hint}")
    return value


def prime_factors(n: int) -> tuple[int, ...]:
    """Prime factors of ``n`` with multiplicity, in ascending order.

    Parameters
    ----------
    n : int
        A positive integer (``prime_factors(1) == ()``).

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> prime_factors(768)
    (2, 2, 2, 2, 2, 2, 2, 2, 3)
    >>> prime_factors(4099)
    (4099,)
    """
    n = _check_int(n, "n", minimum=1)
    out = []
    for p in _SMALL_PRIMES:
        if p * p > n:
            break
        while n % p == 0:
            out.append(p)
            n //= p
    if n > 1:
        out.extend(_large_factors(n))
    return tuple(sorted(out))


_SMALL_PRIMES = tuple(p for p in range(2, 1000) if all(p % q for q in range(2, math.isqrt(p) + 1)))
# Miller-Rabin with these bases is exact below 3.3·10^24 (and a strong test above).
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _SMALL_PRIMES[:13]:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _large_factors(n: int) -> list[int]:
    """Prime factors of ``n`` (no factor below 1000): Miller-Rabin, then Pollard-Brent rho."""
    if n == 1:
        return []
    if _is_prime(n):
        return [n]
    r = math.isqrt(n)
    if r * r == n:
        return _large_factors(r) * 2
    c = 1
    while True:
        y, g, m, q, x = 2, 1, 128, 1, 2
        length = 1
        while g == 1:
            x = y
            for _ in range(length):
                y = (y * y + c) % n
            k = 0
            while k < length and g == 1:
                ys = y
                for _ in range(min(m, length - k)):
                    y = (y * y + c) % n
                    q = q * abs(x - y) % n
                g = math.gcd(q, n)
                k += m
            length *= 2
        if g == n:
            g = 1
            while g == 1:
                ys = (ys * ys + c) % n
                g = math.gcd(abs(x - ys), n)
        if g != n:
            return _large_factors(g) + _large_factors(n // g)
        c += 1


def next_smooth(n: int, *, min_factors: int = 1, largest_prime: int = _SMOOTH) -> int:
    """Smallest integer ``≥ n`` whose prime factors are all ``≤ largest_prime``.

    This is the padded size :func:`factorize` suggests for a dimension with a large prime
    factor; found by a search over products of the small primes (milliseconds, also for
    ``n`` near ``2**62``). ``min_factors`` asks for at least that many prime factors (with
    multiplicity), so that the padded size can be split into ``min_factors`` factors ``≥ 2``.

    Examples
    --------
    >>> next_smooth(4099)
    4116
    >>> next_smooth(6, min_factors=3)
    8
    """
    n = _check_int(n, "n", minimum=1)
    primes = [p for p in range(2, largest_prime + 1) if _is_prime(p)]
    best = 2 ** max(min_factors, (n - 1).bit_length())  # a power of two always qualifies

    def walk(i: int, prod: int, count: int) -> None:
        # Exhaustive over products of ``primes[i:]`` below the best found: cheap, since
        # smooth numbers are sparse (no factoring of every integer on the way).
        nonlocal best
        if prod >= n and count >= min_factors:
            best = min(best, prod)
            return
        if i == len(primes):
            return
        x, c = prod, count
        while x < best:
            walk(i + 1, x, c)
            x, c = x * primes[i], c + 1

    walk(0, 1, 0)
    return best


def balanced_factors(n: int, k: int) -> tuple[int, ...]:
    """The most balanced split of ``n`` into ``k`` factors ``≥ 2`` (descending).

    "Most balanced" minimises ``Σ log² f`` (for a fixed product, the spread of the logs);
    ties go to the lexicographically smallest descending tuple. Exhaustive over
    non-decreasing divisor chains, which is small for the sizes found in networks.
    """
    if k == 1:
        return (n,)
    divs = {1}
    for p in prime_factors(n):
        divs |= {d * p for d in divs}
    divisors = sorted(d for d in divs if d > 1)
    best: tuple[float, tuple[int, ...]] | None = None

    def walk(rest: int, left: int, low: int, acc: list[int]) -> None:
        nonlocal best
        if left == 1:
            if rest >= low:
                f = (*acc, rest)
                score = (round(sum(math.log(x) ** 2 for x in f), 9), tuple(sorted(f)[::-1]))
                if best is None or score < best:
                    best = score
            return
        for p in divisors:
            if p < low:
                continue
            if p**left > rest:
                break
            if rest % p == 0:
                walk(rest // p, left - 1, p, [*acc, p])

    walk(n, k, 2, [])
    if best is None:
        raise ShapeError(f"{n} cannot be split into {k} factors >= 2.")
    return best[1]


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
    n = _check_int(n, "n", minimum=2, hint=" A dimension of 1 has no factors to split.")
    max_prime = _check_int(max_prime, "max_prime", minimum=2)
    if n_factors is not None:
        n_factors = _check_int(n_factors, "n_factors", minimum=1)
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
        value = _check_int(value, name, minimum=2, hint=" Every dimension must be at least 2.")
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
    max_prime = _check_int(max_prime, "max_prime", minimum=2)
    if n_cores is not None:
        n_cores = _check_int(
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
    M = _check_int(out_features, "out_features", minimum=1)
    N = _check_int(in_features, "in_features", minimum=1)
    if isinstance(tt_shape, (str, bytes)) or not isinstance(tt_shape, Sequence):
        raise InvalidInputError(
            f"tt_shape must be a sequence of ints, got {type(tt_shape).__name__}."
        )
    shape = [_check_int(s, "tt_shape entry", minimum=2) for s in tt_shape]
    prefix = [math.prod(shape[:k]) for k in range(1, len(shape))]
    split = prefix.index(N) + 1 if N in prefix else None
    if split is None or math.prod(shape[split:]) != M:
        raise ShapeError(
            f"tt_shape {shape} does not split into input factors multiplying to "
            f"in_features={N} followed by output factors multiplying to out_features={M} "
            f"(product {math.prod(shape)}, expected {M * N}). List the input factors first, "
            "e.g. [64, 4, 3, 3, 4, 64] for a 768 x 768 layer, or "
            "tt_shape=[*factorize(in_features), *factorize(out_features)]."
        )
    return (1,) * split + tuple(shape[split:]), tuple(shape[:split]) + (1,) * (len(shape) - split)


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
    rs = tuple(_check_int(m, "row_shape entry", minimum=1) for m in row_shape)
    cs = tuple(_check_int(n, "col_shape entry", minimum=1) for n in col_shape)
    if len(rs) != len(cs) or not rs:
        raise ShapeError(
            f"row_shape {rs} and col_shape {cs} must be non-empty and of equal length (one "
            "entry per core, 1 where a core has no row or column factor)."
        )
    return rs, cs
