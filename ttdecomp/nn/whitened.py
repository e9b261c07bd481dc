"""Whitened TT decomposition: minimise a layer's output error, not its weight error.

A layer ``y = x Wᵀ`` is used on inputs ``x``, not on arbitrary vectors. Given calibration
inputs stacked as the rows of ``X`` (``n × N``), the quantity to keep small is the output
error ``‖X (W − Ŵ)ᵀ‖_F``. With the Gram matrix ``C = XᵀX`` (plus a small ridge, below) and
its Cholesky factor ``C = L Lᵀ`` (``L`` lower triangular, invertible)::

    ‖X (W − Ŵ)ᵀ‖²_F = tr((W − Ŵ) C (W − Ŵ)ᵀ) = ‖(W − Ŵ) L‖²_F = ‖W L − Ŵ L‖²_F.

So the problem is an ordinary approximation of the *whitened* weight ``W L`` (SVD-LLM's
whitening; ASVD's diagonal scaling is the special case ``L = diag(‖X_{:,j}‖)``). For the
TT form:

1. **Whiten and decompose**: ``T = TT-SVD(W L)`` with the plan's shapes and ranks. TT-SVD's
   quasi-optimality (``‖W L − T‖ ≤ sqrt(d − 1) · best``) now holds in the output norm. The
   planner is run on ``W L`` too, so the budget goes where the *output* error falls fastest.
2. **Un-whiten**: ``Ŵ = T L⁻¹``. When the input index ``j`` lives on one core only (the
   split layout with one input core, which includes the two-core train, i.e. the low-rank
   case), ``L⁻¹`` acts on that core alone, ``G'_k[a, i, :, b] = G_k[a, i, :, b] L⁻¹``,
   and the result is a TT-matrix with the same ranks: the un-whitening is exact and
   ``‖(W − Ŵ) L‖ = ‖W L − T‖``. Otherwise ``T L⁻¹`` leaves the TT format: it is rounded back
   to the ranks (TT-SVD of ``T L⁻¹``; the weight-only TT-SVD of ``W`` is the fallback start
   when it is better in the output norm), then refined.
3. **Refine** (the inexact case, or on request): a few L-BFGS iterations on all cores at
   once on the objective ``‖(W − Ŵ) L‖² / ‖W L‖²`` (the ALS normal equations of one core
   are an ``r m n r``-square system per core; a joint quasi-Newton step on the same
   objective costs one dense reconstruction per iteration, which is cheap at layer sizes).
   A refinement that does not lower the objective is dropped.

The ridge: ``C + λ I`` with ``λ = damping · tr(C) / N`` keeps ``L`` invertible when the
calibration rows do not span every input direction (fewer rows than ``N``, dead features),
and keeps some weight-error control in the directions the calibration never excites; the
reported output error uses ``C`` itself.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..decompose import tt_svd
from ..errors import InvalidInputError, ShapeError
from ..tt_matrix import TTMatrix

__all__ = [
    "WhitenedResult",
    "decompose_whitened",
    "gram_of",
    "output_error",
    "whitened_weight",
    "whitening",
]


def as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise InvalidInputError(
        f"{what} must be a torch tensor or a numpy array of inputs, got {type(x).__name__}."
    )


def check_finite(t: torch.Tensor, what: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InvalidInputError(
            f"{what} contains NaN or Inf; calibration inputs must be finite (drop or fix those "
            "rows)."
        )


def gram_of(x: Any, width: int, what: str = "calibration") -> torch.Tensor:
    """``XᵀX`` in float64 for inputs ``x`` of shape ``(..., width)``, checked.

    Examples
    --------
    >>> g = gram_of(torch.ones(10, 3), 3)
    >>> g.shape, float(g[0, 0])
    (torch.Size([3, 3]), 10.0)
    """
    t = as_tensor(x, what)
    if not t.is_floating_point():
        raise InvalidInputError(f"{what} has dtype {t.dtype}; expected floating inputs.")
    if t.ndim < 1 or int(t.shape[-1]) != width:
        raise ShapeError(
            f"{what} has shape {tuple(t.shape)}; expected (..., {width}): rows of inputs of the "
            f"layer's width in_features={width}."
        )
    check_finite(t, what)
    rows = t.detach().reshape(-1, width).double()  # (n, N)
    return rows.T @ rows  # (N, N)


def whitening(gram: torch.Tensor, damping: float = 0.01) -> torch.Tensor:
    """The lower Cholesky factor ``L`` of ``C + λI``, ``λ = damping · tr(C) / N``.

    Examples
    --------
    >>> L = whitening(torch.eye(4) * 4.0, damping=0.0)
    >>> torch.allclose(L, 2.0 * torch.eye(4, dtype=L.dtype))
    True
    """
    if (
        isinstance(damping, bool)
        or not isinstance(damping, numbers.Real)
        or not 0 <= float(damping) < 1e6
    ):
        raise InvalidInputError(f"damping must be a number >= 0, got {damping!r}.")
    c = gram.double()
    n = c.shape[0]
    scale = float(torch.trace(c)) / n
    if scale <= 0:
        return torch.eye(n, dtype=torch.float64, device=c.device)
    lam = float(damping) * scale
    eye = torch.eye(n, dtype=torch.float64, device=c.device)
    for boost in (1.0, 10.0, 100.0, 1e3, 1e4):  # a singular C with damping=0, or round-off
        factor, info = torch.linalg.cholesky_ex(c + max(lam, 1e-12 * scale) * boost * eye)
        if int(info) == 0:
            return factor
    raise InvalidInputError("the calibration Gram matrix is not positive semi-definite.")


def whitened_weight(
    weight: torch.Tensor, gram: torch.Tensor, damping: float = 0.01
) -> torch.Tensor:
    """``W L`` (float64): the weight whose plain TT approximation error is the output error."""
    return weight.double() @ whitening(gram, damping)


def output_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """``‖X (W − Ŵ)ᵀ‖ / ‖X Wᵀ‖`` from the Gram ``C = XᵀX`` (0 for a zero output)."""
    c = gram.double()
    w = weight.double()
    e = w - approx.double()
    num = float(torch.einsum("ij,jk,ik->", e, c, e))
    den = float(torch.einsum("ij,jk,ik->", w, c, w))
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0


@dataclass
class WhitenedResult:
    """What :func:`decompose_whitened` did.

    Attributes
    ----------
    ttm : TTMatrix
        The approximation ``Ŵ`` (float64 torch cores).
    whitened_error : float
        ``‖(W − Ŵ) L‖ / ‖W L‖`` (the damped output error that was minimised).
    exact_unwhitening : bool
        Whether the input index sits on one core (``Ŵ = T L⁻¹`` exactly).
    refined : bool
        Whether the L-BFGS refinement ran and was kept.
    """

    ttm: TTMatrix
    whitened_error: float
    exact_unwhitening: bool
    refined: bool


def _rel(w_l: torch.Tensor, approx: torch.Tensor, factor: torch.Tensor) -> float:
    den = float(torch.linalg.norm(w_l))
    return float(torch.linalg.norm(w_l - approx @ factor)) / den if den > 0 else 0.0


def decompose_whitened(
    weight: torch.Tensor,
    gram: torch.Tensor,
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    ranks: Sequence[int],
    *,
    damping: float = 0.01,
    refine_steps: int | None = None,
) -> WhitenedResult:
    """TT-matrix ``Ŵ`` with the given shapes and ranks minimising ``‖X (W − Ŵ)ᵀ‖`` (module notes).

    Parameters
    ----------
    weight : torch.Tensor
        ``(M, N)``, decomposed in float64.
    gram : torch.Tensor
        ``XᵀX`` of the calibration inputs, ``(N, N)`` (see :func:`gram_of`).
    row_shape, col_shape, ranks
        The TT-matrix (e.g. a :class:`~ttdecomp.Plan`'s).
    damping : float
        Relative ridge of the whitening (see :func:`whitening`).
    refine_steps : int, optional
        L-BFGS iterations after un-whitening; default 0 when the un-whitening is exact and
        40 otherwise.

    Returns
    -------
    WhitenedResult

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> W = torch.randn(16, 16, generator=g, dtype=torch.float64)
    >>> X = torch.randn(200, 16, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, 16)
    >>> C = X.T @ X
    >>> res = decompose_whitened(W, C, (1, 16), (16, 1), (1, 4, 1))
    >>> plain = tt_svd(W, [1, 4, 1], row_shape=(1, 16), col_shape=(16, 1))
    >>> output_error(W, res.ttm.full(), C) < output_error(W, plain.full(), C)
    True
    """
    w = weight.detach().double()
    factor = whitening(gram, damping)  # L, (N, N) lower
    w_l = w @ factor  # (M, N)
    ranks = list(ranks)
    t = tt_svd(w_l, ranks, row_shape=row_shape, col_shape=col_shape)
    inv = torch.linalg.solve_triangular(
        factor, torch.eye(factor.shape[0], dtype=torch.float64, device=factor.device), upper=False
    )  # L⁻¹
    inputs = [k for k, n in enumerate(t.col_shape) if n > 1]
    exact = len(inputs) == 1
    if exact:
        k = inputs[0]
        cores = list(t.cores)
        cores[k] = torch.einsum("aijb,jn->ainb", cores[k], inv)  # G_k · L⁻¹ on the input index
        ttm = TTMatrix(cores)
    else:
        rounded = tt_svd(t.full() @ inv, ranks, row_shape=row_shape, col_shape=col_shape)
        plain = tt_svd(w, ranks, row_shape=row_shape, col_shape=col_shape)
        ttm = min(rounded, plain, key=lambda a: _rel(w_l, a.full(), factor))
    err = _rel(w_l, ttm.full(), factor)
    steps = (0 if exact else 40) if refine_steps is None else int(refine_steps)
    refined = False
    if steps > 0 and err > 0:
        better, better_err = _refine(ttm, w_l, factor, steps)
        if better_err < err:
            ttm, err, refined = better, better_err, True
    return WhitenedResult(ttm, err, exact, refined)


def _refine(
    ttm: TTMatrix, w_l: torch.Tensor, factor: torch.Tensor, steps: int
) -> tuple[TTMatrix, float]:
    """L-BFGS on every core of ``Ŵ`` for ``‖W L − Ŵ L‖² / ‖W L‖²``.

    Iterated in float32 (the ``(M, N) @ (N, N)`` product per evaluation dominates; float32
    halves it), at most ``steps`` iterations and ``steps + steps // 4`` evaluations; the
    caller compares the result with the start in float64.
    """
    shapes = [tuple(c.shape) for c in ttm.cores]
    sizes = [c.numel() for c in ttm.cores]
    target, fac = w_l.float(), factor.float()
    flat = torch.cat([c.detach().float().reshape(-1) for c in ttm.cores]).requires_grad_(True)
    den = float(torch.linalg.norm(target)) ** 2 or 1.0
    opt = torch.optim.LBFGS(
        [flat], max_iter=steps, max_eval=steps + steps // 4, line_search_fn="strong_wolfe"
    )

    def cores_of(v: torch.Tensor) -> list[torch.Tensor]:
        return [part.reshape(s) for part, s in zip(torch.split(v, sizes), shapes)]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.linalg.norm(target - TTMatrix(cores_of(flat)).full() @ fac) ** 2 / den
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    out = TTMatrix([c.detach().double().clone() for c in cores_of(flat.detach())])
    return out, _rel(w_l, out.full(), factor)
