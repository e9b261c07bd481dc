"""Plan a TT compression before touching a weight: factorisation, ranks, cost, error.

:func:`plan` picks the TT-matrix factorisation and the (possibly non-uniform) ranks for
one ``(out_features, in_features)`` weight within a parameter budget or an error target;
:func:`plan_model` does it for every linear layer of a model under one global budget,
reading a ``.safetensors`` checkpoint one tensor at a time.

How it chooses
--------------
*With a weight* it minimises the TT-SVD error. For a fixed factorisation, the singular
values of every unfolding ``A_k`` of the reshaped weight bound the TT-SVD error
(Oseledets 2011, Thm. 2.2)::

    ‖W − TT‖²_F ≤ Σ_k tail_k(r_k)²,    tail_k(r)² = Σ_{i>r} σ_i(A_k)²,

and ``max_k tail_k(r_k)`` is a lower bound for any TT with those ranks. The planner
grows the ranks one bond at a time, always taking the step with the largest reduction of
this bound per added parameter, so the rank profile is non-uniform wherever the spectra
are. The path is the same whatever the budget, and the plan for a budget is the longest
prefix that fits: more budget gives elementwise larger ranks and a smaller bound. The
factorisation with the smallest bound wins; the achieved error is then measured with one
real :func:`~ttdecomp.tt_svd`.

*Without a weight* it maximises capacity, the sum of the ranks, growing the cheapest
bond first; FLOPs of ``apply()`` break ties. Sums of ranks are only comparable between
trains with the same number of bonds, so without a weight the core count is
:func:`~ttdecomp.shapes.tensorize`'s default unless ``n_cores`` is given; with a weight
fewer cores are searched too (for the split layout down to the two-core train, which is
the truncated SVD, i.e. LoRA-shaped). The bound is exact for two cores and pessimistic by
up to ``sqrt(d − 1)`` for ``d`` cores, so with a weight the planner leans towards few
cores; fix ``n_cores`` to compare like with like.

Complexity: shapes only, ``O(C · S · d)`` for ``C`` candidate factorisations and ``S``
rank steps (milliseconds); with a weight, one Gram eigen-decomposition per distinct
unfolding, ``O(p · M · N)`` for an unfolding with ``p`` rows (its smaller side).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import counts
from .._backend import check_array, is_torch
from .._validation import check_eps
from ..errors import InvalidInputError, ShapeError, TTError, TTWarning
from ..shapes import LAYOUTS, MAX_PRIME, prime_factors, split_shapes, tensorize
from ..shapes import _balanced as balanced_factors
from ..shapes import _end_heavy as end_heavy_factors
from ..shapes import _valley as valley_order

__all__ = ["DEFAULT_EXCLUDE", "ModelPlan", "Plan", "plan", "plan_model"]

DEFAULT_EXCLUDE = r"embed|lm_head|\bwte\b|\bwpe\b"
"""Tensors :func:`plan_model` skips in a checkpoint when no ``pattern`` is given."""

_REL_TIE = 1e-12


# ----------------------------------------------------------------------------- Plan
@dataclass(frozen=True)
class Plan:
    """A TT-matrix compression plan for one ``(out_features, in_features)`` weight.

    Attributes
    ----------
    shape : (int, int)
        The weight's ``(M, N)``.
    padded_shape : (int, int)
        ``(∏ row_shape, ∏ col_shape)``; differs from ``shape`` only with ``pad=True``.
    layout : str
        ``"split"`` or ``"interleaved"``.
    row_shape, col_shape : tuple of int
        Per-core factors ``m_k`` and ``n_k``.
    ranks : tuple of int
        ``d + 1`` TT ranks with boundary ones.
    n_params : int
        Stored numbers of the TT-matrix, ``Σ r_{k-1} m_k n_k r_k``.
    budget : int or None
        The parameter budget the plan respects (``None`` for a pure error target).
    eps : float or None
        The relative error target, if one was given.
    objective : str
        ``"error"`` (a weight was given) or ``"capacity"`` (shapes only).
    batch : int
        Rows of ``x`` the costs are for.
    order : str
        The cheapest contraction order for ``apply()`` at that batch.
    flops : int
        FLOPs of ``apply()`` in that order (multiply-add = 2, setup included).
    peak_memory, saved_memory : int
        Elements of the largest intermediate, and saved for backward.
    lora_rank : int
        The LoRA rank the plan is compared with.
    predicted_error : float or None
        Upper bound ``min(sqrt(Σ tail_k²) / ‖W‖, 1)`` on the relative TT-SVD error (weight
        only; TT-SVD is an orthogonal projection, so its error never exceeds ``‖W‖``).
    achieved_error : float or None
        ``‖W − TT‖ / ‖W‖`` of the real TT-SVD (weight only, with ``verify=True``).
    """

    shape: tuple[int, int]
    padded_shape: tuple[int, int]
    layout: str
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    ranks: tuple[int, ...]
    n_params: int
    budget: int | None
    eps: float | None
    objective: str
    batch: int
    order: str
    flops: int
    peak_memory: int
    saved_memory: int
    lora_rank: int = 8
    predicted_error: float | None = None
    achieved_error: float | None = None

    @property
    def n_cores(self) -> int:
        """Number of cores ``d``."""
        return len(self.row_shape)

    @property
    def tt_shape(self) -> tuple[int, ...]:
        """Each core's ``m_k · n_k`` (the TT-LoRA paper's flat shape for the split layout)."""
        return tuple(m * n for m, n in zip(self.row_shape, self.col_shape))

    @property
    def capacity(self) -> int:
        """Sum of the interior ranks."""
        return sum(self.ranks[1:-1])

    @property
    def dense_n_params(self) -> int:
        """``M · N`` of the (unpadded) weight."""
        return self.shape[0] * self.shape[1]

    @property
    def lora_n_params(self) -> int:
        """Parameters of LoRA at :attr:`lora_rank` on this weight."""
        return counts.lora_n_params(self.shape[0], self.shape[1], self.lora_rank)

    @property
    def compression(self) -> float:
        """``dense_n_params / n_params``."""
        return self.dense_n_params / self.n_params

    @property
    def compression_vs_lora(self) -> float:
        """``lora_n_params / n_params`` (above 1: fewer parameters than LoRA)."""
        return self.lora_n_params / self.n_params

    def decompose(self, weight: Any, *, method: str = "auto") -> Any:
        """Run TT-SVD on ``weight`` with this plan's shapes and ranks.

        Parameters
        ----------
        weight : array, shape ``self.shape``
            numpy, torch or array-API; zero-padded to ``padded_shape`` when that differs.
        method : str
            SVD path, see :func:`ttdecomp.tt_svd`.

        Returns
        -------
        TTMatrix
            Of shape ``padded_shape`` with ``ranks == self.ranks`` (smaller only where the
            weight is exactly rank-deficient) and ``error_bound`` set.

        Examples
        --------
        >>> import numpy as np
        >>> p = plan((64, 48), 600)
        >>> ttm = p.decompose(np.random.default_rng(0).standard_normal((64, 48)))
        >>> ttm.n_params == p.n_params, ttm.shape
        (True, (64, 48))
        """
        from ..decompose import tt_svd

        xp = check_array(weight, "weight")
        if tuple(weight.shape) != self.shape:
            raise ShapeError(
                f"weight has shape {tuple(weight.shape)} but the plan is for {self.shape} "
                "(out_features, in_features); plan the weight you decompose, e.g. "
                "plan(weight.shape, budget)."
            )
        if self.padded_shape != self.shape:
            padded = xp.zeros(self.padded_shape, dtype=weight.dtype, device=_device(weight))
            padded[: self.shape[0], : self.shape[1]] = weight
            weight = padded
        return tt_svd(
            weight,
            list(self.ranks),
            row_shape=self.row_shape,
            col_shape=self.col_shape,
            method=method,
        )

    def to_record(self) -> dict[str, Any]:
        """The plan as a flat ``dict`` of plain Python values (one row of a table).

        Examples
        --------
        >>> plan((768, 768), 2000).to_record()["n_params"] <= 2000
        True
        """
        return {
            "out_features": self.shape[0],
            "in_features": self.shape[1],
            "padded_shape": list(self.padded_shape),
            "layout": self.layout,
            "tt_shape": list(self.tt_shape),
            "row_shape": list(self.row_shape),
            "col_shape": list(self.col_shape),
            "ranks": list(self.ranks),
            "n_params": self.n_params,
            "budget": self.budget,
            "dense_n_params": self.dense_n_params,
            "compression": self.compression,
            "lora_rank": self.lora_rank,
            "compression_vs_lora": self.compression_vs_lora,
            "batch": self.batch,
            "order": self.order,
            "flops": self.flops,
            "peak_memory": self.peak_memory,
            "saved_memory": self.saved_memory,
            "predicted_error": self.predicted_error,
            "achieved_error": self.achieved_error,
        }

    def __str__(self) -> str:
        m, n = self.shape
        pad = "" if self.padded_shape == self.shape else f" (padded to {_x(self.padded_shape)})"
        lines = [
            f"TT plan for a {m} x {n} weight{pad}: {self.layout} layout, {self.n_cores} "
            f"cores, tt_shape {list(self.tt_shape)}",
            f"  {'core':>4} {'m_k':>5} {'n_k':>5} {'r_in':>5} {'r_out':>5} {'params':>10}",
        ]
        for k, (mk, nk) in enumerate(zip(self.row_shape, self.col_shape)):
            r0, r1 = self.ranks[k], self.ranks[k + 1]
            lines.append(f"  {k:>4} {mk:>5} {nk:>5} {r0:>5} {r1:>5} {r0 * mk * nk * r1:>10,}")
        budget = "" if self.budget is None else f" of a budget of {self.budget:,}"
        lines.append(f"  n_params {self.n_params:,}{budget}")
        lines.append(
            f"  vs dense {self.dense_n_params:,}: {self.compression:,.1f}x smaller; vs LoRA "
            f"r={self.lora_rank} ({self.lora_n_params:,}): {self.compression_vs_lora:,.2f}x"
        )
        lines.append(
            f"  apply() on {self.batch} row(s): {self.order}, {self.flops:,} FLOPs, peak "
            f"{self.peak_memory:,} / saved {self.saved_memory:,} elements"
        )
        if self.predicted_error is not None:
            achieved = (
                "" if self.achieved_error is None else f", achieved {self.achieved_error:.4g}"
            )
            lines.append(f"  relative error: predicted <= {self.predicted_error:.4g}{achieved}")
        return "\n".join(lines)


def _x(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _device(a: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(a)


# ------------------------------------------------------------------- argument checks
def _check_shape(shape: Any) -> tuple[int, int]:
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or len(shape) != 2
        or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in shape)
    ):
        raise ShapeError(
            f"shape must be (out_features, in_features), two integers, got {shape!r}; e.g. "
            "plan((4096, 4096), 50_000), or pass weight=W."
        )
    m, n = int(shape[0]), int(shape[1])
    if m < 2 or n < 2:
        raise ShapeError(
            f"shape {(m, n)} has a dimension below 2; a TT-matrix needs out_features and "
            "in_features of at least 2 each."
        )
    return m, n


def _check_budget(budget: Any, dense: int, what: str = "the weight") -> int | None:
    if budget is None:
        return None
    if isinstance(budget, bool):
        raise InvalidInputError(f"budget must be an int or a float fraction, got {budget!r}.")
    if isinstance(budget, numbers.Integral):
        if budget < 1:
            raise InvalidInputError(
                f"budget must be a positive number of parameters, got {budget}; e.g. "
                "budget=50_000, or budget=0.01 for 1% of the dense size."
            )
        return int(budget)
    if isinstance(budget, numbers.Real):
        frac = float(budget)
        if not math.isfinite(frac) or frac <= 0 or frac >= 1:
            raise InvalidInputError(
                f"a float budget is a fraction of the dense size and must lie in (0, 1), got "
                f"{budget!r}; pass an int for a parameter count (e.g. budget=50_000)."
            )
        return max(1, math.floor(frac * dense))
    raise InvalidInputError(
        f"budget must be an int (parameters) or a float in (0, 1) (fraction of {what}'s "
        f"dense size), got {type(budget).__name__}."
    )


def _check_opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer or None, got {value!r}.")
    return int(value)


def _check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise InvalidInputError(
            f"layout must be one of {LAYOUTS}, got {layout!r}: 'split' for TT-LoRA (input "
            "factors first), 'interleaved' for the classic TT-matrix."
        )
    return layout


# ------------------------------------------------------------ candidate factorisations
@dataclass(frozen=True)
class _Candidate:
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    modes: tuple[int, ...]
    caps: tuple[int, ...]

    @property
    def min_params(self) -> int:
        return sum(self.modes)


def _make(rs: tuple[int, ...], cs: tuple[int, ...], max_rank: int | None) -> _Candidate:
    modes = tuple(m * n for m, n in zip(rs, cs))
    return _Candidate(rs, cs, modes, counts.max_ranks(modes, max_rank=max_rank))


def _side_variants(n: int, k: int) -> list[tuple[int, ...]]:
    out = [end_heavy_factors(n, k)]
    bal = balanced_factors(n, k)
    if bal not in out:
        out.append(bal)
    return out


def _end_heavy_only(n: int, k: int) -> list[tuple[int, ...]]:
    return [end_heavy_factors(n, k)]


def _candidates(
    m: int,
    n: int,
    layout: str,
    n_cores: int | None,
    search_counts: bool,
    max_rank: int | None,
    pad: bool,
    max_prime: int,
) -> list[_Candidate]:
    """Candidate factorisations, deterministic order, no duplicates."""
    base_r, base_c = tensorize(m, n, n_cores, layout, pad=pad, max_prime=max_prime)
    m, n = math.prod(base_r), math.prod(base_c)
    om, on = len(prime_factors(m)), len(prime_factors(n))
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = [(base_r, base_c)]
    if layout == "split":
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
    else:
        d0 = len(base_r)
        ds = [d0]
        if n_cores is None and search_counts:
            ds = [d for d in (d0 - 1, d0, d0 + 1) if 2 <= d <= max(om, on)]
        for d in ds:
            rs = balanced_factors(m, min(d, om)) + (1,) * (d - min(d, om))
            cs = balanced_factors(n, min(d, on)) + (1,) * (d - min(d, on))
            shapes.append((valley_order(rs), valley_order(cs)))
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    out = []
    for rs, cs in shapes:
        if (rs, cs) not in seen:
            seen.add((rs, cs))
            out.append(_make(rs, cs, max_rank))
    return out


# --------------------------------------------------------------------- rank paths
def _step_cost(modes: Sequence[int], r: Sequence[int], k: int) -> int:
    """Parameters added by raising interior rank ``r[k]`` by one."""
    return modes[k - 1] * r[k - 1] + modes[k] * r[k + 1]


def _can_grow(modes: Sequence[int], r: Sequence[int], caps: Sequence[int], k: int) -> bool:
    """Whether ``r[k] + 1`` is attainable and not redundant next to its neighbours.

    A rank above ``r_{k-1} · s_k`` or ``s_{k+1} · r_{k+1}`` adds parameters without adding
    anything (TT-SVD cannot produce the former), so growth waits for the neighbours.
    """
    nxt = r[k] + 1
    return nxt <= caps[k] and nxt <= r[k - 1] * modes[k - 1] and nxt <= modes[k] * r[k + 1]


def _capacity_ranks(c: _Candidate, budget: int) -> tuple[int, ...]:
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
            if _can_grow(c.modes, r, c.caps, k):
                cost = _step_cost(c.modes, r, k)
                if params + cost <= budget and (best == 0 or (r[k], cost) < best_key):
                    best, best_key, best_cost = k, (r[k], cost), cost
        if best == 0:
            return tuple(r)
        r[best] += 1
        params += best_cost


def _error_ranks(
    c: _Candidate, gains: list[np.ndarray], budget: int | None, eps: float | None
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
        best, best_ratio, best_cost = 0, 0.0, 0
        for k in range(1, d):
            if _can_grow(c.modes, r, caps, k):
                gain = float(gains[k - 1][r[k]])
                if gain <= 0.0:
                    continue
                cost = _step_cost(c.modes, r, k)
                ratio = gain / cost
                if ratio > best_ratio:
                    best, best_ratio, best_cost = k, ratio, cost
        if best == 0 or (budget is not None and params + best_cost > budget):
            break
        gain = float(gains[best - 1][r[best]])
        r[best] += 1
        params += best_cost
        tails[best - 1] = max(tails[best - 1] - gain, 0.0)
        total = sum(tails)
    return tuple(r), max(total, 0.0)


# ------------------------------------------------------------------------ spectra
def _as_numpy(weight: Any) -> np.ndarray:
    """A float64/complex128 numpy copy of any backend's 2-D array."""
    if is_torch(weight):
        import torch

        w = weight.detach().cpu()
        return w.to(torch.complex128 if w.is_complex() else torch.float64).numpy()
    try:
        a = np.asarray(weight)
    except (TypeError, ValueError, RuntimeError):
        a = np.from_dlpack(weight)
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64, copy=False)


class _Spectra:
    """Squared singular values of the unfoldings of one weight, computed once each."""

    def __init__(self, weight: np.ndarray) -> None:
        self.w = weight
        self.norm_sq = float(np.vdot(weight, weight).real)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def gains(self, c: _Candidate) -> list[np.ndarray]:
        d = len(c.modes)
        return [
            self._unfolding(math.prod(c.row_shape[:k]), math.prod(c.col_shape[:k]))
            for k in range(1, d)
        ]

    def _unfolding(self, pm: int, pn: int) -> np.ndarray:
        key = (pm, pn)
        if key not in self._cache:
            m, n = self.w.shape
            t = self.w.reshape(pm, m // pm, pn, n // pn).transpose(0, 2, 1, 3)
            x = t.reshape(pm * pn, -1)  # the unfolding: (row-group x column-group)
            g = x @ x.conj().T if x.shape[0] <= x.shape[1] else x.conj().T @ x
            ev = np.linalg.eigvalsh(g)[::-1]
            ev = np.clip(ev, 0.0, None)
            scale = self.norm_sq if self.norm_sq > 0 else 1.0
            self._cache[key] = ev / scale
        return self._cache[key]


# --------------------------------------------------------------------------- plan()
@dataclass
class _Choice:
    cand: _Candidate
    ranks: tuple[int, ...]
    n_params: int
    bound_sq: float | None = None


def _select(
    cands: list[_Candidate],
    budget: int | None,
    eps: float | None,
    spectra: _Spectra | None,
    batch: int,
) -> _Choice:
    choices = []
    for c in cands:
        if budget is not None and c.min_params > budget:
            continue
        if spectra is None:
            ranks = _capacity_ranks(c, budget if budget is not None else 0)
            choices.append(_Choice(c, ranks, counts.tt_n_params(c.modes, list(ranks))))
        else:
            ranks, bound_sq = _error_ranks(c, spectra.gains(c), budget, eps)
            n_params = counts.tt_n_params(c.modes, list(ranks))
            choices.append(_Choice(c, ranks, n_params, bound_sq))
    if spectra is None:
        top = max(sum(ch.ranks) for ch in choices)
        tied = [ch for ch in choices if sum(ch.ranks) == top]
        if len(tied) == 1:
            return tied[0]
        return min(
            tied,
            key=lambda ch: (
                counts.apply_flops(ch.cand.row_shape, ch.cand.col_shape, ch.ranks, batch),
                ch.n_params,
            ),
        )
    if eps is not None:
        reach = [ch for ch in choices if ch.bound_sq <= eps * eps * (1 + _REL_TIE)]
        if reach:
            return min(reach, key=lambda ch: (ch.n_params, ch.bound_sq))
    best = min(ch.bound_sq for ch in choices)
    close = [ch for ch in choices if ch.bound_sq <= best * (1 + 1e-9) + 1e-30]
    return min(close, key=lambda ch: (ch.n_params, ch.bound_sq))


def _min_tt(cands: list[_Candidate]) -> _Candidate:
    return min(cands, key=lambda c: c.min_params)


def _budget_error(shape: tuple[int, int], budget: int, cands: list[_Candidate]) -> str:
    small = _min_tt(cands)
    return (
        f"budget {budget:,} is below the smallest TT-matrix for a {_x(shape)} weight: "
        f"{small.min_params:,} parameters (all ranks 1, tt_shape {list(small.modes)}). Raise "
        f"the budget to at least {small.min_params:,}, or allow more cores (n_cores)."
    )


def plan(
    shape: Sequence[int] | None,
    budget: int | float | None = None,
    *,
    weight: Any = None,
    eps: float | None = None,
    layout: str = "split",
    n_cores: int | None = None,
    max_rank: int | None = None,
    batch: int | None = None,
    lora_rank: int = 8,
    pad: bool = False,
    max_prime: int = MAX_PRIME,
    verify: bool = True,
) -> Plan:
    """Choose a TT-matrix factorisation and ranks for one weight within a budget.

    Parameters
    ----------
    shape : (int, int) or None
        ``(out_features, in_features)``. ``None`` takes ``weight.shape``.
    budget : int or float, optional
        Maximum parameters (int), or a fraction of the dense size ``M · N`` (float in
        ``(0, 1)``). At least one of ``budget`` and ``eps`` is required.
    weight : array, optional
        The weight itself (numpy, torch or array-API, real or complex). With it, the plan
        minimises the TT-SVD error; without it, it maximises capacity (sum of ranks).
    eps : float, optional
        Relative Frobenius error target in ``(0, 1)`` (needs ``weight``): the cheapest
        plan whose error bound is at most ``eps`` (within ``budget`` if also given; if the
        budget cannot reach it, the best plan within the budget, with a warning).
    layout : {"split", "interleaved"}
        TT-LoRA's split layout or the classic TT-matrix (see :mod:`ttdecomp.shapes`).
    n_cores : int, optional
        Fix the number of cores; otherwise searched (see the module notes).
    max_rank : int, optional
        Cap on every rank.
    batch : int, optional
        Rows of ``x`` for the FLOP and memory figures (default 1).
    lora_rank : int
        LoRA rank the plan is compared with.
    pad : bool
        Pad dimensions with a large prime factor (see :func:`~ttdecomp.shapes.tensorize`).
    max_prime : int
        Largest prime factor accepted without padding.
    verify : bool
        With a weight, run one TT-SVD to measure ``achieved_error``.

    Returns
    -------
    Plan
        ``n_params ≤ budget`` always; ``predicted_error`` bounds ``achieved_error``.

    Raises
    ------
    ShapeError
        Dimensions below 2, a large prime (suggesting the padded size), too many cores,
        ``weight`` of another shape.
    InvalidInputError
        Bad budget, eps, layout, ``max_rank`` or ``batch``; ``eps`` without a weight; a
        budget below the smallest TT-matrix (the message gives that minimum).

    Examples
    --------
    >>> p = plan((4096, 4096), budget=50_000)
    >>> p.n_params <= 50_000, p.tt_shape, p.ranks[:4]
    (True, (16, 4, 4, 4, 4, 4, 4, 4, 4, 16), (1, 16, 43, 43))
    >>> import numpy as np
    >>> W = np.random.default_rng(0).standard_normal((64, 64))
    >>> q = plan(None, 0.25, weight=W)
    >>> q.achieved_error <= q.predicted_error + 1e-12  # the bound, up to round-off
    True
    """
    layout = _check_layout(layout)
    if weight is not None:
        check_array(weight, "weight")
        if weight.ndim != 2:
            raise ShapeError(
                f"weight must be a 2-D (out_features, in_features) matrix, got shape "
                f"{tuple(weight.shape)}."
            )
        wshape = (int(weight.shape[0]), int(weight.shape[1]))
        if shape is None:
            shape = wshape
        elif tuple(shape) != wshape:
            raise ShapeError(
                f"weight has shape {wshape} but shape={tuple(shape)} was given; pass "
                "shape=None (or the weight's shape)."
            )
    elif shape is None:
        raise ShapeError("give the weight's shape (out_features, in_features) or weight=W.")
    m, n = _check_shape(shape)
    eps = check_eps(eps)
    budget_n = _check_budget(budget, m * n)
    if budget_n is None and eps is None:
        raise InvalidInputError(
            "give a budget (parameters, or a fraction of the dense size) or an error target "
            "eps=...; e.g. plan((4096, 4096), 50_000)."
        )
    if eps is not None and weight is None:
        raise InvalidInputError(
            "eps is a target for the TT-SVD error of a weight; pass weight=W, or a budget "
            "instead to plan by shapes alone."
        )
    max_rank = _check_opt_int(max_rank, "max_rank")
    batch_n = _check_opt_int(batch, "batch") or 1
    lora_rank = _check_opt_int(lora_rank, "lora_rank") or 8
    if n_cores is not None and (
        isinstance(n_cores, bool) or not isinstance(n_cores, numbers.Integral)
    ):
        raise InvalidInputError(f"n_cores must be an integer or None, got {n_cores!r}.")

    cands = _candidates(m, n, layout, n_cores, weight is not None, max_rank, pad, max_prime)
    if budget_n is not None and all(c.min_params > budget_n for c in cands):
        raise InvalidInputError(_budget_error((m, n), budget_n, cands))
    spectra = None
    if weight is not None:
        w = _as_numpy(weight)
        padded = (math.prod(cands[0].row_shape), math.prod(cands[0].col_shape))
        if padded != (m, n):
            w = np.pad(w, ((0, padded[0] - m), (0, padded[1] - n)))
        spectra = _Spectra(w)
    choice = _select(cands, budget_n, eps, spectra, batch_n)
    if (
        eps is not None
        and choice.bound_sq is not None
        and choice.bound_sq > eps * eps * (1 + _REL_TIE)
    ):
        warnings.warn(
            f"the error target eps={eps} is not reachable within budget={budget_n} "
            f"(max_rank={max_rank}); returning the best plan within them, with predicted "
            f"error {math.sqrt(choice.bound_sq):.4g}.",
            TTWarning,
            stacklevel=2,
        )
    result = _build((m, n), choice, layout, budget_n, eps, batch_n, lora_rank, spectra is not None)
    if weight is not None and verify:
        ttm = result.decompose(weight)
        result = _with_achieved(result, ttm, weight)
    return result


def _build(
    shape: tuple[int, int],
    choice: _Choice,
    layout: str,
    budget: int | None,
    eps: float | None,
    batch: int,
    lora_rank: int,
    with_weight: bool,
) -> Plan:
    c = choice.cand
    costs = counts.contraction_costs(c.row_shape, c.col_shape, list(choice.ranks), batch)
    best = min(costs, key=lambda x: (x.flops, x.memory))
    return Plan(
        shape=shape,
        padded_shape=(math.prod(c.row_shape), math.prod(c.col_shape)),
        layout=layout,
        row_shape=c.row_shape,
        col_shape=c.col_shape,
        ranks=choice.ranks,
        n_params=choice.n_params,
        budget=budget,
        eps=eps,
        objective="error" if with_weight else "capacity",
        batch=batch,
        order=best.order if best.split is None else f"{best.order}@{best.split}",
        flops=int(best.flops),
        peak_memory=int(best.memory),
        saved_memory=int(best.saved),
        lora_rank=lora_rank,
        predicted_error=None if choice.bound_sq is None else min(math.sqrt(choice.bound_sq), 1.0),
    )


def _with_achieved(p: Plan, ttm: Any, weight: Any) -> Plan:
    from dataclasses import replace

    if p.padded_shape == p.shape:
        err = float(ttm.relative_error(weight))
    else:
        full = _as_numpy(ttm.full())
        w = _as_numpy(weight)
        diff = full.copy()
        diff[: p.shape[0], : p.shape[1]] -= w
        norm = float(np.linalg.norm(w))
        err = float(np.linalg.norm(diff)) / norm if norm > 0 else 0.0
    return replace(p, achieved_error=err)


# ----------------------------------------------------------------------- plan_model
@dataclass
class ModelPlan:
    """Per-layer plans under one global budget, from :func:`plan_model`.

    Attributes
    ----------
    plans : dict of str to Plan
        One plan per selected layer, in the order read.
    budget : int or None
        The global parameter budget.
    eps : float or None
        The per-layer error target, if one was given.
    """

    plans: dict[str, Plan] = field(default_factory=dict)
    budget: int | None = None
    eps: float | None = None

    @property
    def n_params(self) -> int:
        """Total TT parameters over all layers."""
        return sum(p.n_params for p in self.plans.values())

    @property
    def dense_n_params(self) -> int:
        """Total dense parameters of the planned layers."""
        return sum(p.dense_n_params for p in self.plans.values())

    def records(self) -> list[dict[str, Any]]:
        """One ``dict`` per layer (:meth:`Plan.to_record` plus ``"layer"``)."""
        return [{"layer": name, **p.to_record()} for name, p in self.plans.items()]

    def __str__(self) -> str:
        rows = []
        for name, p in self.plans.items():
            interior = p.ranks[1:-1]
            err = p.achieved_error if p.achieved_error is not None else p.predicted_error
            rows.append(
                (
                    name,
                    _x(p.shape),
                    "[" + ",".join(map(str, p.tt_shape)) + "]",
                    (
                        str(interior[0])
                        if min(interior) == max(interior)
                        else f"{min(interior)}-{max(interior)}"
                    ),
                    f"{p.n_params:,}",
                    f"{p.compression:,.0f}x",
                    "-" if err is None else f"{err:.3f}",
                )
            )
        head = ("layer", "shape", "tt_shape", "ranks", "params", "vs dense", "rel.err")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(
                h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))
            )
        ]
        for r in rows:
            lines.append(
                "  ".join(
                    c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
                )
            )
        budget = "" if self.budget is None else f" of a budget of {self.budget:,}"
        ratio = self.dense_n_params / self.n_params if self.n_params else float("nan")
        lines.append(
            f"{len(self.plans)} layers: {self.n_params:,} TT parameters{budget}; dense "
            f"{self.dense_n_params:,} ({ratio:,.0f}x smaller)"
        )
        errs = [p.achieved_error for p in self.plans.values() if p.achieved_error is not None]
        if any(
            p.achieved_error is None and p.predicted_error is not None for p in self.plans.values()
        ):
            lines.append(
                "rel.err: upper bound from the unfolding spectra; verify=True (--verify) "
                "measures the achieved TT-SVD error."
            )
        if errs:
            lines.append(
                f"relative error (TT-SVD): mean {sum(errs) / len(errs):.3f}, max {max(errs):.3f}"
            )
        return "\n".join(lines)


class _Source:
    """Uniform access to a mapping or a safetensors file / folder of shards."""

    def __init__(self, layers: Any, pattern: str | None) -> None:
        self.files: dict[str, str] = {}
        self.mapping: Mapping[str, Any] | None = None
        if isinstance(layers, (str, os.PathLike)):
            self._open_path(os.fspath(layers))
        elif isinstance(layers, Mapping):
            self.mapping = layers
        else:
            raise InvalidInputError(
                f"layers must be a mapping name -> shape or weight, or a path to a .safetensors "
                f"file or a folder of them, got {type(layers).__name__}."
            )
        try:
            regex = None if pattern is None else re.compile(pattern)
        except re.error as exc:
            raise InvalidInputError(f"pattern {pattern!r} is not a valid regex: {exc}.") from None
        self.entries = self._select(regex, pattern)

    def _open_path(self, path: str) -> None:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path!r} does not exist; give a .safetensors file, a folder of shards, or a "
                "shape such as 4096x4096."
            )
        if os.path.isdir(path):
            shards = sorted(
                os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors")
            )
            if not shards:
                raise InvalidInputError(f"folder {path!r} holds no .safetensors files.")
        else:
            shards = [path]
        try:
            from safetensors import safe_open
        except ImportError:
            raise ImportError(
                "reading checkpoints needs the safetensors package: pip install safetensors"
            ) from None
        self._safe_open = safe_open
        self.headers: dict[str, tuple[tuple[int, ...], str]] = {}
        for shard in shards:
            try:
                with safe_open(shard, framework="numpy") as f:
                    for key in f.keys():
                        s = f.get_slice(key)
                        self.headers[key] = (tuple(s.get_shape()), s.get_dtype())
                        self.files[key] = shard
            except Exception as exc:  # safetensors raises its own error types
                raise InvalidInputError(
                    f"could not read {shard!r} as a safetensors file ({exc}); is it complete "
                    "and really a .safetensors checkpoint?"
                ) from None

    def _select(self, regex: re.Pattern | None, pattern: str | None) -> list[tuple[str, Any]]:
        out = []
        if self.mapping is not None:
            for name, value in self.mapping.items():
                if regex is not None and not regex.search(str(name)):
                    continue
                if hasattr(value, "shape") and hasattr(value, "dtype"):
                    out.append((str(name), (tuple(int(s) for s in value.shape), True)))
                else:
                    out.append((str(name), (_check_shape(value), False)))
        else:
            floating = {"F16", "BF16", "F32", "F64", "C64", "C128"}
            exclude = re.compile(DEFAULT_EXCLUDE, re.IGNORECASE)
            for name, (shape, dtype) in sorted(self.headers.items()):  # shard-independent
                if len(shape) != 2 or dtype not in floating:
                    continue
                if regex is None and exclude.search(name):
                    continue
                if regex is not None and not regex.search(name):
                    continue
                out.append((name, (shape, True)))
        if not out:
            what = "all entries" if pattern is None else f"pattern {pattern!r}"
            raise InvalidInputError(
                f"no 2-D floating-point layer selected by {what}; check the names "
                "(e.g. 'q_proj|v_proj') or pass a mapping name -> (out, in)."
            )
        return out

    def weight(self, name: str) -> np.ndarray:
        if self.mapping is not None:
            return _as_numpy(self.mapping[name])
        dtype = self.headers[name][1]
        framework = "pt" if dtype == "BF16" else "numpy"
        if framework == "pt":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise ImportError(
                    f"{name!r} is stored as bfloat16, which numpy cannot read; install torch."
                ) from None
        with self._safe_open(self.files[name], framework=framework) as f:
            return _as_numpy(f.get_tensor(name))


def _progress(items: list[Any], enabled: bool, desc: str) -> Iterator[Any]:
    if not enabled:
        return iter(items)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install tqdm") from None
    return iter(tqdm(items, desc=desc, unit="layer", leave=False))


def plan_model(
    layers: Mapping[str, Any] | str | os.PathLike,
    budget: int | float | None = None,
    *,
    eps: float | None = None,
    pattern: str | None = None,
    layout: str = "split",
    n_cores: int | None = None,
    max_rank: int | None = None,
    batch: int | None = None,
    lora_rank: int = 8,
    use_weights: bool = True,
    verify: bool = True,
    pad: bool = False,
    max_prime: int = MAX_PRIME,
    progress: bool = False,
) -> ModelPlan:
    """Plan every layer of a model under one global budget.

    Parameters
    ----------
    layers : mapping or path
        ``name -> (out_features, in_features)`` or ``name -> weight``, or a path to a
        ``.safetensors`` file or a folder of shards. Checkpoints are read one tensor at a
        time, so a model larger than memory works; by default every 2-D floating tensor
        except embeddings and the LM head (:data:`DEFAULT_EXCLUDE`) is planned.
    budget : int or float, optional
        Global parameter budget (int), or a fraction of the planned layers' total dense size
        (float in ``(0, 1)``).
    eps : float, optional
        Per-layer relative error target (with weights) instead of, or within, the budget.
    pattern : str, optional
        Regex (``re.search``) selecting layer names, e.g. ``"q_proj|v_proj"``; a pattern
        that selects nothing is an error.
    layout, n_cores, max_rank, batch, lora_rank, pad, max_prime
        As in :func:`plan`, for every layer.
    use_weights : bool
        Minimise the TT-SVD error using the weights (default). ``False`` plans by shapes
        alone (capacity), reading only the checkpoint's header.
    verify : bool
        With weights, run one TT-SVD per layer to measure the achieved error.
    progress : bool
        Show a tqdm progress bar on stderr (needs tqdm). Off by default.

    Returns
    -------
    ModelPlan
        ``n_params ≤ budget``. With weights, the budget goes wherever it reduces the sum of
        the layers' squared relative error bounds most per parameter (one greedy over all
        layers, on each layer's best factorisation for its proportional share); by shapes
        alone, each layer gets its share of the budget in proportion to its dense size.

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    InvalidInputError
        A file that is not a readable safetensors checkpoint, a pattern that selects
        nothing, a budget below the sum of the smallest TT-matrices (the message says the
        minimum), and the errors of :func:`plan`.

    Examples
    --------
    >>> mp = plan_model({"q": (768, 768), "ffn": (3072, 768)}, budget=0.01)
    >>> mp.n_params <= 0.01 * (768 * 768 + 3072 * 768)
    True
    >>> [r["layer"] for r in mp.records()]
    ['q', 'ffn']
    """
    layout = _check_layout(layout)
    eps = check_eps(eps)
    max_rank = _check_opt_int(max_rank, "max_rank")
    batch_n = _check_opt_int(batch, "batch") or 1
    lora_rank = _check_opt_int(lora_rank, "lora_rank") or 8
    src = _Source(layers, pattern)
    with_weights = use_weights and all(has_w for _, (_, has_w) in src.entries)
    if eps is not None and not with_weights:
        raise InvalidInputError(
            "eps is a target for the TT-SVD error and needs the weights; pass weights (or a "
            "checkpoint with use_weights=True), or a budget to plan by shapes alone."
        )
    # shapes and candidates of every layer first: all checks before any work
    shapes: dict[str, tuple[int, int]] = {}
    cands: dict[str, list[_Candidate]] = {}
    by_shape: dict[tuple[int, int], list[_Candidate]] = {}  # models repeat a few shapes
    for name, (shape, _) in src.entries:
        try:
            m, n = _check_shape(shape)
            if (m, n) not in by_shape:
                by_shape[m, n] = _candidates(
                    m, n, layout, n_cores, with_weights, max_rank, pad, max_prime
                )
            cands[name] = by_shape[m, n]
        except TTError as exc:
            raise type(exc)(f"layer {name!r}: {exc}") from None
        shapes[name] = (m, n)
    dense_total = sum(m * n for m, n in shapes.values())
    budget_n = _check_budget(budget, dense_total, "the planned layers")
    if budget_n is None and eps is None:
        raise InvalidInputError("give a global budget, or eps=... with weights.")
    need = sum(_min_tt(c).min_params for c in cands.values())
    if budget_n is not None and need > budget_n:
        raise InvalidInputError(
            f"budget {budget_n:,} is below {need:,}, the sum of the smallest TT-matrices "
            f"(all ranks 1) of the {len(shapes)} selected layers; raise the budget or "
            "select fewer layers (pattern=...)."
        )

    def share(name: str) -> int | None:
        """The layer's smallest TT plus its part of the rest, by dense size (sums to <= budget)."""
        if budget_n is None:
            return None
        m, n = shapes[name]
        return _min_tt(cands[name]).min_params + (budget_n - need) * m * n // dense_total

    names = list(shapes)
    if not with_weights:
        result = ModelPlan(budget=budget_n, eps=eps)
        memo: dict[tuple[int, int, int | None], Plan] = {}
        for name in _progress(names, progress, "planning"):
            key = (*shapes[name], share(name))
            if key not in memo:
                choice = _select(cands[name], key[2], None, None, batch_n)
                memo[key] = _build(
                    shapes[name], choice, layout, key[2], None, batch_n, lora_rank, False
                )
            result.plans[name] = memo[key]
        return result

    # with weights: each layer's factorisation for its share, then one global greedy
    chosen: dict[str, _Choice] = {}
    gains: dict[str, list[np.ndarray]] = {}
    for name in _progress(names, progress, "spectra"):
        w = src.weight(name)
        _check_weight(w, name, shapes[name])
        c0 = cands[name][0]
        padded = (math.prod(c0.row_shape), math.prod(c0.col_shape))
        if padded != shapes[name]:
            w = np.pad(w, ((0, padded[0] - w.shape[0]), (0, padded[1] - w.shape[1])))
        spectra = _Spectra(w)
        chosen[name] = _select(cands[name], share(name), eps, spectra, batch_n)
        gains[name] = spectra.gains(chosen[name].cand)
        del w, spectra
    if budget_n is not None and eps is None:
        ranks = _global_greedy({k: chosen[k].cand for k in names}, gains, budget_n)
        for name in names:
            c = chosen[name].cand
            r = ranks[name]
            bound = sum(float(g[rk:].sum()) for g, rk in zip(gains[name], r[1:-1]))
            chosen[name] = _Choice(c, r, counts.tt_n_params(c.modes, list(r)), bound)
    result = ModelPlan(budget=budget_n, eps=eps)
    for name in _progress(names, progress and verify, "verifying"):
        p = _build(shapes[name], chosen[name], layout, budget_n, eps, batch_n, lora_rank, True)
        if verify:
            w = src.weight(name)
            p = _with_achieved(p, p.decompose(w), w)
        result.plans[name] = p
    return result


def _check_weight(w: np.ndarray, name: str, shape: tuple[int, int]) -> None:
    if w.shape != shape:
        raise ShapeError(f"layer {name!r}: weight has shape {w.shape}, expected {shape}.")
    if not np.all(np.isfinite(w)):
        raise InvalidInputError(f"layer {name!r}: the weight contains NaN or Inf.")


def _global_greedy(
    cands: dict[str, _Candidate], gains: dict[str, list[np.ndarray]], budget: int
) -> dict[str, tuple[int, ...]]:
    """One greedy over every layer's bonds: largest bound reduction per parameter first."""
    import heapq

    state = {name: [1] * (len(c.modes) + 1) for name, c in cands.items()}
    params = sum(c.min_params for c in cands.values())
    order = {name: i for i, name in enumerate(cands)}

    caps = {
        name: [1, *(min(c.caps[k], len(gains[name][k - 1])) for k in range(1, len(c.modes))), 1]
        for name, c in cands.items()
    }

    def best_step(name: str) -> tuple[float, int, int] | None:
        c, r, g = cands[name], state[name], gains[name]
        best = None
        for k in range(1, len(c.modes)):
            if _can_grow(c.modes, r, caps[name], k):
                gain = float(g[k - 1][r[k]])
                if gain <= 0.0:
                    continue
                cost = _step_cost(c.modes, r, k)
                if best is None or gain / cost > best[0]:
                    best = (gain / cost, k, cost)
        return best

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
