"""The one truncation kernel: a matrix to its best rank-``r`` factorisation under a budget.

:func:`truncate` (public, re-exported as :func:`ttdecomp.truncate`) and
:func:`truncate_unfolding` (its per-bond form, shared by the TT-SVD sweep of
:mod:`ttdecomp.decompose` and the rounding sweep of :mod:`ttdecomp.rounding`) choose the
rank from the tail energy of the singular values, on the array's device, and return a
:class:`Truncation` carrying the discarded energy, so every algorithm built on it can
state a rigorous error bound. The SVD comes from an exact path (QR-first or LAPACK SVD
with its fallbacks, :func:`ttdecomp._backend.left_svd`) or, on large unfoldings where it
provably makes the same rank decision, from the eigen-decomposition of the small Gram
matrix, whose error is then measured rather than estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from ._backend import (
    conj_transpose,
    eigh_desc,
    get_namespace,
    hermitian_trace,
    host_floats,
    is_numpy,
    is_torch,
    left_svd,
    qr,
    real_dtype,
    residual_sq,
    to_float,
)

__all__ = ["GRAM_MIN_SIZE", "Truncation", "truncate", "truncate_unfolding"]


@dataclass(frozen=True)
class Truncation:
    """Result of :func:`truncate`: the kept factor, the remainder, the discarded energy."""

    left: Any
    """``(m, r)`` matrix with orthonormal columns."""
    right: Any
    """``(r, n)`` remainder ``leftᴴ @ a``, so that ``a ≈ left @ right``."""
    rank: int
    tail_sq: float
    """``‖a − left @ right‖²_F`` (the squared discarded singular values)."""


def truncate(
    a: Any, *, max_rank: int | None = None, tol_sq: float = 0.0, method: str = "auto"
) -> Truncation:
    """Best rank-``r`` factorisation ``a ≈ left @ right`` under a rank cap and an energy budget.

    The rank is the smallest ``r ≤ max_rank`` whose discarded energy
    ``Σ_{i>r} σ_i²`` is at most ``tol_sq`` (and at least 1). The tail sums are computed
    on the array's device; only the chosen rank comes back to the host.

    Parameters
    ----------
    a : array, shape (m, n)
    max_rank : int, optional
        Upper bound on ``r``.
    tol_sq : float
        Absolute squared Frobenius error allowed (``0`` keeps every nonzero direction up to
        ``max_rank``).
    method : {"auto", "svd", "qr", "gram"}
        The SVD path, see :func:`ttdecomp._backend.left_svd`. ``"auto"`` takes the Gram
        path below on large unfoldings whenever it provably picks the rank the exact SVD
        would pick, and an exact path (QR-first or LAPACK SVD) otherwise.

    Notes
    -----
    The Gram path eigen-decomposes the small side of ``a aᴴ`` (or ``aᴴ a``). Its
    eigenvalues carry an absolute error of about ``η = c (p + √q) u ‖a‖²_F`` (``p × q``
    the sides of ``a``, ``u`` the unit round-off), i.e. singular values below
    ``√u · σ_max`` are lost. ``"auto"`` uses it only when every rank decision is
    insensitive to that error: the discarded-energy estimate lies more than ``p η`` away
    from ``tol_sq`` at the chosen rank and the one below it, and (with ``tol_sq = 0``)
    the last kept eigenvalue exceeds ``η``. The returned ``tail_sq`` is then not the
    estimate but the measured ``‖a − left @ right‖²_F`` (plus its own round-off), so it
    stays a rigorous bound; were it above ``tol_sq``, the exact path is taken instead.
    ``method="gram"`` skips the insensitivity test but keeps the measurement and the
    fall-back, so the ``tol_sq`` guarantee holds on every path.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.outer([1.0, 2.0], [3.0, 4.0, 5.0])
    >>> t = truncate(a, tol_sq=1e-20)
    >>> t.rank, bool(np.allclose(t.left @ t.right, a))
    (1, True)
    """
    return truncate_unfolding(a, max_rank, tol_sq, method)


def truncate_unfolding(
    a: Any, max_rank: int | None, tol_sq: float, method: str, gram: Any = None
) -> Truncation:
    """:func:`truncate` with positional arguments, optionally given the small-side Gram
    matrix of ``a`` (wide: ``a aᴴ``): the per-bond call of the TT-SVD and rounding sweeps."""
    xp = get_namespace(a)
    if method == "gram" or (method == "auto" and _gram_pays(a)):
        cut = _gram_truncate(xp, a, max_rank, tol_sq, certain=method == "auto", g=gram)
        if cut is not None:
            return cut
        method = "auto"
    u, s = left_svd(a, method)
    if is_numpy(s):  # host arrays: choose the rank in plain Python (no dispatch overhead)
        return _truncate_host(a, u, s.tolist(), max_rank, tol_sq)
    k = s.shape[0]
    s2 = s * s
    tails = xp.flip(xp.cumulative_sum(xp.flip(s2, axis=0)), axis=0)  # tails[i] = Σ_{j≥i} σ_j²
    r = int(xp.sum(xp.astype(tails > tol_sq, xp.int32))) if tol_sq > 0 else k
    if tol_sq == 0:
        # drop exact zeros only: rank-deficient input gives the smaller rank.
        r = max(int(xp.sum(xp.astype(s > 0, xp.int32))), 1)
    if max_rank is not None:
        r = min(r, max_rank)
    r = max(r, 1)
    tail_sq = to_float(tails[r]) if r < k else 0.0
    left = u[:, :r]
    right = conj_transpose(xp, left) @ a
    return Truncation(left, right, r, tail_sq)


def _truncate_host(
    a: Any, u: Any, s: list[float], max_rank: int | None, tol_sq: float
) -> Truncation:
    """The rank choice of :func:`truncate` for numpy, on a list of singular values."""
    k = len(s)
    tails = [0.0] * (k + 1)  # tails[i] = Σ_{j≥i} σ_j²
    for i in range(k - 1, -1, -1):
        tails[i] = tails[i + 1] + s[i] * s[i]
    if tol_sq > 0:
        r = sum(t > tol_sq for t in tails[:k])
    else:  # drop exact zeros only: rank-deficient input gives the smaller rank.
        r = sum(x > 0 for x in s)
    if max_rank is not None:
        r = min(r, max_rank)
    r = max(r, 1)
    left = u[:, :r]
    return Truncation(left, left.conj().T @ a, r, tails[r] if r < k else 0.0)


# "auto" tries the Gram path on unfoldings with at least this many entries; below it a
# LAPACK SVD costs little more than the Gram product and eigen-decomposition.
GRAM_MIN_SIZE = 1 << 10
# Safety factor on the round-off level of the Gram eigenvalues (see truncate's notes).
_GRAM_SAFETY = 16.0


def _gram_pays(a: Any) -> bool:
    m, n = a.shape
    # autograd through eigh of a Gram matrix is less robust than through the SVD
    return m * n >= GRAM_MIN_SIZE and not (is_torch(a) and a.requires_grad)


@dataclass(frozen=True)
class _GramSpectrum:
    """Eigenpairs of the small Gram matrix of ``a``, with the round-off level they carry."""

    lam: list[float]  # eigenvalues on the host, descending
    v: Any  # eigenvectors: all of them (``full``) or the top ``cap``
    full: bool
    total: float  # ‖a‖²_F
    u: float  # unit round-off of a's real dtype
    eta: float  # absolute error level of an eigenvalue


def _gram_truncate(
    xp: Any, a: Any, max_rank: int | None, tol_sq: float, *, certain: bool, g: Any = None
) -> Truncation | None:
    """Truncation from the eigen-decomposition of the small Gram matrix, or ``None``.

    Three phases: the spectrum of the Gram matrix (:func:`_gram_spectrum`), the rank it
    implies (:func:`_gram_rank`), and the factors with their measured tail
    (:func:`_gram_factors`). ``None`` means "use an exact path": the input is zero, the
    eigensolver failed, the rank decision is sensitive to the Gram round-off (when
    ``certain``), or the measured error exceeds ``tol_sq``.
    """
    p = min(a.shape)
    cap = p if max_rank is None else max(1, min(int(max_rank), p))
    spec = _gram_spectrum(xp, a, cap, g)
    if spec is None:
        return None
    chosen = _gram_rank(spec, p, cap, tol_sq, certain=certain)
    if chosen is None:
        return None
    r, est_r, slack = chosen
    cut = _gram_factors(xp, a, spec, r)
    if tol_sq > 0 and cut.tail_sq > tol_sq and est_r + slack <= tol_sq:
        return None  # the rank was meant to meet tol_sq (not the cap's) and does not
    return cut


def _gram_spectrum(xp: Any, a: Any, cap: int, g: Any = None) -> _GramSpectrum | None:
    """Phase 1: the eigenpairs of ``a aᴴ`` (wide) or ``aᴴ a`` (tall); ``None`` if unusable."""
    m, n = a.shape
    p = min(m, n)
    if g is None:
        ah = conj_transpose(xp, a)
        g = a @ ah if n >= m else ah @ a  # (p, p)
    total = hermitian_trace(g)  # ‖a‖²_F
    if not (0.0 < total < math.inf):
        return None
    # all eigenvectors (the discarded ones measure the error in one GEMM), or only the
    # top `cap` where a partial eigensolver saves real work
    full = not (is_numpy(a) and p >= 64 and 2 * cap <= p)
    try:
        lam, v = eigh_desc(g, None if full else cap)
    except (ArithmeticError, RuntimeError, ValueError):  # LinAlgError and torch's
        return None
    u = float(xp.finfo(real_dtype(xp, a.dtype)).eps)
    eta = _GRAM_SAFETY * (p + math.sqrt(max(m, n))) * u * total  # eigenvalue error level
    return _GramSpectrum(host_floats(lam), v, full, total, u, eta)


def _gram_rank(
    spec: _GramSpectrum, p: int, cap: int, tol_sq: float, *, certain: bool
) -> tuple[int, float, float] | None:
    """Phase 2: the rank, its discarded-energy estimate and that estimate's error level.

    ``None`` when ``certain`` and the decision could change within the round-off.
    """
    lam_h = spec.lam
    slack = p * spec.eta  # error level of a discarded-energy estimate
    est = [spec.total]  # est[r] ≈ Σ_{i ≥ r} σ_i², r = 0..cap
    for lam_i in lam_h[:cap]:
        est.append(max(est[-1] - lam_i, 0.0))
    if cap == p:
        est[p] = 0.0  # nothing discarded: exact

    if tol_sq > 0:

        def smallest(shift: float) -> int:
            for r in range(1, cap + 1):
                if est[r] + (shift if r < p else 0.0) <= tol_sq:
                    return r
            return cap

        r = smallest(slack)
        if certain and smallest(-slack) != r:
            return None
    else:  # keep every nonzero direction up to the cap, as the exact path does
        if certain and not lam_h[cap - 1] > spec.eta:
            return None
        r = max(1, min(cap, sum(lam_i > 0 for lam_i in lam_h[:cap])))
    return r, est[r], slack


def _gram_factors(xp: Any, a: Any, spec: _GramSpectrum, r: int) -> Truncation:
    """Phase 3: the kept factors and the measured (not estimated) discarded energy."""
    m, n = a.shape
    p = min(m, n)
    wide = n >= m
    if r == p:  # nothing dropped: any orthonormal basis of the small side is exact
        if wide:
            return Truncation(xp.eye(m, dtype=a.dtype, device=_device(a)), a, r, 0.0)
        left, right = qr(a)
        return Truncation(left, right, r, 0.0)

    # The error is measured, not estimated, so tail_sq stays a rigorous bound.
    # Full basis W = [V_r, W_⊥]: the error is ‖W_⊥ᴴ a‖ (resp. ‖a W_⊥‖), read off the same
    # GEMM that gives the kept factor; up to ‖I − W Wᴴ‖ = O(p u), the GEMM round-off γ_p
    # and, for a tall a, the backward error of the QR of a V_r (O(m u)): `norm_slack`.
    u, total, v = spec.u, spec.total, spec.v
    norm_slack = 4.0 * (p if wide else p + m) * (math.sqrt(p) + 4.0) * u * math.sqrt(total)
    vr = v[:, :r]
    if spec.full:
        if wide:
            b = conj_transpose(xp, v) @ a  # (p, n)
            left, right, rest = vr, b[:r, :], b[r:, :]
        else:
            b = a @ v  # (m, p)
            left, rr = qr(b[:, :r])
            right, rest = rr @ conj_transpose(xp, vr), b[:, r:]
        res_sq = _sum_sq(rest) * (1.0 + rest.shape[0] * rest.shape[1] * u)
        tail_sq = (math.sqrt(res_sq) + norm_slack) ** 2
    else:
        if wide:
            left, right = vr, conj_transpose(xp, vr) @ a
        else:
            left, rr = qr(a @ vr)
            right = rr @ conj_transpose(xp, vr)
        # ‖a‖² − ‖right‖² with its worst-case round-off (sums of n + m and r n terms, the
        # GEMM for right, orthonormality of left); measured directly when that is loose
        kept = _sum_sq(right)
        diff = total - kept
        diff_slack = ((r + 2) * (m + n) + 4 * p * (math.sqrt(r) + 4)) * u * total
        if diff_slack <= 1e-3 * diff:
            tail_sq = diff + diff_slack
        else:
            res = math.sqrt(residual_sq(a, left, right) * (1.0 + m * n * u))
            tail_sq = (res + norm_slack) ** 2
    return Truncation(left, right, r, tail_sq)


def _device(x: Any) -> Any:
    return array_api_compat.device(x)


def _sum_sq(x: Any) -> float:
    """``‖x‖²_F`` as a Python float (outside autograd)."""
    if is_numpy(x):
        if x.flags.c_contiguous:
            x = x.ravel()
            return float(np.vdot(x, x).real)
        return float(np.linalg.norm(x) ** 2)
    xp = get_namespace(x)
    return to_float(xp.linalg.vector_norm(x)) ** 2
