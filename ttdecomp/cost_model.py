"""The cost model of TT-matrix × dense contraction: FLOPs, memory and time of every order.

For a TT-matrix ``W`` (``M × N``, 4-D cores ``(r_{k-1}, m_k, n_k, r_k)``) and a batch of
``B`` rows, :func:`estimate_costs` returns, for every order :func:`ttdecomp.contract.apply`
can run (``"ltr"``, ``"rtl"``, ``"merged"`` at every bond, ``"dense"``; see
:mod:`ttdecomp.contract`), the exact FLOP count (multiply and add counted as two), the
largest intermediate, the elements saved for backward, and an estimated time on a
:class:`MachineModel`; :func:`contraction_plan` picks the fastest. Each candidate is its
list of kernels (merges, copies, GEMM steps): the estimate sums over the same list the
executor (:mod:`ttdecomp._executor`) runs, and the tests check that the FLOPs it issues
equal the FLOPs counted here.

Memory: the rows of ``x`` are processed in chunks so that no state between two GEMMs
holds more than ``memory_budget`` elements (default ``2**21``, 8 MiB in float32);
chunking changes neither the FLOPs nor the result, only the peak memory.

This module is array-free: it reads only the shapes (and dtype and device names) of the
cores, so it serves the counters and the planner without importing any array library.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._kernels import ORDERS, Candidate, order_candidates
from ._validation import check_matrix_shape, matrix_cores, matrix_shapes
from .errors import ShapeError

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "ORDERS",
    "ContractionCost",
    "ContractionPlan",
    "MachineModel",
    "cached_plan",
    "contraction_plan",
    "estimate_costs",
    "itemsize_of",
    "machine_for",
    "matrix_n_params",
]

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
    >>> from ttdecomp.cost_model import MachineModel, contraction_plan
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


def machine_for(machine: MachineModel | None, like: Any = None) -> MachineModel:
    """``machine``, or the default for the device ``like`` lives on (CPU unless CUDA)."""
    if machine is not None:
        if not isinstance(machine, MachineModel):
            raise ShapeError(
                f"machine must be a ttdecomp.MachineModel or None, got "
                f"{type(machine).__name__}; e.g. MachineModel.cpu() or MachineModel.flops_only()."
            )
        return machine
    device = str(getattr(like, "device", "cpu"))
    return MachineModel.cuda() if "cuda" in device or "gpu" in device else MachineModel.cpu()


def itemsize_of(like: Any) -> int:
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

    Examples
    --------
    >>> from ttdecomp import contraction_plan, random_ttm
    >>> plan = contraction_plan(random_ttm((4, 4), (4, 4), ranks=2, seed=0), batch=8)
    >>> cost = plan.cost  # the chosen candidate
    >>> cost.order, cost.flops > 0, cost.seconds >= 0
    ('rtl', True, True)
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

    Examples
    --------
    >>> from ttdecomp import contraction_plan, random_ttm
    >>> plan = contraction_plan(random_ttm((4, 4), (4, 4), ranks=2, seed=0), batch=8)
    >>> plan.batch, plan.ranks, plan.cost.order
    (8, (1, 2, 1), 'rtl')
    """

    cost: ContractionCost
    batch: int
    chunk: int
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    ranks: tuple[int, ...]
    direction: str
    _candidates: tuple[Candidate, ...] = field(repr=False, compare=False)
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
    >>> from ttdecomp.cost_model import estimate_costs
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
    row_shape, col_shape, ranks, batch = check_matrix_shape(row_shape, col_shape, ranks, batch)
    machine = machine_for(machine)
    saved = batch * math.prod(col_shape) + matrix_n_params(row_shape, col_shape, ranks)
    return [
        _cost(c, batch, saved, machine, int(itemsize), int(memory_budget))
        for c in order_candidates(row_shape, col_shape, ranks)
    ]


def matrix_n_params(
    row_shape: Sequence[int], col_shape: Sequence[int], ranks: Sequence[int]
) -> int:
    """Stored numbers of a TT-matrix, ``Σ_k r_{k-1} · m_k · n_k · r_k`` (no checks: the
    validated form is :func:`ttdecomp.counts.tt_matrix_n_params`)."""
    return sum(
        ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(row_shape, col_shape))
    )


def _chunk(c: Candidate, batch: int, memory_budget: int) -> int:
    """Rows per piece so that no state between two GEMMs exceeds ``memory_budget``."""
    rows = int(memory_budget) // c.row_state if c.row_state else batch
    return max(1, min(max(batch, 1), rows))


def _seconds(
    c: Candidate, batch: int, machine: MachineModel, itemsize: int, memory_budget: int
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
    c: Candidate,
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
    candidates: Sequence[Candidate],
    batch: int,
    order: str | None,
    split: int | None,
    machine: MachineModel,
    itemsize: int,
    memory_budget: int,
) -> Candidate:
    def key(c: Candidate) -> tuple[float, int, int]:
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
    >>> from ttdecomp.cost_model import contraction_plan
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
    cores = matrix_cores(ttm_or_cores)
    row_shape, col_shape, ranks = matrix_shapes(cores)
    machine = machine_for(machine, cores[0])
    return cached_plan(
        row_shape,
        col_shape,
        ranks,
        batch,
        order,
        split,
        memory_budget,
        machine,
        itemsize_of(cores[0]),
    )


# A layer calls apply() with the same shapes every step: plans are pure functions of
# their (hashable) arguments, so they are memoised (immutable results, bounded cache).
@functools.lru_cache(maxsize=1024)
def cached_plan(
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
    candidates = order_candidates(row_shape, col_shape, ranks)
    chosen = _select(candidates, batch, order, split, machine, itemsize, memory_budget)
    saved = batch * math.prod(col_shape) + matrix_n_params(row_shape, col_shape, ranks)
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
