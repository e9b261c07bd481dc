"""The kernel lists of every contraction order, from shapes alone (no arrays).

A :class:`Candidate` is one way to compute ``x @ W.T`` for a TT-matrix ``W`` (an order of
:data:`ORDERS`, with its split bond for ``"merged"``), written as the kernels it runs: the
batch-independent merges and copies ``(flops, elements moved)``, and the GEMM steps per
chunk of rows ``(flops per row, input elements per row, output elements per row, operand
elements)``, in execution order, as :mod:`ttdecomp._executor` issues them.
:mod:`ttdecomp.cost_model` turns these lists into FLOP counts, memory and time estimates.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ORDERS", "Candidate", "order_candidates"]

ORDERS = ("ltr", "rtl", "merged", "dense")


@dataclass(frozen=True)
class Candidate:
    """One contraction order with its batch-independent numbers (per row of ``x``).

    ``setup_ops`` are the batch-independent kernels ``(flops, elements moved)`` (merges,
    operand copies); ``steps`` the GEMMs run per chunk, as ``(flops per row, input
    elements per row, output elements per row, operand elements)``.
    """

    order: str
    split: int | None
    direction: str  # the sweep run on the (merged) cores: "ltr" or "rtl"
    setup_flops: int
    row_flops: int  # FLOPs per row of x
    row_state: int  # largest state between two GEMMs, per row of x
    blocks: int  # elements of the merged blocks (or of W)
    setup_ops: tuple[tuple[int, int], ...] = ()
    steps: tuple[tuple[int, int, int, int], ...] = ()


def _sweep_ops(
    ms: Sequence[int], ns: Sequence[int], r: Sequence[int], order: str
) -> tuple[list[tuple[int, int]], list[tuple[int, int, int, int]]]:
    """Operand copies and GEMM steps of a core-by-core sweep, in execution order.

    Step ``k`` is a GEMM of a ``(rows, inner)`` core matrix with ``P`` state matrices
    ``(inner, cols)`` (``P`` per row of ``x``, as the executor's ``_sweep_operands`` builds
    them). A left-to-right sweep permutes each core into its matrix (a copy unless a side
    is 1).
    """
    d = len(ms)
    m_total, n_total = math.prod(ms), math.prod(ns)
    copies: list[tuple[int, int]] = []
    steps = []
    for k in range(d):
        m, n = ms[k], ns[k]
        if order == "ltr":
            p, rows, inner = math.prod(ms[:k]), m * r[k + 1], r[k] * n
            cols = n_total // math.prod(ns[: k + 1])
            # (r_{k-1}, m, n, r_k) read as (m, r_k, r_{k-1}, n): a copy unless the modes
            # larger than 1 keep their order
            sizes = {"a": r[k], "m": m, "n": n, "b": r[k + 1]}
            before = [lab for lab in "amnb" if sizes[lab] > 1]
            if before != [lab for lab in "mban" if sizes[lab] > 1]:
                copies.append((0, 2 * rows * inner))
        else:
            p, rows, inner = math.prod(ns[:k]), r[k] * m, n * r[k + 1]
            cols = m_total // math.prod(ms[: k + 1])
        steps.append((2 * p * rows * inner * cols, p * inner * cols, p * rows * cols, rows * inner))
    return copies, steps if order == "ltr" else steps[::-1]


def _merge_ops(
    ms: Sequence[int], ns: Sequence[int], r: Sequence[int], direction: str
) -> list[tuple[int, int]]:
    """The GEMMs (and the final mode-interleaving copy) of the executor's ``_merge``."""
    d = len(ms)
    if d == 1:
        return []
    ops = []
    if direction == "ltr":
        prefix = r[0] * ms[0] * ns[0]
        for k in range(1, d):
            mn = ms[k] * ns[k]
            core = r[k] * mn * r[k + 1]
            ops.append((2 * prefix * core, prefix * r[k] + core + prefix * mn * r[k + 1]))
            prefix *= mn
    else:
        suffix = ms[-1] * ns[-1] * r[d]
        for k in reversed(range(d - 1)):
            mn = ms[k] * ns[k]
            core = r[k] * mn * r[k + 1]
            ops.append((2 * core * suffix, core + r[k + 1] * suffix + r[k] * mn * suffix))
            suffix *= mn
    # (r0, m1, n1, .., md, nd, rd) -> (r0, m1..md, n1..nd, rd) is a view only when no
    # non-trivial n mode precedes a non-trivial m mode
    labels = [lab for m, n in zip(ms, ns) for lab, size in (("m", m), ("n", n)) if size > 1]
    if labels != sorted(labels):
        ops.append((0, 2 * r[0] * math.prod(ms) * math.prod(ns) * r[d]))
    return ops


def _candidate(
    order: str,
    split: int | None,
    direction: str,
    setup_ops: Sequence[tuple[int, int]],
    steps: Sequence[tuple[int, int, int, int]],
    blocks: int,
) -> Candidate:
    """A candidate from its kernels: FLOP totals and the largest state follow from them."""
    return Candidate(
        order,
        split,
        direction,
        sum(f for f, _ in setup_ops),
        sum(st[0] for st in steps),
        # the state after the last step is the output y: not an intermediate
        max((st[2] for st in steps[:-1]), default=0),
        blocks,
        tuple(setup_ops),
        tuple(steps),
    )


@functools.lru_cache(maxsize=256)
def order_candidates(
    row_shape: tuple[int, ...], col_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> tuple[Candidate, ...]:
    """Every order's kernels and costs, in O(d²) arithmetic.

    Sweep step ``k`` is a GEMM of a ``(rows, inner)`` core matrix with ``P`` state
    matrices ``(inner, cols)``: ``2 P · rows · inner · cols`` FLOPs, output
    ``P · rows · cols`` elements (as the executor's ``_sweep_operands`` builds them).
    Merging multiplies a growing block ``(r_0 ∏ m_i n_i, r_k)`` by the next core
    ``(r_k, m n r_{k+1})`` (left block), or a core ``(r_{k-1} m n, r_k)`` by
    ``(r_k, ∏ m_i n_i)`` (right block).
    """
    d = len(row_shape)
    m_total, n_total = math.prod(row_shape), math.prod(col_shape)
    out = [
        _candidate(o, None, o, *_sweep_ops(row_shape, col_shape, ranks, o), 0) for o in ORDERS[:2]
    ]
    for s in range(1, d):
        ml, nl, rs = math.prod(row_shape[:s]), math.prod(col_shape[:s]), ranks[s]
        mr, nr = m_total // ml, n_total // nl
        sweeps = {o: _sweep_ops((ml, mr), (nl, nr), (1, rs, 1), o) for o in ORDERS[:2]}
        flops = {o: sum(st[0] for st in steps) for o, (_, steps) in sweeps.items()}
        # ties go right to left: its batched GEMM has the long inner dimension (N_L r)
        direction = "ltr" if flops["ltr"] < flops["rtl"] else "rtl"
        copies, steps = sweeps[direction]
        setup = _merge_ops(row_shape[:s], col_shape[:s], ranks[: s + 1], "ltr")
        setup += _merge_ops(row_shape[s:], col_shape[s:], ranks[s:], "rtl")
        blocks = max(ml * nl, mr * nr) * rs
        out.append(_candidate("merged", s, direction, setup + copies, steps, blocks))
    dense_setup = _merge_ops(row_shape, col_shape, ranks, "ltr")
    dense_step = (2 * m_total * n_total, n_total, m_total, m_total * n_total)
    out.append(_candidate("dense", None, "dense", dense_setup, [dense_step], m_total * n_total))
    return tuple(out)
