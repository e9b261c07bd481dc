"""Integers for tensor-train shapes: prime factors, smooth sizes, balanced factors.

The number theory under :mod:`ttdecomp.shapes`: :func:`prime_factors` (trial division, then
Miller-Rabin and Pollard's rho for what is left, so a 64-bit dimension is factored at once),
:func:`next_smooth` (the nearest size with only small prime factors, what a dimension is padded
to), and :func:`balanced_factors` (``k`` factors of ``n`` as equal as possible).

Examples
--------
>>> from ttdecomp.integers import balanced_factors, next_smooth, prime_factors
>>> prime_factors(384), next_smooth(4099), balanced_factors(384, 3)
((2, 2, 2, 2, 2, 2, 2, 3), 4116, (8, 8, 6))
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .errors import InvalidInputError, ShapeError

__all__ = ["SMOOTH", "balanced_factors", "check_int", "next_smooth", "prime_factors"]

SMOOTH = 7
"""Padded sizes have no prime factor above this (:func:`next_smooth`'s default)."""


def check_int(value: Any, name: str, *, minimum: int, hint: str = "") -> int:
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
    n = check_int(n, "n", minimum=1)
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


def next_smooth(n: int, *, min_factors: int = 1, largest_prime: int = SMOOTH) -> int:
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
    n = check_int(n, "n", minimum=1)
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
