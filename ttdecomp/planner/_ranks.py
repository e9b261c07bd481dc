"""Rank paths: how the planner grows the ranks of a factorisation one bond at a time.

:func:`capacity_ranks` (shapes only) raises the narrowest, then cheapest, bonds;
:func:`error_ranks` (one weight) and :func:`global_greedy` (every layer of a model) both
take, step by step, the bond whose next rank reduces the error bound most per added
parameter: :func:`best_gain_step`, shared by the two.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from .. import counts
from ._candidates import Candidate

__all__ = [
    "best_gain_step",
    "can_grow",
    "capacity_ranks",
    "error_ranks",
    "global_greedy",
    "step_cost",
]


def step_cost(modes: Sequence[int], r: Sequence[int], k: int) -> int:
    """Parameters added by raising interior rank ``r[k]`` by one."""
    return modes[k - 1] * r[k - 1] + modes[k] * r[k + 1]


def can_grow(modes: Sequence[int], r: Sequence[int], caps: Sequence[int], k: int) -> bool:
    """Whether ``r[k] + 1`` is attainable and not redundant next to its neighbours.

    A rank above ``r_{k-1} · s_k`` or ``s_{k+1} · r_{k+1}`` adds parameters without adding
    anything (TT-SVD cannot produce the former), so growth waits for the neighbours.
    """
    nxt = r[k] + 1
    return nxt <= caps[k] and nxt <= r[k - 1] * modes[k - 1] and nxt <= modes[k] * r[k + 1]


def best_gain_step(
    modes: Sequence[int], r: Sequence[int], caps: Sequence[int], gains: Sequence[np.ndarray]
) -> tuple[float, int, int] | None:
    """The bond whose next rank reduces the error bound most per added parameter.

    ``gains[k - 1][i]`` is the bound reduction of raising ``r[k]`` from ``i`` to ``i + 1``.
    Returns ``(gain per parameter, bond k, parameters added)``, the first bond on ties, or
    ``None`` when no bond can grow with a positive gain.
    """
    best = None
    for k in range(1, len(modes)):
        if can_grow(modes, r, caps, k):
            gain = float(gains[k - 1][r[k]])
            if gain <= 0.0:
                continue
            cost = step_cost(modes, r, k)
            if best is None or gain / cost > best[0]:
                best = (gain / cost, k, cost)
    return best


def capacity_ranks(c: Candidate, budget: int) -> tuple[int, ...]:
    """The largest uniform rank that fits, then the lowest (then cheapest) bonds grow.

    The uniform level comes first because a train is only as expressive as its narrowest
    bond: growing the cheapest bonds alone would maximise the sum of the ranks with a
    zig-zag profile whose small ranks are bottlenecks.
    """
    d = len(c.modes)

    def uniform(level: int) -> list[int]:
        return [1, *(min(level, c.caps[k]) for k in range(1, d)), 1]

    lo, hi = 1, max(c.caps)
    while lo < hi:  # largest level whose clipped uniform profile fits
        mid = (lo + hi + 1) // 2
        if counts.tt_n_params(c.modes, uniform(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    r = uniform(lo)
    params = counts.tt_n_params(c.modes, r)
    while True:
        best, best_key, best_cost = 0, (0, 0), 0
        for k in range(1, d):
            if can_grow(c.modes, r, c.caps, k):
                cost = step_cost(c.modes, r, k)
                if params + cost <= budget and (best == 0 or (r[k], cost) < best_key):
                    best, best_key, best_cost = k, (r[k], cost), cost
        if best == 0:
            return tuple(r)
        r[best] += 1
        params += best_cost


def error_ranks(
    c: Candidate, gains: list[np.ndarray], budget: int | None, eps: float | None
) -> tuple[tuple[int, ...], float]:
    """Largest bound reduction per parameter first; returns ranks and ``Σ tail²`` (relative).

    ``gains[k - 1][i]`` is ``σ_{i+1}(A_k)² / ‖W‖²``. Stops at the first step that does not
    fit the budget, when the bound reaches ``eps²``, or when no step reduces it.
    """
    d = len(c.modes)
    r = [1] * (d + 1)
    caps = [min(c.caps[k], len(gains[k - 1])) if 0 < k < d else 1 for k in range(d + 1)]
    tails = [float(g[1:].sum()) for g in gains]
    params = c.min_params
    target = None if eps is None else eps * eps
    total = sum(tails)
    while target is None or total > target:
        step = best_gain_step(c.modes, r, caps, gains)
        if step is None or (budget is not None and params + step[2] > budget):
            break
        _, best, best_cost = step
        gain = float(gains[best - 1][r[best]])
        r[best] += 1
        params += best_cost
        tails[best - 1] = max(tails[best - 1] - gain, 0.0)
        total = sum(tails)
    return tuple(r), max(total, 0.0)


def global_greedy(
    cands: dict[str, Candidate], gains: dict[str, list[np.ndarray]], budget: int
) -> dict[str, tuple[int, ...]]:
    """One greedy over every layer's bonds: largest bound reduction per parameter first."""
    state = {name: [1] * (len(c.modes) + 1) for name, c in cands.items()}
    params = sum(c.min_params for c in cands.values())
    order = {name: i for i, name in enumerate(cands)}

    caps = {
        name: [1, *(min(c.caps[k], len(gains[name][k - 1])) for k in range(1, len(c.modes))), 1]
        for name, c in cands.items()
    }

    def best_step(name: str) -> tuple[float, int, int] | None:
        return best_gain_step(cands[name].modes, state[name], caps[name], gains[name])

    heap = []
    for name in cands:
        step = best_step(name)
        if step is not None:
            heap.append((-step[0], order[name], name, step[1], step[2]))
    heapq.heapify(heap)
    while heap:
        _, _, name, k, cost = heapq.heappop(heap)
        if params + cost > budget:
            break
        state[name][k] += 1
        params += cost
        step = best_step(name)
        if step is not None:
            heapq.heappush(heap, (-step[0], order[name], name, step[1], step[2]))
    return {name: tuple(r) for name, r in state.items()}
