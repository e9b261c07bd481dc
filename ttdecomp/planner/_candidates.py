"""Candidate factorisations of one ``(M, N)`` weight: the TT-matrix shapes the planner compares.

With a weight, the core counts vary around :func:`~ttdecomp.shapes.tensorize`'s default
(every distinct unfolding costs an eigen-decomposition); by shapes alone, both the
end-heavy and the balanced factorisation of each side are tried at that core count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import counts
from ..errors import ShapeError
from ..shapes import (
    balanced_factors,
    end_heavy_factors,
    prime_factors,
    split_shapes,
    tensorize,
    valley_order,
)
from ._records import format_shape

__all__ = ["Candidate", "budget_error", "candidates", "extra_candidates", "min_tt"]


@dataclass(frozen=True)
class Candidate:
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    modes: tuple[int, ...]
    caps: tuple[int, ...]
    layout: str = "split"

    @property
    def min_params(self) -> int:
        return sum(self.modes)


def _make(rs: tuple[int, ...], cs: tuple[int, ...], max_rank: int | None, layout: str) -> Candidate:
    modes = tuple(m * n for m, n in zip(rs, cs))
    return Candidate(rs, cs, modes, counts.max_ranks(modes, max_rank=max_rank), layout)


def _side_variants(n: int, k: int) -> list[tuple[int, ...]]:
    out = [end_heavy_factors(n, k)]
    bal = balanced_factors(n, k)
    if bal not in out:
        out.append(bal)
    return out


def _end_heavy_only(n: int, k: int) -> list[tuple[int, ...]]:
    return [end_heavy_factors(n, k)]


def candidates(
    m: int,
    n: int,
    layout: str,
    n_cores: int | None,
    search_counts: bool,
    max_rank: int | None,
    pad: bool,
    max_prime: int,
) -> list[Candidate]:
    """Candidate factorisations, deterministic order, no duplicates.

    ``layout="auto"`` is the union of the split and the interleaved candidates; with a weight
    its interleaved core counts also reach down to two cores (the Kronecker-product case,
    ``W = A ⊗ B`` at rank 1).
    """
    if layout == "auto":
        split = candidates(m, n, "split", n_cores, search_counts, max_rank, pad, max_prime)
        try:
            inter = _interleaved(m, n, n_cores, search_counts, max_rank, pad, max_prime, True)
        except ShapeError:  # e.g. n_cores beyond what an interleaved train of M x N allows
            inter = []
        seen = {(c.row_shape, c.col_shape) for c in split}
        return split + [c for c in inter if (c.row_shape, c.col_shape) not in seen]
    if layout == "interleaved":
        return _interleaved(m, n, n_cores, search_counts, max_rank, pad, max_prime, False)
    base_r, base_c = tensorize(m, n, n_cores, layout, pad=pad, max_prime=max_prime)
    m, n = math.prod(base_r), math.prod(base_c)
    om, on = len(prime_factors(m)), len(prime_factors(n))
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = [(base_r, base_c)]
    k_in0 = sum(c > 1 for c in base_c)
    k_out0 = len(base_c) - k_in0
    total = len(base_c)
    if n_cores is not None or not search_counts:
        pairs = [
            (total - k_in, k_in)
            for k_in in range(max(1, total - om), min(on, total - 1) + 1)
            if n_cores is not None or abs(k_in - k_in0) <= 1
        ]
    else:
        ks_in = sorted({1, k_in0 - 1, k_in0} & set(range(1, on + 1)))
        ks_out = sorted({1, k_out0 - 1, k_out0} & set(range(1, om + 1)))
        pairs = [(ko, ki) for ko in ks_out for ki in ks_in]
    # shapes only: both variants of each side (cheap); with a weight the core counts
    # vary instead, and every distinct unfolding costs an eigen-decomposition
    variants = _end_heavy_only if search_counts and n_cores is None else _side_variants
    for k_out, k_in in pairs:
        for fo in variants(m, k_out):
            for fi in variants(n, k_in):
                shapes.append(split_shapes(fo, fi))
    return _unique(shapes, max_rank, "split")


def _unique(
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], max_rank: int | None, layout: str
) -> list[Candidate]:
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    out = []
    for rs, cs in shapes:
        if (rs, cs) not in seen:
            seen.add((rs, cs))
            out.append(_make(rs, cs, max_rank, layout))
    return out


def _interleaved(
    m: int,
    n: int,
    n_cores: int | None,
    search_counts: bool,
    max_rank: int | None,
    pad: bool,
    max_prime: int,
    from_two: bool,
) -> list[Candidate]:
    """Interleaved candidates: the default core count ``d0`` and, with a weight, its
    neighbours (and two cores when ``from_two``)."""
    base_r, base_c = tensorize(m, n, n_cores, "interleaved", pad=pad, max_prime=max_prime)
    m, n = math.prod(base_r), math.prod(base_c)
    om, on = len(prime_factors(m)), len(prime_factors(n))
    shapes = [(base_r, base_c)]
    d0 = len(base_r)
    ds = [d0]
    if n_cores is None and search_counts:
        near = {2} if from_two else set()
        ds = [d for d in sorted(near | {d0 - 1, d0, d0 + 1}) if 2 <= d <= max(om, on)]
    for d in ds:
        rs = balanced_factors(m, min(d, om)) + (1,) * (d - min(d, om))
        cs = balanced_factors(n, min(d, on)) + (1,) * (d - min(d, on))
        shapes.append((valley_order(rs), valley_order(cs)))
    return _unique(shapes, max_rank, "interleaved")


def extra_candidates(
    cands: list[Candidate],
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]],
    max_rank: int | None,
) -> list[Candidate]:
    """``cands`` followed by the interleaved candidates of ``shapes`` not already among them
    (the weight-specific shapes, e.g. an exact Kronecker factorisation found in the weight)."""
    seen = {(c.row_shape, c.col_shape) for c in cands}
    new = [(rs, cs) for rs, cs in shapes if (rs, cs) not in seen]
    return cands + _unique(new, max_rank, "interleaved")


def min_tt(cands: list[Candidate]) -> Candidate:
    return min(cands, key=lambda c: c.min_params)


def budget_error(shape: tuple[int, int], budget: int, cands: list[Candidate]) -> str:
    small = min_tt(cands)
    return (
        f"budget {budget:,} is below the smallest TT-matrix for a {format_shape(shape)} weight: "
        f"{small.min_params:,} parameters (all ranks 1, tt_shape {list(small.modes)}). Raise "
        f"the budget to at least {small.min_params:,}, or allow more cores (n_cores)."
    )
