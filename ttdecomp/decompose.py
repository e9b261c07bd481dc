"""TT-SVD and the one truncation kernel every algorithm uses.

Guarantee
---------
With ``eps`` given, :func:`tt_svd` returns a train with
``‖A − TT‖_F ≤ eps · ‖A‖_F``: each of the ``d − 1`` truncations discards singular
values whose energy is at most ``δ² = eps² ‖A‖²_F / (d − 1)``, and the errors of the
sweep add up in squares (Oseledets, 2011, Thm. 2.2). The sum of the squared discarded
tails, ``error_bound``, is stored on the result: a rigorous bound computed from the
singular values, without forming the dense tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from ._backend import (
    SVD_METHODS,
    check_array,
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
    small_blas,
    to_float,
)
from ._validation import check_eps, clip_ranks, normalize_ranks
from .errors import InvalidInputError, ShapeError
from .tensor_train import TensorTrain
from .tt_matrix import TTMatrix

__all__ = ["Truncation", "truncate", "tt_svd"]


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
    return _truncate(a, max_rank, tol_sq, method)


def _truncate(
    a: Any, max_rank: int | None, tol_sq: float, method: str, gram: Any = None
) -> Truncation:
    """:func:`truncate`, optionally given the small-side Gram matrix of ``a`` (wide: ``a aᴴ``)."""
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
_GRAM_MIN_SIZE = 1 << 10
# Safety factor on the round-off level of the Gram eigenvalues (see truncate's notes).
_GRAM_SAFETY = 16.0


def _gram_pays(a: Any) -> bool:
    m, n = a.shape
    # autograd through eigh of a Gram matrix is less robust than through the SVD
    return m * n >= _GRAM_MIN_SIZE and not (is_torch(a) and a.requires_grad)


def _gram_truncate(
    xp: Any, a: Any, max_rank: int | None, tol_sq: float, *, certain: bool, g: Any = None
) -> Truncation | None:
    """Truncation from the eigen-decomposition of the small Gram matrix, or ``None``.

    ``None`` means "use an exact path": the input is zero, the eigensolver failed, the
    rank decision is sensitive to the Gram round-off (when ``certain``), or the measured
    error exceeds ``tol_sq``.
    """
    m, n = a.shape
    p = min(m, n)
    cap = p if max_rank is None else max(1, min(int(max_rank), p))
    wide = n >= m
    if g is None:
        ah = conj_transpose(xp, a)
        g = a @ ah if wide else ah @ a  # (p, p)
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
    lam_h = host_floats(lam)
    u = float(xp.finfo(real_dtype(xp, a.dtype)).eps)
    eta = _GRAM_SAFETY * (p + math.sqrt(max(m, n))) * u * total  # eigenvalue error level
    slack = p * eta  # error level of a discarded-energy estimate
    est = [total]  # est[r] ≈ Σ_{i ≥ r} σ_i², r = 0..cap
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
        if certain and not lam_h[cap - 1] > eta:
            return None
        r = max(1, min(cap, sum(lam_i > 0 for lam_i in lam_h[:cap])))

    if r == p:  # nothing dropped: any orthonormal basis of the small side is exact
        if wide:
            return Truncation(xp.eye(m, dtype=a.dtype, device=_device(a)), a, r, 0.0)
        left, right = qr(a)
        return Truncation(left, right, r, 0.0)

    # The error is measured, not estimated, so tail_sq stays a rigorous bound.
    # Full basis W = [V_r, W_⊥]: the error is ‖W_⊥ᴴ a‖ (resp. ‖a W_⊥‖), read off the same
    # GEMM that gives the kept factor; up to ‖I − W Wᴴ‖ = O(p u), the GEMM round-off γ_p
    # and, for a tall a, the backward error of the QR of a V_r (O(m u)): `norm_slack`.
    norm_slack = 4.0 * (p if wide else p + m) * (math.sqrt(p) + 4.0) * u * math.sqrt(total)
    vr = v[:, :r]
    if full:
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
    if tol_sq > 0 and tail_sq > tol_sq and est[r] + slack <= tol_sq:
        return None  # the rank was meant to meet tol_sq (not the cap's) and does not
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


def _sweep(
    xp: Any, work: Any, modes: tuple[int, ...], caps: tuple[int, ...], delta_sq: float, method: str
) -> tuple[list[Any], float]:
    """The left-to-right TT-SVD sweep: the cores and the sum of the squared tails."""
    d = len(modes)
    cores = []
    total_tail = 0.0
    r_prev = 1
    rest = work
    gram, gram_next = None, None
    if method == "auto" and d >= 3:
        gram, gram_next = _first_grams(xp, work, modes)
    for k in range(d - 1):
        rest = xp.reshape(rest, (r_prev * modes[k], -1))  # (r_{k-1} n_k, n_{k+1}...n_d)
        cut = _truncate(rest, caps[k + 1], delta_sq, method, gram)
        # the first bond kept everything as is: the second unfolding is the input's own
        gram = gram_next if k == 0 and cut.right is rest else None
        cores.append(xp.reshape(cut.left, (r_prev, modes[k], cut.rank)))  # (r_{k-1}, n_k, r_k)
        total_tail += cut.tail_sq
        rest = cut.right  # (r_k, n_{k+1}...n_d)
        r_prev = cut.rank
    cores.append(xp.reshape(rest, (r_prev, modes[-1], 1)))  # (r_{d-1}, n_d, 1)
    return cores, total_tail


def _first_grams(xp: Any, work: Any, modes: tuple[int, ...]) -> tuple[Any, Any]:
    """Gram matrices of the first two unfoldings from one pass over the data, or ``None``s.

    ``G₂ = A₍₂₎ A₍₂₎ᴴ`` (rows ``(n₁, n₂)``) is one GEMM; ``G₁ = A₍₁₎ A₍₁₎ᴴ`` is its partial
    trace over ``n₂``. Worth it when both unfoldings are wide and large (then the Gram
    path runs on both and the data is read once instead of twice).
    """
    n1, n2 = modes[0], modes[1]
    p2 = n1 * n2
    rest = math.prod(modes[2:])
    if p2 > 256 or rest < p2 or p2 * rest < 4 * _GRAM_MIN_SIZE:
        return None, None
    if is_torch(work) and work.requires_grad:
        return None, None
    a2 = xp.reshape(work, (p2, rest))
    g2 = a2 @ conj_transpose(xp, a2)  # (n1 n2, n1 n2)
    g4 = xp.reshape(g2, (n1, n2, n1, n2))
    g1 = g4[:, 0, :, 0]
    for j in range(1, n2):
        g1 = g1 + g4[:, j, :, j]
    return g1, g2


def _tensorize_matrix(xp: Any, a: Any, row_shape: tuple, col_shape: tuple) -> Any:
    """(M, N) → (m1 n1, ..., md nd): the reshaping under which a TT is a TT-matrix."""
    d = len(row_shape)
    t = xp.reshape(a, row_shape + col_shape)  # (m1..md, n1..nd)
    perm = tuple(i for k in range(d) for i in (k, d + k))
    t = xp.permute_dims(t, perm)  # (m1, n1, ..., md, nd)
    return xp.reshape(t, tuple(m * n for m, n in zip(row_shape, col_shape)))


def _matrix_shapes(
    M: int,
    N: int,
    row_shape: Sequence[int] | None,
    col_shape: Sequence[int] | None,
    layout: str,
    n_cores: int | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if row_shape is None and col_shape is None:
        from .shapes import tensorize

        return tensorize(M, N, n_cores=n_cores, layout=layout)
    if row_shape is None or col_shape is None:
        raise ShapeError(
            "give both row_shape and col_shape (one entry per core, 1 where a core has no "
            "row or column factor), or neither to have them chosen."
        )
    row_shape, col_shape = tuple(int(m) for m in row_shape), tuple(int(n) for n in col_shape)
    if len(row_shape) != len(col_shape):
        raise ShapeError(
            f"row_shape {row_shape} and col_shape {col_shape} must have the same length (one "
            "entry per core; use 1 for a core without a row or column factor)."
        )
    if any(s < 1 for s in row_shape + col_shape):
        raise ShapeError(f"row_shape {row_shape} and col_shape {col_shape} must be positive.")
    if math.prod(row_shape) != M or math.prod(col_shape) != N:
        raise ShapeError(
            f"row_shape {row_shape} multiplies to {math.prod(row_shape)} and col_shape "
            f"{col_shape} to {math.prod(col_shape)}, but the matrix is {M} x {N}; the "
            "factors must multiply to the matrix dimensions (see ttdecomp.tensorize)."
        )
    return row_shape, col_shape


def tt_svd(
    a: Any,
    ranks: int | Sequence[int] | None = None,
    *,
    eps: float | None = None,
    row_shape: Sequence[int] | None = None,
    col_shape: Sequence[int] | None = None,
    layout: str = "interleaved",
    n_cores: int | None = None,
    as_matrix: bool | None = None,
    method: str = "auto",
) -> TensorTrain | TTMatrix:
    """Tensor-train decomposition by sequential truncated SVDs (TT-SVD).

    Parameters
    ----------
    a : array
        The tensor (any number of axes), or a 2-D weight matrix ``W`` of shape ``(M, N)``.
        numpy, torch (device, dtype and autograd kept) or any array-API array, real or
        complex floating point, finite.
    ranks : int or sequence of int, optional
        An int caps every bond at that rank (bonds that cannot reach it, e.g. next to a
        small boundary mode, get their attainable maximum). A sequence of ``d + 1`` ranks
        with boundary ones, or of the ``d − 1`` interior ranks, asks for those ranks
        exactly; entries above the attainable maximum ``min(∏ left modes, ∏ right
        modes)`` are clipped with a :class:`~ttdecomp.errors.RankClippedWarning`.
    eps : float, optional
        Relative Frobenius tolerance in ``(0, 1)``: the result satisfies
        ``‖A − TT‖_F ≤ eps · ‖A‖_F``. Combined with ``ranks``, the ranks are the smaller
        of the two choices (and the bound on the result tells what was achieved).
    row_shape, col_shape : sequence of int, optional
        For a matrix: the factors of ``M`` and ``N``, one entry per core (1 where a core
        has no row or column factor). Chosen by :func:`ttdecomp.tensorize` when omitted.
    layout : {"interleaved", "split"}
        Layout of the chosen factorisation when the shapes are omitted. ``"interleaved"``
        (default) pairs a row and a column factor in every core, the classic TT-matrix;
        ``"split"`` puts input factors first and output factors last (TT-LoRA).
    n_cores : int, optional
        Number of cores of the chosen factorisation.
    as_matrix : bool, optional
        For a 2-D input: ``True`` (default) returns a :class:`TTMatrix` over the balanced
        factorisation above; ``False`` decomposes the array as a 2-mode tensor.
    method : {"auto", "svd", "qr", "gram"}
        SVD path for each unfolding. ``"auto"`` uses the eigen-decomposition of the small
        Gram matrix on large unfoldings wherever that provably picks the same rank as an
        exact SVD (see :func:`truncate`), and otherwise a QR-first reduction on very wide
        or tall unfoldings (exact to working precision) or LAPACK's SVD. ``"gram"`` forces
        the Gram path, which loses singular values below ``√u · σ_max`` (``u`` the unit
        round-off): its ranks may then differ from the SVD's. On every path the error is
        measured or computed from exact-path singular values, so ``error_bound`` and the
        eps guarantee hold.

    Returns
    -------
    TensorTrain or TTMatrix
        With ``error_bound`` set to ``sqrt(Σ discarded σ²) / ‖A‖_F`` (0 when exact).

    Raises
    ------
    BackendMismatchError
        Integer, boolean or non-array input.
    InvalidInputError
        NaN/Inf in ``a``, ``eps`` outside ``(0, 1)``, an unknown ``method`` or ``layout``.
    RankError
        Ranks of the wrong length, with non-unit boundaries, or below 1.
    ShapeError
        ``row_shape``/``col_shape`` that do not multiply to ``M``/``N``.

    Examples
    --------
    >>> import numpy as np
    >>> import ttdecomp as tt
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((4, 5, 6))
    >>> exact = tt.tt_svd(A)
    >>> exact.ranks, bool(np.allclose(exact.full(), A))
    ((1, 4, 6, 1), True)
    >>> approx = tt.tt_svd(A, eps=0.3)
    >>> approx.error_bound <= 0.3, bool(np.isclose(approx.relative_error(A), approx.error_bound))
    (True, True)
    >>> W = rng.standard_normal((64, 32))
    >>> ttm = tt.tt_svd(W, ranks=8, row_shape=(8, 8), col_shape=(4, 8))
    >>> ttm.shape, ttm.ranks
    ((64, 32), (1, 8, 1))
    """
    xp = check_array(a, "a", finite=False)  # NaN/Inf: checked through the norm below
    eps = check_eps(eps)
    if method not in SVD_METHODS:
        raise InvalidInputError(f"method must be one of {SVD_METHODS}, got {method!r}.")
    if a.ndim == 0:
        raise ShapeError("tt_svd needs an array with at least one axis, got a 0-d array.")
    matrix = a.ndim == 2 and as_matrix is not False
    if a.ndim != 2 and (row_shape is not None or col_shape is not None or as_matrix):
        raise ShapeError(
            f"row_shape/col_shape/as_matrix apply to 2-D matrices, but the input has shape "
            f"{tuple(a.shape)}."
        )
    if matrix:
        if layout not in ("interleaved", "split"):
            raise InvalidInputError(f"layout must be 'interleaved' or 'split', got {layout!r}.")
        rs, cs = _matrix_shapes(a.shape[0], a.shape[1], row_shape, col_shape, layout, n_cores)
        modes = tuple(m * n for m, n in zip(rs, cs))
    else:
        modes = tuple(int(s) for s in a.shape)
    d = len(modes)
    explicit = ranks is not None and not isinstance(ranks, int)
    requested = normalize_ranks(ranks, d)
    caps = clip_ranks(requested, modes, warn=explicit)

    norm = to_float(xp.linalg.vector_norm(a))
    if not math.isfinite(norm):  # a NaN or Inf entry (or overflow): the full check
        check_array(a, "a")
    delta_sq = 0.0 if eps is None or d == 1 else (eps * norm) ** 2 / (d - 1)

    work = _tensorize_matrix(xp, a, rs, cs) if matrix else a
    with small_blas(a, math.prod(a.shape)):
        cores, total_tail = _sweep(xp, work, modes, caps, delta_sq, method)

    bound = math.sqrt(total_tail) / norm if norm > 0 else 0.0
    tt = TensorTrain(cores, error_bound=bound)
    if matrix:
        return TTMatrix.from_tensor_train(tt, rs, cs)
    return tt
