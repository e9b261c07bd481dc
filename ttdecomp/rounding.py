"""Orthogonalisation sweeps and TT rounding (recompression).

Rounding follows the TT-Toolbox algorithm (Oseledets, 2011, Alg. 2):

1. a right-to-left QR sweep makes cores 2..d right-orthonormal. Each triangular factor
   is divided by its norm before it moves on and the log of that norm is kept, so a
   train of 500 cores whose norm is far outside the floating-point range rounds
   without overflow or underflow;
2. a left-to-right SVD sweep truncates every bond with the tolerance
   ``δ = eps / √(d − 1) · ‖X‖``, which gives ``‖X − round(X)‖_F ≤ eps · ‖X‖_F``;
3. the norm is spread evenly over the cores (each gets ``‖X‖^(1/d)``).
"""

from __future__ import annotations

import functools
import math
from typing import Any, TypeVar

import numpy as np

from ._backend import conj_transpose, is_numpy, qr, to_float
from ._threads import small_blas
from ._truncation import Truncation, truncate_unfolding
from ._validation import (
    check_eps,
    check_finite_cores,
    check_lapack_dtype,
    clip_ranks,
    normalize_ranks,
    warn_unmet_eps,
)
from .errors import InvalidInputError
from .tensor_train import TensorTrain
from .tt_matrix import TTMatrix

__all__ = ["orthogonalize", "round"]

T = TypeVar("T", TensorTrain, TTMatrix)


def _as_tt(x: Any, fname: str) -> TensorTrain:
    if isinstance(x, TTMatrix):
        return x.to_tensor_train()
    if isinstance(x, TensorTrain):
        return x
    raise TypeError(f"{fname} takes a TensorTrain or TTMatrix, got {type(x).__name__}.")


def _like(x: T, tt: TensorTrain) -> T:
    if isinstance(x, TTMatrix):
        return TTMatrix.from_tensor_train(tt, x.row_shape, x.col_shape)
    return tt


def _rl_sweep(tt: TensorTrain) -> tuple[list[Any], float]:
    """Right-to-left QR sweep with norm balancing.

    Returns cores whose 2..d are right-orthonormal (``G Gᴴ = I`` over ``(n_k, r_k)``),
    the first core normalised to unit norm, and ``log ‖tt‖`` (``-inf`` for zero).
    """
    if is_numpy(tt.cores[0]):
        return _rl_sweep_numpy(tt)
    xp = tt._xp
    cores = list(tt.cores)
    log_norm = 0.0
    for k in range(len(cores) - 1, 0, -1):
        r, n, r2 = cores[k].shape
        mat = xp.reshape(cores[k], (r, n * r2))  # (r_{k-1}, n_k r_k)
        q, rr = qr(conj_transpose(xp, mat))  # mat = rrᴴ qᴴ; q: (n_k r_k, s), rr: (s, r_{k-1})
        s = q.shape[1]
        cores[k] = xp.reshape(conj_transpose(xp, q), (s, n, r2))  # (s, n_k, r_k)
        nrm = to_float(xp.linalg.vector_norm(rr))
        if nrm == 0.0:
            return _zero_cores(tt), -math.inf
        rr = rr / nrm
        log_norm += math.log(nrm)
        rp, np_, _ = cores[k - 1].shape
        prev = xp.reshape(cores[k - 1], (rp * np_, r)) @ conj_transpose(xp, rr)  # (.., s)
        cores[k - 1] = xp.reshape(prev, (rp, np_, s))
    nrm = to_float(xp.linalg.vector_norm(cores[0]))
    if nrm == 0.0:
        return _zero_cores(tt), -math.inf
    cores[0] = cores[0] / nrm
    return cores, log_norm + math.log(nrm)


def _ct(a: np.ndarray) -> np.ndarray:
    """Conjugate transpose of a numpy matrix (a view for real dtypes)."""
    return a.conj().T if a.dtype.kind == "c" else a.T


_QR_FUNCS: dict[str, Any] = {}  # LAPACK (geqrf, orgqr/ungqr) per dtype character


def _np_qr(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduced QR of a numpy matrix straight from LAPACK (np.linalg.qr's steps, less overhead)."""
    funcs = _QR_FUNCS.get(a.dtype.char)
    if funcs is None:
        import scipy.linalg

        names = ("geqrf", "ungqr") if a.dtype.kind == "c" else ("geqrf", "orgqr")
        funcs = _QR_FUNCS[a.dtype.char] = scipy.linalg.get_lapack_funcs(names, (a,))
    geqrf, orgqr = funcs
    k = min(a.shape)
    qr_, tau, _, info = geqrf(a)
    if info == 0:
        r = qr_[:k].copy()
        r[_lower(k)] = 0  # the upper triangle is R, below it Householder vectors
        q, _, info = orgqr(qr_[:, :k], tau, overwrite_a=1)
        if info == 0:
            return q, r
    return np.linalg.qr(a)


@functools.lru_cache(maxsize=64)
def _lower(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the strictly lower triangle of a k x k block."""
    return np.tril_indices(k, -1)


def _rl_sweep_numpy(tt: TensorTrain) -> tuple[list[Any], float]:
    """:func:`_rl_sweep` in plain numpy calls: the same steps, less dispatch per core."""
    cores = list(tt.cores)
    log_norm = 0.0
    for k in range(len(cores) - 1, 0, -1):
        r, n, r2 = cores[k].shape
        q, rr = _np_qr(_ct(cores[k].reshape(r, n * r2)))
        s = q.shape[1]
        cores[k] = _ct(q).reshape(s, n, r2)
        nrm = float(np.linalg.norm(rr))
        if nrm == 0.0:
            return _zero_cores(tt), -math.inf
        rr /= nrm
        log_norm += math.log(nrm)
        rp, np_, _ = cores[k - 1].shape
        cores[k - 1] = (cores[k - 1].reshape(rp * np_, r) @ _ct(rr)).reshape(rp, np_, s)
    nrm = float(np.linalg.norm(cores[0]))
    if nrm == 0.0:
        return _zero_cores(tt), -math.inf
    cores[0] = cores[0] / nrm
    return cores, log_norm + math.log(nrm)


def _zero_cores(tt: TensorTrain) -> list[Any]:
    xp = tt._xp
    return [xp.zeros((1, n, 1), dtype=tt.dtype, device=tt.device) for n in tt.shape]


def _spread(cores: list[Any], log_norm: float) -> list[Any]:
    """Multiply every core by ``exp(log_norm / d)``."""
    if log_norm == -math.inf:
        return cores
    factor = math.exp(log_norm / len(cores))
    return [c * factor for c in cores]


def _sweep_step(a: Any, cap: int | None, tol: float, method: str) -> Truncation:
    """One bond of the SVD sweep: :func:`truncate`, with a cheap exit when nothing goes.

    When the cap cannot bind (``cap ≥ min(m, n)``), a QR factorisation plus a lower bound
    on its smallest singular value, ``σ_min(R) ≥ 1/‖R⁻¹‖_F``, proves that every singular
    value squared exceeds ``tol``; the exact path would then keep them all, and ``(Q, R)``
    (or ``(I, a)`` for a wide ``a``) is that same factorisation in another basis, at a
    fraction of an SVD's cost on the small cores of a rounding sweep.
    """
    m, n = a.shape
    if method == "auto" and is_numpy(a) and (cap is None or cap >= min(m, n)):
        if m >= n:
            q, r = _np_qr(a)
            if _sigma_min_sq_lower(r) > 4.0 * tol:
                return Truncation(q, r, n, 0.0)
        elif _sigma_min_sq_lower(np.linalg.qr(_ct(a), mode="r")) > 4.0 * tol:
            return Truncation(np.eye(m, dtype=a.dtype), a, m, 0.0)
    return truncate_unfolding(a, cap, tol, method)


def _np_reshape(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return a.reshape(shape)


def _sigma_min_sq_lower(r: np.ndarray) -> float:
    """A lower bound on ``σ_min(r)²`` for a square upper-triangular ``r`` (0 if unsure)."""
    import scipy.linalg

    (trtri,) = scipy.linalg.get_lapack_funcs(("trtri",), (r,))
    inv, info = trtri(r, lower=0)
    if info != 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # a near-singular r: inf, not sure
        inv_f = float(np.linalg.norm(inv))
    r_f = float(np.linalg.norm(r))
    u = float(np.finfo(r.dtype).eps)
    # the computed inverse is accurate to about p u κ(r) relative: trust it only where
    # that is below 1e-3, and shave a margin off the bound
    if not (0.0 < inv_f < math.inf) or r.shape[0] * u * inv_f * r_f > 1e-3:
        return 0.0
    return (1.0 - 1e-3) / (inv_f * inv_f)


def orthogonalize(x: T, direction: str = "left") -> T:
    """The same tensor with all cores but one orthonormal.

    ``direction="left"``: cores 1..d−1 are left-orthonormal (``Σ_{r,n} conj(G) G = I``
    over the right rank) and the last core carries the norm; ``"right"``: cores 2..d are
    right-orthonormal and the first core carries the norm. Costs one QR per core.

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp import TensorTrain, orthogonalize
    >>> rng = np.random.default_rng(0)
    >>> x = TensorTrain([rng.standard_normal((1, 3, 2)), rng.standard_normal((2, 3, 1))])
    >>> y = orthogonalize(x, "left")
    >>> g = y.cores[0].reshape(3, 2)
    >>> bool(np.allclose(g.T @ g, np.eye(2))), bool(np.allclose(y.full(), x.full()))
    (True, True)
    """
    if direction not in ("left", "right"):
        raise InvalidInputError(f"direction must be 'left' or 'right', got {direction!r}.")
    tt = _as_tt(x, "orthogonalize")
    xp = tt._xp
    cores = list(tt.cores)
    if direction == "right":
        cores, log_norm = _rl_sweep(tt)
        if log_norm != -math.inf:
            cores[0] = cores[0] * math.exp(log_norm)
        return _like(x, TensorTrain(cores, error_bound=tt.error_bound))
    for k in range(len(cores) - 1):
        r, n, r2 = cores[k].shape
        q, rr = qr(xp.reshape(cores[k], (r * n, r2)))  # (r n, s), (s, r2)
        s = q.shape[1]
        cores[k] = xp.reshape(q, (r, n, s))
        nxt = cores[k + 1]
        cores[k + 1] = xp.reshape(rr @ xp.reshape(nxt, (r2, -1)), (s, nxt.shape[1], nxt.shape[2]))
    return _like(x, TensorTrain(cores, error_bound=tt.error_bound))


def round(x: T, ranks: Any = None, *, eps: float | None = None, method: str = "auto") -> T:
    """Recompress a TT (or TT-matrix) to lower ranks: TT-SVD done in TT form.

    Parameters
    ----------
    x : TensorTrain or TTMatrix
    ranks : int or sequence of int, optional
        Rank caps, as in :func:`ttdecomp.tt_svd` (an int caps every bond; an explicit
        sequence above the attainable maximum is clipped with a warning).
    eps : float, optional
        Relative tolerance in ``(0, 1)``: ``‖x − round(x)‖_F ≤ eps · ‖x‖_F`` (a
        :class:`~ttdecomp.errors.TTWarning` when ``ranks`` keep it from being met).
        Without ``eps``, only directions below the round-off level
        (``10 · d · u · ‖x‖``, ``u`` the dtype's machine epsilon) are dropped, so
        ``round(x + x)`` has the ranks of ``x``.
    method : {"auto", "svd", "qr", "gram"}
        SVD path, as in :func:`ttdecomp.tt_svd`.

    Returns
    -------
    Same type as ``x``
        With ``error_bound`` set to the relative error of this rounding (plus ``x``'s own
        bound, when it had one, as a triangle-inequality bound against ``x``'s source).

    Notes
    -----
    Cost ``O(d n r³)``. The norm is carried as a logarithm through the sweep, so trains
    with hundreds of cores round without overflow or underflow.

    Examples
    --------
    >>> import numpy as np
    >>> import ttdecomp as tt
    >>> rng = np.random.default_rng(0)
    >>> x = tt.tt_svd(rng.standard_normal((4, 4, 4, 4)), ranks=3)
    >>> y = tt.round(x + x)
    >>> y.ranks == x.ranks, bool(np.allclose(y.full(), 2 * x.full()))
    (True, True)
    """
    eps = check_eps(eps)
    tt = _as_tt(x, "round")
    check_lapack_dtype(tt._xp, tt.dtype, f"round({type(x).__name__})")
    check_finite_cores(tt.cores, f"round({type(x).__name__})")
    d = tt.ndim
    explicit = ranks is not None and not isinstance(ranks, int)
    caps = clip_ranks(normalize_ranks(ranks, d), tt.shape, warn=explicit)
    if d == 1:
        return _like(x, TensorTrain(list(tt.cores), error_bound=tt.error_bound))
    with small_blas(tt.cores[0], max(math.prod(c.shape) for c in tt.cores)):
        return _round_sweeps(x, tt, caps, eps, method, ranks)


def _round_sweeps(
    x: T, tt: TensorTrain, caps: tuple[int, ...], eps: float | None, method: str, ranks: Any
) -> T:
    """The QR sweep, then the truncating SVD sweep, of :func:`round`."""
    xp = tt._xp
    d = tt.ndim
    cores, log_norm = _rl_sweep(tt)
    if log_norm == -math.inf:
        return _like(x, TensorTrain(cores, error_bound=0.0))
    # the normalised train has norm 1, so δ is relative; without eps, drop only what is
    # below the round-off level of the sweep itself.
    floor = 10 * d * float(xp.finfo(tt.dtype).eps)
    tol = floor * floor if eps is None else max(eps * eps / (d - 1), floor * floor)
    total_tail = 0.0
    reshape = _np_reshape if is_numpy(cores[0]) else xp.reshape
    for k in range(d - 1):
        r, n, r2 = cores[k].shape
        cut = _sweep_step(reshape(cores[k], (r * n, r2)), caps[k + 1], tol, method)
        cores[k] = reshape(cut.left, (r, n, cut.rank))  # (r_{k-1}, n_k, r_k')
        nxt = cores[k + 1]
        cores[k + 1] = reshape(
            cut.right @ reshape(nxt, (r2, -1)), (cut.rank, nxt.shape[1], nxt.shape[2])
        )  # (r_k', n_{k+1}, r_{k+1})
        total_tail += cut.tail_sq
    # A bond cut below r_{k-1} / n_k leaves bond k-1 with more rank than core k can carry
    # (its (r_{k-1}, n_k r_k) unfolding has rank ≤ n_k r_k): fold the excess away, right
    # to left, by an exact QR, so that the ranks are minimal and rounding is idempotent.
    for k in range(d - 1, 0, -1):
        r, n, r2 = cores[k].shape
        if r > n * r2:
            q, rr = qr(conj_transpose(xp, xp.reshape(cores[k], (r, n * r2))))
            s = q.shape[1]  # = n r2
            cores[k] = xp.reshape(conj_transpose(xp, q), (s, n, r2))
            rp, np_, _ = cores[k - 1].shape
            prev = xp.reshape(cores[k - 1], (rp * np_, r)) @ conj_transpose(xp, rr)
            cores[k - 1] = xp.reshape(prev, (rp, np_, s))
    bound = math.sqrt(total_tail)
    warn_unmet_eps(bound, eps, ranks, stacklevel=4)
    if tt.error_bound is not None:
        bound = bound + tt.error_bound * (1 + bound)
    out = TensorTrain(_spread(cores, log_norm), error_bound=bound)
    return _like(x, out)
