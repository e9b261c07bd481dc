"""One weight: :func:`plan`, and the choice among candidates shared with :func:`plan_model`."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import counts
from .._backend import check_array
from .._validation import check_eps
from ..cost_model import DEFAULT_MEMORY_BUDGET, MachineModel, cached_plan
from ..errors import InvalidInputError, ShapeError, TTWarning
from ..shapes import MAX_PRIME
from ._candidates import Candidate, budget_error, candidates, extra_candidates
from ._checks import check_budget, check_opt_int, check_plan_layout, check_shape
from ._ranks import capacity_ranks, error_ranks
from ._records import Plan
from ._spectra import Spectra, as_numpy, kronecker_shapes

__all__ = ["Choice", "build_plan", "choose", "plan", "ranked", "with_achieved"]


_REL_TIE = 1e-12


@dataclass
class Choice:
    """A candidate factorisation with its ranks, parameters and (with a weight) ``Σ tail²``."""

    cand: Candidate
    ranks: tuple[int, ...]
    n_params: int
    bound_sq: float | None = None


def choose(
    cands: list[Candidate],
    budget: int | None,
    eps: float | None,
    spectra: Spectra | None,
    batch: int,
) -> Choice:
    """The best candidate within the budget: most capacity (shapes only; FLOPs of ``apply``
    break ties), or the smallest error bound (cheapest among those reaching ``eps``)."""
    choices = []
    for c in cands:
        if budget is not None and c.min_params > budget:
            continue
        if spectra is None:
            ranks = capacity_ranks(c, budget if budget is not None else 0)
            choices.append(Choice(c, ranks, counts.tt_n_params(c.modes, list(ranks))))
        else:
            ranks, bound_sq = error_ranks(c, spectra.gains(c), budget, eps)
            n_params = counts.tt_n_params(c.modes, list(ranks))
            choices.append(Choice(c, ranks, n_params, bound_sq))
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
    return ranked(choices, eps)[0]


def ranked(choices: list[Choice], eps: float | None) -> list[Choice]:
    """Choices with an error bound, best first: with ``eps``, those reaching it by parameters;
    then by the bound (equal bounds, up to round-off, by parameters)."""
    reach: list[Choice] = []
    if eps is not None:
        reach = sorted(
            (ch for ch in choices if ch.bound_sq <= eps * eps * (1 + _REL_TIE)),
            key=lambda ch: (ch.n_params, ch.bound_sq),
        )
    best = min(ch.bound_sq for ch in choices)
    rest = [ch for ch in choices if not any(ch is r for r in reach)]

    def key(ch: Choice) -> tuple[float, int, float]:
        tied = ch.bound_sq <= best * (1 + 1e-9) + 1e-30
        return (best if tied else ch.bound_sq, ch.n_params, ch.bound_sq)

    return reach + sorted(rest, key=key)


def plan(
    shape: Sequence[int] | None,
    budget: int | float | None = None,
    *,
    weight: Any = None,
    eps: float | None = None,
    layout: str | None = None,
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
    layout : {"auto", "split", "interleaved"}, optional
        TT-LoRA's split layout, the classic TT-matrix (see :mod:`ttdecomp.shapes`), or
        ``"auto"``: both, over the core counts the shape allows (from two cores up), compared
        by the error bound each reaches within the budget (needs the weight). Default:
        ``"auto"`` with a weight, ``"split"`` without. Choosing by the bound keeps the plan
        monotone in the budget (more budget never gives a larger predicted error). The
        error the chosen plan then reaches (``achieved_error``, at most the bound) is not
        monotone: a larger budget can pick a shape with a lower bound that lands a little
        higher (a 10 × 14 weight, 3 cores: 0.724 at a budget of 52 parameters, 0.705 at
        43).
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
    layout = check_plan_layout(layout, weight is not None)
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
    m, n = check_shape(shape)
    eps = check_eps(eps)
    budget_n = check_budget(budget, m * n)
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
    max_rank = check_opt_int(max_rank, "max_rank")
    batch_n = check_opt_int(batch, "batch") or 1
    lora_rank = check_opt_int(lora_rank, "lora_rank") or 8
    if n_cores is not None and (
        isinstance(n_cores, bool) or not isinstance(n_cores, numbers.Integral)
    ):
        raise InvalidInputError(f"n_cores must be an integer or None, got {n_cores!r}.")

    cands = candidates(m, n, layout, n_cores, weight is not None, max_rank, pad, max_prime)
    padded = (math.prod(cands[0].row_shape), math.prod(cands[0].col_shape))
    w = None if weight is None else as_numpy(weight)
    if w is not None and layout != "split" and n_cores in (None, 2) and padded == (m, n):
        # an exact Kronecker product of any (a x b) and (c x d) factors, found in the weight
        cands = extra_candidates(cands, kronecker_shapes(w), max_rank)
    if budget_n is not None and all(c.min_params > budget_n for c in cands):
        raise InvalidInputError(budget_error((m, n), budget_n, cands))
    spectra = None
    if w is not None:
        if padded != (m, n):
            w = np.pad(w, ((0, padded[0] - m), (0, padded[1] - n)))
        spectra = Spectra(w)
    choice = choose(cands, budget_n, eps, spectra, batch_n)
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
    result = build_plan((m, n), choice, budget_n, eps, batch_n, lora_rank, spectra is not None)
    if budget_n is not None and result.n_params > result.dense_n_params:
        warnings.warn(
            f"the plan has {result.n_params:,} parameters, more than the dense weight's "
            f"{result.dense_n_params:,} (budget={budget_n:,} is above the dense size); a TT layer "
            "this large saves nothing. Keep the weight dense or lower the budget.",
            TTWarning,
            stacklevel=2,
        )
    if weight is not None and verify:
        result = with_achieved(result, result.decompose(weight), weight)
    return result


def build_plan(
    shape: tuple[int, int],
    choice: Choice,
    budget: int | None,
    eps: float | None,
    batch: int,
    lora_rank: int,
    with_weight: bool,
) -> Plan:
    """The :class:`Plan` of a choice; its order is the one :func:`~ttdecomp.contract.apply` runs.

    The contraction figures come from :func:`~ttdecomp.cost_model.contraction_plan`'s choice
    for float32 operands on the CPU (:meth:`~ttdecomp.MachineModel.cpu`, the default memory
    budget): the order ``apply`` runs on such an input, not merely the one with fewest FLOPs.
    """
    c = choice.cand
    cp = cached_plan(
        c.row_shape,
        c.col_shape,
        tuple(choice.ranks),
        batch,
        None,
        None,
        DEFAULT_MEMORY_BUDGET,
        MachineModel.cpu(),
        4,
    )
    best = cp.cost
    return Plan(
        shape=shape,
        padded_shape=(math.prod(c.row_shape), math.prod(c.col_shape)),
        layout=c.layout,
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


def with_achieved(p: Plan, ttm: Any, weight: Any) -> Plan:
    from dataclasses import replace

    if p.padded_shape == p.shape:
        err = float(ttm.relative_error(weight))
    else:
        full = as_numpy(ttm.full())
        w = as_numpy(weight)
        diff = full.copy()
        diff[: p.shape[0], : p.shape[1]] -= w
        norm = float(np.linalg.norm(w))
        err = float(np.linalg.norm(diff)) / norm if norm > 0 else 0.0
    return replace(p, achieved_error=err)
