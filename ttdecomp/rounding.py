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

import math
from typing import Any, TypeVar

from ._backend import conj_transpose, qr, to_float
from ._validation import check_eps, clip_ranks, normalize_ranks
from .decompose import truncate
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


def _zero_cores(tt: TensorTrain) -> list[Any]:
    xp = tt._xp
    return [xp.zeros((1, n, 1), dtype=tt.dtype, device=tt.device) for n in tt.shape]


def _spread(cores: list[Any], log_norm: float) -> list[Any]:
    """Multiply every core by ``exp(log_norm / d)``."""
    if log_norm == -math.inf:
        return cores
    factor = math.exp(log_norm / len(cores))
    return [c * factor for c in cores]


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
        Relative tolerance in ``(0, 1)``: ``‖x − round(x)‖_F ≤ eps · ‖x‖_F``.
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
    d = tt.ndim
    explicit = ranks is not None and not isinstance(ranks, int)
    caps = clip_ranks(normalize_ranks(ranks, d), tt.shape, warn=explicit)
    xp = tt._xp
    if d == 1:
        return _like(x, TensorTrain(list(tt.cores), error_bound=tt.error_bound))
    cores, log_norm = _rl_sweep(tt)
    if log_norm == -math.inf:
        return _like(x, TensorTrain(cores, error_bound=0.0))
    # the normalised train has norm 1, so δ is relative; without eps, drop only what is
    # below the round-off level of the sweep itself.
    floor = 10 * d * float(xp.finfo(tt.dtype).eps)
    tol = floor * floor if eps is None else max(eps * eps / (d - 1), floor * floor)
    total_tail = 0.0
    for k in range(d - 1):
        r, n, r2 = cores[k].shape
        cut = truncate(
            xp.reshape(cores[k], (r * n, r2)), max_rank=caps[k + 1], tol_sq=tol, method=method
        )
        cores[k] = xp.reshape(cut.left, (r, n, cut.rank))  # (r_{k-1}, n_k, r_k')
        nxt = cores[k + 1]
        cores[k + 1] = xp.reshape(
            cut.right @ xp.reshape(nxt, (r2, -1)), (cut.rank, nxt.shape[1], nxt.shape[2])
        )  # (r_k', n_{k+1}, r_{k+1})
        total_tail += cut.tail_sq
    bound = math.sqrt(total_tail)
    if tt.error_bound is not None:
        bound = bound + tt.error_bound * (1 + bound)
    out = TensorTrain(_spread(cores, log_norm), error_bound=bound)
    return _like(x, out)
