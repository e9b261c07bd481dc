"""TT-matrix × dense contraction: a cost model, the contraction orders, and TT × TT products.

A TT-matrix ``W`` of shape ``(M, N)`` has 4-D cores ``G_k`` of shape
``(r_{k-1}, m_k, n_k, r_k)`` with ``M = ∏ m_k`` and ``N = ∏ n_k``. :func:`apply` maps
``x[..., N]`` to ``y[..., M] = x @ W.T`` without forming ``W``, by one of four orders:

``"ltr"``
    core by core, left to right. Before step ``k`` the state has shape
    ``(B, M_{<k}, r_{k-1}, N_{≥k})``; step ``k`` is one (batched) GEMM of the core,
    reshaped to ``(m_k r_k, r_{k-1} n_k)``, with the state viewed as
    ``(B M_{<k}, r_{k-1} n_k, N_{>k})``. No transposes of the state are needed.
``"rtl"``
    core by core, right to left: state ``(B, N_{≤k}, r_k, M_{>k})``, core reshaped to
    ``(r_{k-1} m_k, n_k r_k)`` (a free reshape).
``"merged"``
    cut the train at bond ``split``: merge cores ``1..split`` into one block of shape
    ``(M_L, N_L, r)`` and the rest into ``(r, M_R, N_R)``, then contract the two blocks
    (by whichever of the two sweeps is cheaper). For a split (TT-LoRA) layout cut at the
    bond between the input-side and output-side cores this is ``(x @ A) @ B`` with
    ``A`` of shape ``(N, r)`` and ``B`` of shape ``(r, M)``: exactly what LoRA costs.
``"dense"``
    reconstruct ``W`` and do one GEMM.

:func:`estimate_costs` returns the exact FLOP count (multiply and add counted as two),
the largest intermediate, and the elements saved for backward, for every candidate;
:func:`contraction_plan` picks the cheapest. The executor counts the FLOPs it issues
(every contraction is one ``matmul``), and the tests check both agree exactly.

Memory: the rows of ``x`` are processed in chunks so that no state between two GEMMs
holds more than ``memory_budget`` elements (default ``2**21``, 8 MiB in float32); chunks
reuse one set of buffers and write straight into the output (numpy, torch), so chunking
changes neither the FLOPs nor the result, only the peak memory.

Inputs are never promoted or moved: ``x`` and the cores must share the array library,
dtype (complex with real is an error) and device; only shapes are checked per call, so a
list of torch ``nn.Parameter`` can be passed on every forward at no cost.

This module imports no array library at import time: the cost model is pure Python, and
the array code dispatches on the input (numpy, torch with autograd, or any array-API
library). Torch tensors that need gradients go through a memory-lean autograd Function
(:mod:`ttdecomp._torch_ops`) that saves only ``x`` and the cores.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BackendMismatchError, ShapeError

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

ORDERS = ("ltr", "rtl", "merged", "dense")

# Rows of the batch are processed in chunks so that no state between two GEMMs holds more
# than this many elements (8 MiB in float32): the FLOPs do not change, the peak memory
# does. Backward holds about four such states at once, so 2**21 keeps its working set
# in a 32 MiB L3. Measured on 2 cores: 64 vectors through the (8,8,8,8)^2 rank-16 matrix
# take 6.7 ms in chunks of 32 rows (2**21) against 8.0 ms in one piece (2**22); earlier,
# 2**22 was about 20% faster than 2**24 for forward+backward on 8192 tokens.
DEFAULT_MEMORY_BUDGET = 1 << 21


# --------------------------------------------------------------------------- cost model
@dataclass(frozen=True)
class MachineModel:
    """Rates that turn a contraction's FLOPs and memory traffic into an estimated time.

    Every GEMM (and every copy) of a candidate is costed as a roofline,
    ``max(flops / flop_rate, bytes / bandwidth) + op_overhead``. For the per-batch GEMMs
    ``bytes`` counts only the operands larger than ``cache_bytes`` (smaller states stay
    in cache between steps), plus ``x`` and ``y`` themselves; merges and copies, which
    write fresh blocks, count all they move. :func:`contraction_plan` picks the candidate
    with the least estimated time; the FLOP counts stay exact and are reported alongside.

    Only the ratios matter for the choice: ``flop_rate / bandwidth`` (the machine
    balance, FLOPs per byte) and ``op_overhead · flop_rate``.

    Attributes
    ----------
    flop_rate : float
        FLOP/s a GEMM sustains.
    bandwidth : float
        Bytes/s to and from memory that does not fit in the cache.
    cache_bytes : int
        Operands up to this size are treated as cache-resident (no traffic).
    op_overhead : float
        Seconds per kernel call (dispatch, launch).

    Examples
    --------
    TT-LoRA's split layout at 64 rows: merging the two halves saves FLOPs, but the
    merges' memory traffic costs more than the core-by-core sweep's extra FLOPs.

    >>> import numpy as np
    >>> from ttdecomp.contract import MachineModel, contraction_plan
    >>> rows, cols = (1,) * 6 + (2, 2, 4, 4, 4, 16), (16, 4, 4, 4, 2, 2) + (1,) * 6
    >>> ranks = (1,) + (10,) * 11 + (1,)
    >>> cores = [np.zeros((ranks[k], rows[k], cols[k], ranks[k + 1]), np.float32)
    ...          for k in range(12)]
    >>> contraction_plan(cores, 64).order
    'ltr'
    >>> plan = contraction_plan(cores, 64, machine=MachineModel.flops_only())
    >>> plan.order, plan.split
    ('merged', 6)
    """

    flop_rate: float
    bandwidth: float
    cache_bytes: int
    op_overhead: float

    @classmethod
    def cpu(cls) -> MachineModel:
        """A multicore CPU: 10 FLOP per byte, 1 MiB of cache per operand, no call overhead.

        Chosen by timing every candidate of 4 layouts × 7 batch sizes (1–4096 rows) with
        torch on 2 cores (``benchmarks/bench_plan_model.py``). In the last run the chosen
        order was at most 1.09x the better of dense and core-by-core and 1.008x the
        fastest candidate in geometric mean; ranking by FLOPs alone gave 1.28x and 1.039x.
        """
        return cls(flop_rate=60e9, bandwidth=6e9, cache_bytes=1 << 20, op_overhead=0.0)

    @classmethod
    def cuda(cls) -> MachineModel:
        """A data-centre GPU (float32 without tensor cores, HBM, a few MiB of L2 per
        operand, 5 µs per kernel launch). Not calibrated: no GPU was available."""
        return cls(flop_rate=20e12, bandwidth=1.5e12, cache_bytes=8 << 20, op_overhead=5e-6)

    @classmethod
    def flops_only(cls) -> MachineModel:
        """Rank candidates by FLOPs alone (infinite bandwidth, no overhead)."""
        return cls(flop_rate=1e9, bandwidth=math.inf, cache_bytes=0, op_overhead=0.0)


def _machine_for(machine: MachineModel | None, like: Any = None) -> MachineModel:
    """``machine``, or the default for the device ``like`` lives on (CPU unless CUDA)."""
    if machine is not None:
        if not isinstance(machine, MachineModel):
            raise ShapeError(
                f"machine must be a ttdecomp.contract.MachineModel or None, got "
                f"{type(machine).__name__}; e.g. MachineModel.cpu() or MachineModel.flops_only()."
            )
        return machine
    device = str(getattr(like, "device", "cpu"))
    return MachineModel.cuda() if "cuda" in device or "gpu" in device else MachineModel.cpu()


def _itemsize(like: Any) -> int:
    dtype = getattr(like, "dtype", None)
    size = getattr(dtype, "itemsize", None)
    return int(size) if size else 4


@dataclass(frozen=True)
class ContractionCost:
    """The cost of one way of computing ``x @ W.T`` for a batch of ``batch`` rows.

    Attributes
    ----------
    order : str
        ``"ltr"``, ``"rtl"``, ``"merged"`` or ``"dense"`` (see :mod:`ttdecomp.contract`).
    split : int or None
        For ``"merged"``: the bond where the train is cut (cores ``1..split`` form the
        left block). ``None`` otherwise.
    flops : int
        Total floating-point operations for the whole batch (a multiply-add counts as 2),
        including ``setup_flops``.
    setup_flops : int
        The batch-independent part: merging cores into blocks or into ``W``.
    memory : int
        Elements of the largest intermediate (merged blocks or ``W``, the states between
        GEMMs; not ``x`` or ``y``) when the batch is processed in one piece.
    saved : int
        Elements the torch autograd path saves for backward: ``x`` and the cores.
    seconds : float
        Estimated time on the :class:`MachineModel` the cost was made for (the ranking
        key of :func:`contraction_plan`; an estimate, unlike ``flops``).
    """

    order: str
    split: int | None
    flops: int
    setup_flops: int
    memory: int
    saved: int
    seconds: float = 0.0


@dataclass(frozen=True)
class ContractionPlan:
    """The contraction chosen for a TT-matrix and a batch size, with every candidate.

    Attributes
    ----------
    cost : ContractionCost
        The chosen candidate: the least estimated time on ``machine`` (ties: fewer FLOPs,
        then less memory).
    candidates : tuple of ContractionCost
        Every candidate considered, fastest first (computed on access).
    batch : int
        Rows of ``x`` (the product of its leading axes).
    chunk : int
        Rows processed per piece so that intermediates stay within the memory budget.
    row_shape, col_shape, ranks : tuple of int
        The TT-matrix the plan is for.
    direction : str
        The sweep run over the (merged) cores: ``"ltr"``, ``"rtl"`` or ``"dense"``.
    machine : MachineModel
        The rates the estimates were made with.
    """

    cost: ContractionCost
    batch: int
    chunk: int
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    ranks: tuple[int, ...]
    direction: str
    _candidates: tuple[_Candidate, ...] = field(repr=False, compare=False)
    machine: MachineModel = field(default_factory=MachineModel.cpu, compare=False)
    _itemsize: int = field(default=4, repr=False, compare=False)
    _memory_budget: int = field(default=DEFAULT_MEMORY_BUDGET, repr=False, compare=False)

    @property
    def candidates(self) -> tuple[ContractionCost, ...]:
        """Every candidate considered, fastest first (ties: fewer FLOPs, less memory)."""
        costs = [
            _cost(c, self.batch, self.cost.saved, self.machine, self._itemsize, self._memory_budget)
            for c in self._candidates
        ]
        return tuple(sorted(costs, key=lambda c: (c.seconds, c.flops, c.memory)))

    @property
    def order(self) -> str:
        """The chosen order."""
        return self.cost.order

    @property
    def split(self) -> int | None:
        """The chosen split bond (``"merged"`` only)."""
        return self.cost.split

    def __str__(self) -> str:
        m, n = math.prod(self.row_shape), math.prod(self.col_shape)
        head = (
            f"ContractionPlan for a {m}x{n} TT-matrix, row_shape={self.row_shape}, "
            f"col_shape={self.col_shape}, ranks={self.ranks}, batch={self.batch} "
            f"(chunks of {self.chunk} rows, {self.direction} sweep)"
        )
        lines = [
            head,
            f"  {'order':<8}{'split':>6}{'est. ms':>10}{'MFLOP':>14}{'setup':>12}{'memory':>14}",
        ]
        for c in self.candidates:
            mark = "  <- chosen" if c == self.cost else ""
            split = "-" if c.split is None else str(c.split)
            lines.append(
                f"  {c.order:<8}{split:>6}{c.seconds * 1e3:>10.3f}{c.flops / 1e6:>14.3f}"
                f"{c.setup_flops / 1e6:>12.3f}{c.memory:>14d}{mark}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Candidate:
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
    ``(inner, cols)`` (``P`` per row of ``x``, see :func:`_sweep_operands`). A left-to-right
    sweep permutes each core into its matrix (a copy unless a side is 1).
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
    """The GEMMs (and the final mode-interleaving copy) of :func:`_merge`."""
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
) -> _Candidate:
    """A candidate from its kernels: FLOP totals and the largest state follow from them."""
    return _Candidate(
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
def _candidates(
    row_shape: tuple[int, ...], col_shape: tuple[int, ...], ranks: tuple[int, ...]
) -> tuple[_Candidate, ...]:
    """Every order's kernels and costs, in O(d²) arithmetic.

    Sweep step ``k`` is a GEMM of a ``(rows, inner)`` core matrix with ``P`` state
    matrices ``(inner, cols)``: ``2 P · rows · inner · cols`` FLOPs, output
    ``P · rows · cols`` elements (see :func:`_sweep_operands`). Merging multiplies a
    growing block ``(r_0 ∏ m_i n_i, r_k)`` by the next core ``(r_k, m n r_{k+1})``
    (left block), or a core ``(r_{k-1} m n, r_k)`` by ``(r_k, ∏ m_i n_i)`` (right block).
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


def _check_shape_args(
    row_shape: Sequence[int], col_shape: Sequence[int], ranks: Sequence[int], batch: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
    row_shape = tuple(int(s) for s in row_shape)
    col_shape = tuple(int(s) for s in col_shape)
    ranks = tuple(int(r) for r in ranks)
    d = len(row_shape)
    if d == 0 or len(col_shape) != d:
        raise ShapeError(
            f"row_shape {row_shape} and col_shape {col_shape} must be non-empty and of equal "
            "length (one entry per core)."
        )
    if len(ranks) != d + 1 or ranks[0] != 1 or ranks[-1] != 1:
        raise ShapeError(
            f"ranks must have d + 1 = {d + 1} entries with boundary ones, got {ranks}."
        )
    if min(row_shape + col_shape + ranks) < 1:
        raise ShapeError(
            f"mode sizes and ranks must be positive, got row_shape={row_shape}, "
            f"col_shape={col_shape}, ranks={ranks}."
        )
    if int(batch) < 0:
        raise ShapeError(f"batch must be a non-negative number of rows, got {batch}.")
    return row_shape, col_shape, ranks, int(batch)


def estimate_costs(
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    ranks: Sequence[int],
    batch: int,
    *,
    machine: MachineModel | None = None,
    itemsize: int = 4,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> list[ContractionCost]:
    """Exact FLOPs, memory and estimated time of every way to compute ``x @ W.T``.

    Parameters
    ----------
    row_shape, col_shape : sequence of int
        ``(m_1..m_d)`` and ``(n_1..n_d)`` of the TT-matrix ``W`` (``M × N``).
    ranks : sequence of int
        ``(1, r_1, ..., r_{d-1}, 1)``.
    batch : int
        Rows of ``x`` (the product of its leading axes).
    machine : MachineModel, optional
        Rates for the time estimate (default :meth:`MachineModel.cpu`).
    itemsize : int
        Bytes per element (4 for float32).
    memory_budget : int
        Largest intermediate in elements before the batch is processed in chunks.

    Returns
    -------
    list of ContractionCost
        ``"ltr"``, ``"rtl"``, ``"merged"`` for every bond ``1 ≤ split ≤ d-1``, and
        ``"dense"``, in that order. FLOPs count a multiply-add as 2 and are exactly the
        FLOPs of the matrix products :func:`apply` issues; reshapes and transposes are
        free in this count (the time estimate charges their memory traffic).

    Examples
    --------
    >>> from ttdecomp.contract import estimate_costs
    >>> costs = estimate_costs((8, 8, 8, 8), (8, 8, 8, 8), (1, 16, 16, 16, 1), 64)
    >>> for c in costs:
    ...     print(c.order, c.split, f"{c.flops / 1e9:.2f} GFLOP")
    ltr None 2.28 GFLOP
    rtl None 2.28 GFLOP
    merged 1 4.50 GFLOP
    merged 2 1.08 GFLOP
    merged 3 4.50 GFLOP
    dense None 2.82 GFLOP
    """
    row_shape, col_shape, ranks, batch = _check_shape_args(row_shape, col_shape, ranks, batch)
    machine = _machine_for(machine)
    n_params = sum(
        ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(row_shape, col_shape))
    )
    saved = batch * math.prod(col_shape) + n_params
    return [
        _cost(c, batch, saved, machine, int(itemsize), int(memory_budget))
        for c in _candidates(row_shape, col_shape, ranks)
    ]


def _chunk(c: _Candidate, batch: int, memory_budget: int) -> int:
    """Rows per piece so that no state between two GEMMs exceeds ``memory_budget``."""
    rows = int(memory_budget) // c.row_state if c.row_state else batch
    return max(1, min(max(batch, 1), rows))


def _seconds(
    c: _Candidate, batch: int, machine: MachineModel, itemsize: int, memory_budget: int
) -> float:
    """Estimated time of ``c`` on ``machine`` (see :class:`MachineModel`)."""
    rate, bandwidth, cache = machine.flop_rate, machine.bandwidth, machine.cache_bytes

    def roofline(flops: float, moved: float) -> float:
        return max(flops / rate, moved * itemsize / bandwidth) + machine.op_overhead

    # merges and copies write fresh blocks: all their traffic counts, cache or not
    total = sum(roofline(f, e) for f, e in c.setup_ops)
    if batch == 0:
        return total
    calls = -(-batch // _chunk(c, batch, memory_budget))
    rows = batch / calls
    last = len(c.steps) - 1
    for t, (flops, row_in, row_out, fixed) in enumerate(c.steps):
        moved = 0.0
        for elements, is_io in (
            (row_in * rows, t == 0),
            (row_out * rows, t == last),
            (fixed, False),
        ):
            if is_io or elements * itemsize > cache:  # x and y always come from memory
                moved += elements
        total += calls * roofline(flops * rows, moved)
    return total


def _cost(
    c: _Candidate,
    batch: int,
    saved: int,
    machine: MachineModel,
    itemsize: int,
    memory_budget: int,
) -> ContractionCost:
    return ContractionCost(
        c.order,
        c.split,
        c.setup_flops + batch * c.row_flops,
        c.setup_flops,
        max(c.blocks, batch * c.row_state),
        saved,
        _seconds(c, batch, machine, itemsize, memory_budget),
    )


def _select(
    candidates: Sequence[_Candidate],
    batch: int,
    order: str | None,
    split: int | None,
    machine: MachineModel,
    itemsize: int,
    memory_budget: int,
) -> _Candidate:
    def key(c: _Candidate) -> tuple[float, int, int]:
        flops = c.setup_flops + batch * c.row_flops
        return (
            _seconds(c, batch, machine, itemsize, memory_budget),
            flops,
            max(c.blocks, batch * c.row_state),
        )

    if order is None:
        if split is None:
            return min(candidates, key=key)
        order = "merged"
    if order not in ORDERS:
        raise ShapeError(f"order must be one of {ORDERS} or None (automatic), got {order!r}.")
    matching = [c for c in candidates if c.order == order and (split is None or c.split == split)]
    if not matching:
        splits = [c.split for c in candidates if c.order == "merged"]
        raise ShapeError(
            f"no contraction with order={order!r}, split={split!r}; a train with "
            f"{len(splits) + 1} cores can be split at bonds {splits}"
            + (" (a single core cannot be merged)." if not splits else ".")
        )
    return min(matching, key=key)


def contraction_plan(
    ttm_or_cores: Any,
    batch: int,
    *,
    order: str | None = None,
    split: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    machine: MachineModel | None = None,
) -> ContractionPlan:
    """Choose how to compute ``x @ W.T`` for ``batch`` rows of ``x``.

    The candidates of :func:`estimate_costs` are ranked by estimated time on ``machine``
    (a roofline of every GEMM's FLOPs and memory traffic, see :class:`MachineModel`),
    then by FLOPs and memory; the batch is processed in chunks of ``chunk`` rows so that
    no intermediate exceeds ``memory_budget`` elements (or one row's worth, if larger).

    Parameters
    ----------
    ttm_or_cores : TTMatrix or sequence of arrays
        The TT-matrix, or its 4-D cores ``(r_{k-1}, m_k, n_k, r_k)``.
    batch : int
        Rows of ``x`` (the product of its leading axes).
    order : {"ltr", "rtl", "merged", "dense"}, optional
        Force an order instead of the fastest.
    split : int, optional
        Force the bond of a ``"merged"`` order (implies ``order="merged"``).
    memory_budget : int
        Largest intermediate, in elements, before the batch is chunked.
    machine : MachineModel, optional
        Rates for the estimate; default :meth:`MachineModel.cuda` for CUDA tensors and
        :meth:`MachineModel.cpu` otherwise. :meth:`MachineModel.flops_only` ranks by
        FLOPs alone.

    Returns
    -------
    ContractionPlan

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp.contract import contraction_plan
    >>> cores = [np.ones((1, 8, 8, 16)), np.ones((16, 8, 8, 16)),
    ...          np.ones((16, 8, 8, 16)), np.ones((16, 8, 8, 1))]
    >>> plan = contraction_plan(cores, 64)
    >>> plan.order, plan.split, plan.cost.flops
    ('merged', 2, 1077936128)
    >>> print(plan)  # doctest: +ELLIPSIS
    ContractionPlan for a 4096x4096 TT-matrix, ... batch=64 (chunks of 32 rows, rtl sweep)
      order    split   est. ms         MFLOP       setup        memory
      merged       2 ...      1077.936       4.194       4194304  <- chosen
    ...
    """
    cores = _cores_of(ttm_or_cores)
    row_shape, col_shape, ranks = _shapes(cores)
    machine = _machine_for(machine, cores[0])
    return _plan(
        row_shape,
        col_shape,
        ranks,
        batch,
        order,
        split,
        memory_budget,
        machine,
        _itemsize(cores[0]),
    )


# A layer calls apply() with the same shapes every step: plans are pure functions of
# their (hashable) arguments, so they are memoised (immutable results, bounded cache).
@functools.lru_cache(maxsize=1024)
def _plan(
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
    ranks: tuple[int, ...],
    batch: int,
    order: str | None,
    split: int | None,
    memory_budget: int,
    machine: MachineModel,
    itemsize: int,
) -> ContractionPlan:
    """The plan for already validated shapes (the per-call path: O(d²) arithmetic)."""
    batch = int(batch)
    if batch < 0:
        raise ShapeError(f"batch must be a non-negative number of rows, got {batch}.")
    memory_budget = int(memory_budget)
    candidates = _candidates(row_shape, col_shape, ranks)
    chosen = _select(candidates, batch, order, split, machine, itemsize, memory_budget)
    n_params = sum(
        ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(row_shape, col_shape))
    )
    saved = batch * math.prod(col_shape) + n_params
    return ContractionPlan(
        _cost(chosen, batch, saved, machine, itemsize, memory_budget),
        batch,
        _chunk(chosen, batch, memory_budget),
        row_shape,
        col_shape,
        ranks,
        chosen.direction,
        candidates,
        machine,
        itemsize,
        memory_budget,
    )


# --------------------------------------------------------------------------- validation
def _cores_of(ttm_or_cores: Any) -> list[Any]:
    """The 4-D cores of a TTMatrix or a sequence of cores, shape-checked (no data scans)."""
    cores = getattr(ttm_or_cores, "cores", ttm_or_cores)
    iterable = hasattr(cores, "__iter__") and not hasattr(cores, "shape")
    cores = list(cores) if iterable and not isinstance(cores, (str, bytes)) else []
    if not cores:
        raise ShapeError(
            f"expected a TTMatrix or a non-empty list of 4-D cores (r_{{k-1}}, m_k, n_k, r_k), "
            f"got {type(ttm_or_cores).__name__}."
        )
    prev = 1
    for k, core in enumerate(cores):
        shape = getattr(core, "shape", None)
        if shape is None or len(shape) != 4:
            raise ShapeError(
                f"core {k} has shape {None if shape is None else tuple(shape)}; TT-matrix cores "
                "are 4-D (r_{k-1}, m_k, n_k, r_k). For a 3-D TensorTrain core use "
                "core[:, :, None, :] to view it as a one-column TT-matrix."
            )
        if int(shape[0]) != prev:
            what = (
                "the first core's left rank must be 1"
                if k == 0
                else (f"core {k - 1} has right rank {prev}")
            )
            raise ShapeError(
                f"core {k} has left rank {int(shape[0])} but {what}; neighbouring ranks must match."
            )
        prev = int(shape[3])
    if prev != 1:
        raise ShapeError(
            f"core {len(cores) - 1} has right rank {prev}; the last core's right rank must be 1."
        )
    return cores


def _shapes(cores: Sequence[Any]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    row_shape = tuple(int(c.shape[1]) for c in cores)
    col_shape = tuple(int(c.shape[2]) for c in cores)
    ranks = (1,) + tuple(int(c.shape[3]) for c in cores)
    return row_shape, col_shape, ranks


def _check_operands(x: Any, cores: Sequence[Any], n_total: int, what: str = "x") -> Any:
    """Backend, dtype, device and last-axis checks; returns the namespace."""
    from ._backend import get_namespace

    xp = get_namespace(x, *cores)
    dtype = cores[0].dtype
    if not xp.isdtype(x.dtype, ("real floating", "complex floating")):
        raise BackendMismatchError(
            f"{what} has dtype {x.dtype}; expected a floating or complex dtype matching the "
            f"cores ({dtype}). Cast it explicitly, e.g. x.astype(...) or x.to(...)."
        )
    for k, core in enumerate(cores):
        if core.dtype != x.dtype:
            kind = (
                "a complex/real mix"
                if xp.isdtype(core.dtype, "complex floating")
                != xp.isdtype(x.dtype, "complex floating")
                else "a dtype mismatch"
            )
            raise BackendMismatchError(
                f"{what} has dtype {x.dtype} but core {k} has dtype {core.dtype} ({kind}); "
                "ttdecomp does not promote silently. Cast one side, e.g. "
                f"x.astype(cores.dtype) / x.to(core.dtype), or the cores to {x.dtype}."
            )
    device = _device(x)
    for k, core in enumerate(cores):
        if _device(core) != device:
            raise BackendMismatchError(
                f"{what} is on device {device} but core {k} is on {_device(core)}; "
                "move one side (e.g. x.to(core.device)); ttdecomp never copies between "
                "devices silently."
            )
    if x.ndim < 1 or int(x.shape[-1]) != n_total:
        raise ShapeError(
            f"{what} has shape {tuple(x.shape)}; its last axis must be N = {n_total} (the "
            "TT-matrix's column count, ∏ col_shape). Reshape x to (..., N) or use W.T."
        )
    return xp


def _device(a: Any) -> Any:
    dev = getattr(a, "device", None)
    if dev is None:
        return None
    import array_api_compat

    return array_api_compat.device(a)


# --------------------------------------------------------------------------- executor
class _Ops:
    """The handful of array operations the executor uses, bound to one backend.

    ``counter`` (a one-element list) accumulates the FLOPs of every matrix product.
    numpy and torch can write a product into a preallocated buffer (``out=``), which the
    chunked executor uses to reuse its state buffers across chunks; other array-API
    libraries allocate.
    """

    def __init__(self, like: Any, counter: list[int] | None = None) -> None:
        from ._backend import get_namespace, is_numpy, is_torch

        if is_numpy(like):
            import numpy as np
        self.supports_out = is_torch(like) or is_numpy(like)
        if is_torch(like):
            import torch

            self.reshape = torch.reshape
            self.permute = torch.permute
            self._matmul = torch.matmul
            self.concat = torch.cat
            self.contiguous = torch.Tensor.contiguous
            self.empty = lambda n, ref: torch.empty(n, dtype=ref.dtype, device=ref.device)
        else:
            xp = get_namespace(like)
            self.reshape = xp.reshape
            self.permute = xp.permute_dims
            self._matmul = xp.matmul
            self.concat = lambda pieces: xp.concat(pieces, axis=0)
            # numpy can lay an operand out row-major; the array API has no layouts
            self.contiguous = np.ascontiguousarray if is_numpy(like) else lambda a: a
            self.empty = lambda n, ref: xp.empty(n, dtype=ref.dtype)
        self.counter = counter

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        """``a @ b`` (with broadcasting over leading axes), counting its FLOPs."""
        if self.counter is not None:
            *batch_a, m, k = a.shape
            *batch_b, _, n = b.shape
            if not batch_a or not batch_b:
                batch = math.prod(batch_a) * math.prod(batch_b)
            else:
                batch = math.prod(b if a == 1 else a for a, b in zip(batch_a, batch_b))
            self.counter[0] += 2 * batch * m * k * n
        if out is None:
            return self._matmul(a, b)
        return self._matmul(a, b, out=out)

    def view(self, buffer: Any, shape: tuple[int, ...]) -> Any:
        """The first ``∏ shape`` elements of a flat buffer, as an array of ``shape``."""
        return self.reshape(buffer[: math.prod(shape)], shape)


def _merge(ops: _Ops, cores: Sequence[Any], direction: str) -> Any:
    """Merge consecutive 4-D cores into one ``(r_0, ∏m, ∏n, r_d)`` core."""
    d = len(cores)
    r0, rd = int(cores[0].shape[0]), int(cores[-1].shape[3])
    ms = [int(c.shape[1]) for c in cores]
    ns = [int(c.shape[2]) for c in cores]
    if d == 1:
        return cores[0]
    if direction == "ltr":
        block = ops.reshape(cores[0], (-1, int(cores[0].shape[3])))  # (r0 m1 n1, r1)
        for core in cores[1:]:
            r_prev, m, n, r_next = (int(s) for s in core.shape)
            mat = ops.reshape(core, (r_prev, m * n * r_next))  # (r_{k-1}, m_k n_k r_k)
            block = ops.matmul(block, mat)  # (r0 m1 n1 .. m_{k-1} n_{k-1}, m_k n_k r_k)
            block = ops.reshape(block, (-1, r_next))  # (r0 m1 n1 .. m_k n_k, r_k)
    else:
        block = ops.reshape(cores[-1], (int(cores[-1].shape[0]), -1))  # (r_{d-1}, m_d n_d rd)
        for core in reversed(cores[:-1]):
            r_prev, m, n, r_next = (int(s) for s in core.shape)
            mat = ops.reshape(core, (r_prev * m * n, r_next))  # (r_{k-1} m_k n_k, r_k)
            block = ops.matmul(mat, block)  # (r_{k-1} m_k n_k, m_{k+1} n_{k+1} .. rd)
            block = ops.reshape(block, (r_prev, -1))  # (r_{k-1}, m_k n_k .. m_d n_d rd)
    block = ops.reshape(block, (r0, *[s for mn in zip(ms, ns) for s in mn], rd))
    # (r0, m1, n1, ..., md, nd, rd)
    perm = (0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1)
    block = ops.permute(block, perm)  # (r0, m1..md, n1..nd, rd)
    return ops.reshape(block, (r0, math.prod(ms), math.prod(ns), rd))


@dataclass(frozen=True)
class _Step:
    """One GEMM of a contraction: ``out[p] = mat @ z[p]`` with ``z`` viewed as
    ``(p, inner, cols)`` and ``p = rows_factor · B`` (``B`` the rows of ``x`` in the chunk).

    ``mat`` has shape ``(out_rows, inner)``. The output ``(p, out_rows, cols)`` is, read
    row-major, the next step's input.
    """

    mat: Any
    rows_factor: int
    inner: int
    cols: int


def _sweep_operands(ops: _Ops, cores: Sequence[Any], order: str) -> list[_Step]:
    """The GEMM steps of a core-by-core sweep (see the module docstring for the states)."""
    ms = [int(c.shape[1]) for c in cores]
    ns = [int(c.shape[2]) for c in cores]
    steps = []
    if order == "ltr":
        for k, core in enumerate(cores):
            r_prev, m, n, r_next = (int(s) for s in core.shape)
            mat = ops.permute(core, (1, 3, 0, 2))  # (m_k, r_k, r_{k-1}, n_k)
            mat = ops.reshape(mat, (m * r_next, r_prev * n))  # (m_k r_k, r_{k-1} n_k)
            # row-major: as a GEMM operand a transposed view can be 2-3x slower (MKL,
            # (256, 4096) @ (4096, 10)); the copy is the size of a core
            mat = ops.contiguous(mat)
            # state (B M_{<k}, r_{k-1} n_k, N_{>k}) -> (B M_{<k}, m_k r_k, N_{>k})
            steps.append(_Step(mat, math.prod(ms[:k]), r_prev * n, math.prod(ns[k + 1 :])))
    else:
        for k in reversed(range(len(cores))):
            r_prev, m, n, r_next = (int(s) for s in cores[k].shape)
            mat = ops.reshape(cores[k], (r_prev * m, n * r_next))  # (r_{k-1} m_k, n_k r_k)
            mat = ops.contiguous(mat)  # a free reshape of a core, unless it was a view
            # state (B N_{<k}, n_k r_k, M_{>k}) -> (B N_{<k}, r_{k-1} m_k, M_{>k})
            steps.append(_Step(mat, math.prod(ns[:k]), n * r_next, math.prod(ms[k + 1 :])))
    return steps


def _prepare(ops: _Ops, cores: Sequence[Any], plan: ContractionPlan) -> list[_Step]:
    """Batch-independent setup of a plan (merging cores) and its GEMM steps."""
    if plan.order in ("ltr", "rtl"):
        return _sweep_operands(ops, cores, plan.order)
    if plan.order == "dense":
        w = _merge(ops, cores, "ltr")  # (1, M, N, 1)
        m, n = int(w.shape[1]), int(w.shape[2])
        return [_Step(ops.reshape(w, (m, n)), 1, n, 1)]  # (M, N): y = x @ W.T
    s = plan.split
    left = _merge(ops, cores[:s], "ltr")  # (1, M_L, N_L, r_s)
    right = _merge(ops, cores[s:], "rtl")  # (r_s, M_R, N_R, 1)
    return _sweep_operands(ops, [left, right], plan.direction)


def _step_out_shape(step: _Step, batch: int) -> tuple[int, ...]:
    p = step.rows_factor * batch
    rows = int(step.mat.shape[0])
    if step.cols == 1:
        return (p, rows)
    return (rows, step.cols) if p == 1 else (p, rows, step.cols)


def _step_forward(ops: _Ops, step: _Step, z: Any, batch: int, out: Any = None) -> Any:
    """One GEMM step; returns the output in the layout the next step reads.

    ``out``, when given, is a preallocated array of the output's shape.
    """
    p = step.rows_factor * batch
    if step.cols == 1:
        z = ops.reshape(z, (p, step.inner))  # (p, inner)
        return ops.matmul(z, ops.permute(step.mat, (1, 0)), out)  # (p, out_rows)
    if p == 1:
        z = ops.reshape(z, (step.inner, step.cols))  # (inner, cols)
        return ops.matmul(step.mat, z, out)  # (out_rows, cols)
    z = ops.reshape(z, (p, step.inner, step.cols))  # (p, inner, cols)
    return ops.matmul(step.mat, z, out)  # (p, out_rows, cols)


def _run(
    ops: _Ops,
    steps: Sequence[_Step],
    x2: Any,
    out: Any = None,
    buffers: Sequence[Any] | None = None,
    keep: int = 0,
) -> Any:
    """Apply the steps to ``x2`` (``(B, N)``); returns ``(B, M)``.

    With ``buffers`` (flat arrays, one per step but the last), the states are written
    into them; with ``out`` (``(B, M)``), the result is. ``keep`` stops after that many
    steps from the end and returns the list of states instead (for backward).
    """
    batch = int(x2.shape[0])
    states = [x2]
    for t, step in enumerate(steps[: len(steps) - keep]):
        dest = None
        if t == len(steps) - 1 and out is not None:
            dest = ops.reshape(out, _step_out_shape(step, batch))
        elif t < len(steps) - 1 and buffers is not None:
            dest = ops.view(buffers[t], _step_out_shape(step, batch))
        states.append(_step_forward(ops, step, states[-1], batch, dest))
    if keep:
        return states
    last = steps[-1]
    m_total = last.rows_factor * int(last.mat.shape[0]) * last.cols
    return ops.reshape(states[-1], (batch, m_total))  # (B, M)


def _state_buffers(ops: _Ops, steps: Sequence[_Step], rows: int, like: Any) -> list[Any]:
    """One flat buffer per state between steps, sized for ``rows`` rows of ``x``."""
    return [ops.empty(math.prod(_step_out_shape(s, rows)), like) for s in steps[:-1]]


def _pingpong_buffers(ops: _Ops, steps: Sequence[_Step], rows: int, like: Any) -> list[Any]:
    """Flat buffers for the states between steps when only the latest state is needed.

    Step ``t`` reads the state in buffer ``(t - 1) % 2`` and writes buffer ``t % 2``, so
    two buffers (one allocation) serve any number of steps: fewer fresh pages to fault in
    than one buffer per state, which on CPU costs more than the GEMMs at small batches.
    Returned as one entry per state, alternating, for :func:`_run`.
    """
    sizes = [math.prod(_step_out_shape(s, rows)) for s in steps[:-1]]
    if not sizes:
        return []
    even, odd = max(sizes[0::2]), max(sizes[1::2], default=0)
    workspace = ops.empty(even + odd, like)
    pair = (workspace[:even], workspace[even:])
    return [pair[t % 2] for t in range(len(sizes))]


def _detached(a: Any) -> Any:
    """A torch tensor without autograd history (no-op for other arrays).

    The executor runs on detached operands so that its kernels, and therefore its
    rounding, do not depend on ``requires_grad``: torch's ``matmul`` folds a batched
    product into one GEMM only when no operand requires grad.
    """
    detach = getattr(a, "detach", None)
    return a if detach is None or not getattr(a, "requires_grad", False) else detach()


def _execute(
    cores: Sequence[Any],
    x2: Any,
    plan: ContractionPlan,
    counter: list[int] | None = None,
) -> Any:
    """Run ``plan`` on ``x2`` (``(B, N)``) in chunks of ``plan.chunk`` rows.

    Chunks reuse one pair of state buffers and write straight into the output where the
    backend allows it (numpy, torch), so chunking costs no extra copies. Torch operands
    are detached first: gradients are the job of :mod:`ttdecomp._torch_ops`.
    """
    cores = [_detached(c) for c in cores]
    x2 = _detached(x2)
    ops = _Ops(x2, counter)
    batch = int(x2.shape[0])
    steps = _prepare(ops, cores, plan)
    starts = range(0, batch, max(plan.chunk, 1))
    if not ops.supports_out:
        if batch <= plan.chunk:
            return _run(ops, steps, x2)
        return ops.concat([_run(ops, steps, x2[i : i + plan.chunk, ...]) for i in starts])
    last = steps[-1]
    m_total = last.rows_factor * int(last.mat.shape[0]) * last.cols
    y = ops.view(ops.empty(batch * m_total, x2), (batch, m_total))  # (B, M)
    buffers = _pingpong_buffers(ops, steps, min(plan.chunk, batch), x2)
    for i in starts:
        _run(ops, steps, x2[i : i + plan.chunk, ...], y[i : i + plan.chunk, ...], buffers)
    return y


# --------------------------------------------------------------------------- public API
def apply(
    ttm_or_cores: Any,
    x: Any,
    *,
    order: str | None = None,
    split: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    plan: ContractionPlan | None = None,
    machine: MachineModel | None = None,
) -> Any:
    """``y = x @ W.T`` for a TT-matrix ``W`` (``M × N``): maps ``x[..., N]`` to ``y[..., M]``.

    The contraction order is chosen by :func:`contraction_plan` for the actual batch (the
    product of the leading axes); ``W`` is never formed unless reconstructing it is the
    cheapest order. numpy in gives numpy out, torch in gives torch out (same device and
    dtype, gradients flowing to ``x`` and every core through an autograd Function that
    saves only ``x`` and the cores), other array-API arrays work through the standard.

    Under ``torch.autocast`` the operands are cast as for ``F.linear`` (float32, float16
    and bfloat16 to the autocast dtype; float64 and complex untouched) and the result is
    in the autocast dtype; gradients reach float32 cores in float32.

    Parameters
    ----------
    ttm_or_cores : TTMatrix or sequence of arrays
        The TT-matrix, or its 4-D cores ``(r_{k-1}, m_k, n_k, r_k)`` (e.g. a list of torch
        ``nn.Parameter``). Only shapes are checked, never the data.
    x : array
        Shape ``(..., N)``, same library, dtype and device as the cores.
    order, split : optional
        Force a contraction order (see :func:`contraction_plan`).
    memory_budget : int
        Largest intermediate in elements before the batch is processed in chunks.
    plan : ContractionPlan, optional
        A plan from :func:`contraction_plan` for these shapes and this batch, to skip
        planning on every call (a layer can keep one per batch size); overrides
        ``order``, ``split``, ``memory_budget`` and ``machine``.
    machine : MachineModel, optional
        Rates the plan's time estimates use (see :func:`contraction_plan`).

    Returns
    -------
    array
        Shape ``(..., M)``.

    Raises
    ------
    ShapeError
        The last axis of ``x`` is not ``N``, the cores do not chain, or ``plan`` was made
        for other shapes or another batch size.
    BackendMismatchError
        ``x`` and the cores differ in library, dtype (including complex/real) or device.

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp.contract import apply
    >>> rng = np.random.default_rng(0)
    >>> cores = [rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((4, 5, 2, 1))]
    >>> x = rng.standard_normal((7, 3, 6))
    >>> y = apply(cores, x)
    >>> y.shape
    (7, 3, 10)
    >>> w = np.einsum("aijb,bklc->ikjl", *cores).reshape(10, 6)
    >>> bool(np.allclose(y, x @ w.T))
    True
    """
    cores = _cores_of(ttm_or_cores)
    row_shape, col_shape, ranks = _shapes(cores)
    n_total, m_total = math.prod(col_shape), math.prod(row_shape)
    from ._backend import is_torch

    amp_device = None
    if is_torch(x):
        from ._torch_ops import autocast_operands

        x, cores, amp_device = autocast_operands(x, cores)
    xp = _check_operands(x, cores, n_total)
    lead = tuple(int(s) for s in x.shape[:-1])
    batch = math.prod(lead)
    if plan is None:
        plan = _plan(
            row_shape,
            col_shape,
            ranks,
            batch,
            order,
            split,
            memory_budget,
            _machine_for(machine, x),
            _itemsize(x),
        )
    elif (plan.row_shape, plan.col_shape, plan.ranks, plan.batch) != (
        row_shape,
        col_shape,
        ranks,
        batch,
    ):
        raise ShapeError(
            f"plan is for row_shape={plan.row_shape}, col_shape={plan.col_shape}, "
            f"ranks={plan.ranks}, batch={plan.batch}; got row_shape={row_shape}, "
            f"col_shape={col_shape}, ranks={ranks}, batch={batch}. Make it with "
            "contraction_plan(cores, batch) for this input."
        )
    if is_torch(x):
        from ._torch_ops import tt_apply

        if amp_device is None:
            y2 = tt_apply(cores, x.reshape(batch, n_total), plan)
        else:  # operands already cast: the contraction runs with autocast off
            import torch

            with torch.autocast(amp_device, enabled=False):
                y2 = tt_apply(cores, x.reshape(batch, n_total), plan)
    else:
        x2 = xp.reshape(x, (batch, n_total))  # (B, N)
        y2 = _execute(cores, x2, plan)  # (B, M)
    return xp.reshape(y2, (*lead, m_total))  # (..., M)


def linear(x: Any, ttm_or_cores: Any, bias: Any | None = None) -> Any:
    """``torch.nn.functional.linear`` with a TT-matrix weight: ``y = x @ W.T + bias``.

    Parameters
    ----------
    x : array
        Shape ``(..., N)``.
    ttm_or_cores : TTMatrix or sequence of arrays
        The weight ``W`` (``M × N``) in TT form.
    bias : array, optional
        Shape ``(M,)``, same library, dtype and device as ``x``.

    Returns
    -------
    array
        Shape ``(..., M)``.

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp.contract import linear
    >>> cores = [np.ones((1, 2, 2, 1)), np.ones((1, 3, 3, 1))]
    >>> linear(np.ones((1, 6)), cores, bias=np.arange(6.0))
    array([[ 6.,  7.,  8.,  9., 10., 11.]])
    """
    y = apply(ttm_or_cores, x)
    if bias is None:
        return y
    m_total = int(y.shape[-1])
    if bias.ndim != 1 or int(bias.shape[0]) != m_total:
        raise ShapeError(
            f"bias has shape {tuple(bias.shape)}; expected ({m_total},), one entry per output "
            "feature (M = ∏ row_shape)."
        )
    _check_operands(bias, _cores_of(ttm_or_cores), m_total, what="bias")
    from ._backend import is_torch

    if is_torch(bias) and bias.dtype != y.dtype:  # autocast cast the matmul's operands
        from ._torch_ops import autocast_operands

        bias = autocast_operands(bias, [])[0]
    return y + bias


# --------------------------------------------------------------------------- TT × TT
def ttm_matmul(a: Any, b: Any, *, eps: float | None = None, ranks: Any = None) -> Any:
    """The product ``A @ B`` of a TT-matrix with a TT-matrix or a tensor train, in TT form.

    Core ``k`` of the result is ``Σ_j A_k[:, i, j, :] ⊗ B_k[:, j, l, :]``: ranks multiply
    (``r_k^A · r_k^B``); the result is exact unless ``eps`` or ``ranks`` ask for rounding
    (then ``‖C − round(C)‖ ≤ eps ‖C‖`` as :meth:`TensorTrain.round` guarantees).

    Parameters
    ----------
    a : TTMatrix
        ``M × N`` with column factors ``(n_1..n_d)``.
    b : TTMatrix or TensorTrain
        ``N × K`` with row factors ``(n_1..n_d)``, or a train over modes ``(n_1..n_d)``
        (a vector of length ``N`` in TT form).
    eps : float, optional
        Relative Frobenius tolerance of the rounding.
    ranks : int or sequence of int, optional
        Largest ranks after rounding.

    Returns
    -------
    TTMatrix or TensorTrain
        A TT-matrix ``M × K`` when ``b`` is a TT-matrix, a tensor train over
        ``(m_1..m_d)`` when ``b`` is a tensor train.

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp import TTMatrix
    >>> from ttdecomp.contract import ttm_matmul
    >>> rng = np.random.default_rng(0)
    >>> a = TTMatrix([rng.standard_normal((1, 2, 3, 2)), rng.standard_normal((2, 2, 3, 1))])
    >>> b = TTMatrix([rng.standard_normal((1, 3, 2, 3)), rng.standard_normal((3, 3, 2, 1))])
    >>> c = ttm_matmul(a, b)
    >>> c.shape, c.ranks
    ((4, 4), (1, 6, 1))
    >>> bool(np.allclose(c.full(), a.full() @ b.full()))
    True
    """
    from .tensor_train import TensorTrain
    from .tt_matrix import TTMatrix

    if not isinstance(a, TTMatrix):
        raise ShapeError(f"ttm_matmul's left operand must be a TTMatrix, got {type(a).__name__}.")
    is_tt = isinstance(b, TensorTrain) and not isinstance(b, TTMatrix)
    if not (is_tt or isinstance(b, TTMatrix)):
        raise ShapeError(
            f"ttm_matmul's right operand must be a TTMatrix or TensorTrain, got "
            f"{type(b).__name__}; for a dense operand use apply()."
        )
    from ._backend import get_namespace

    a_cores = list(a.cores)
    xp = get_namespace(*a_cores, *b.cores)
    if is_tt:
        b_cores = [xp.expand_dims(c, axis=2) for c in b.cores]  # (s_{k-1}, n_k, 1, s_k)
    else:
        b_cores = list(b.cores)
    b_rows = tuple(int(c.shape[1]) for c in b_cores)
    if len(a_cores) != len(b_cores) or a.col_shape != b_rows:
        raise ShapeError(
            f"A @ B needs A's column factors to equal B's row factors core by core; got "
            f"A.col_shape={a.col_shape} and B's {'shape' if is_tt else 'row_shape'}={b_rows}. "
            "Re-tensorize one operand (e.g. with ttdecomp.tt_svd and matching shapes)."
        )
    for k, (ca, cb) in enumerate(zip(a_cores, b_cores)):
        if ca.dtype != cb.dtype:
            raise BackendMismatchError(
                f"core {k}: A has dtype {ca.dtype}, B has {cb.dtype}; cast one operand so "
                "both share a dtype (ttdecomp does not promote silently)."
            )
    cores = []
    for ca, cb in zip(a_cores, b_cores):
        ra, m, n, ra2 = (int(s) for s in ca.shape)
        rb, _, p, rb2 = (int(s) for s in cb.shape)
        left = xp.permute_dims(ca, (0, 1, 3, 2))  # (ra, m, ra', n)
        left = xp.reshape(left, (ra * m * ra2, n))  # (ra m ra', n)
        right = xp.permute_dims(cb, (1, 0, 2, 3))  # (n, rb, p, rb')
        right = xp.reshape(right, (n, rb * p * rb2))  # (n, rb p rb')
        core = xp.matmul(left, right)  # (ra m ra', rb p rb')
        core = xp.reshape(core, (ra, m, ra2, rb, p, rb2))  # (ra, m, ra', rb, p, rb')
        core = xp.permute_dims(core, (0, 3, 1, 4, 2, 5))  # (ra, rb, m, p, ra', rb')
        cores.append(xp.reshape(core, (ra * rb, m, p, ra2 * rb2)))  # (ra rb, m, p, ra' rb')
    if is_tt:
        result = TensorTrain([xp.reshape(c, (c.shape[0], c.shape[1], c.shape[3])) for c in cores])
    else:
        result = TTMatrix(cores)
    if eps is not None or ranks is not None:
        result = result.round(ranks, eps=eps)
    return result
