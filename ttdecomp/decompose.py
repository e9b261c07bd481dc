"""TT-SVD: a dense tensor or matrix to a tensor train, with a rigorous error bound.

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
from typing import Any

from ._backend import SVD_METHODS, check_array, conj_transpose, is_torch, to_float
from ._threads import small_blas
from ._truncation import GRAM_MIN_SIZE, Truncation, truncate, truncate_unfolding
from ._validation import (
    check_eps,
    check_lapack_dtype,
    clip_ranks,
    normalize_ranks,
    warn_unmet_eps,
)
from .errors import InvalidInputError, ShapeError
from .tensor_train import TensorTrain
from .tt_matrix import TTMatrix

__all__ = ["Truncation", "truncate", "tt_svd"]


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
        cut = truncate_unfolding(rest, caps[k + 1], delta_sq, method, gram)
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
    if p2 > 256 or rest < p2 or p2 * rest < 4 * GRAM_MIN_SIZE:
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

        try:
            return tensorize(M, N, n_cores=n_cores, layout=layout)
        except ShapeError as exc:
            why = str(exc).split(";")[0].split(". Pad")[0]
            try:
                rs, cs = tensorize(M, N, n_cores=n_cores, layout=layout, pad=True)
                pad = f"pad W with zeros to {math.prod(rs)} x {math.prod(cs)} (its shapes: "
                pad += f"tensorize({M}, {N}, pad=True)), "
            except ShapeError:
                pad = ""
            raise ShapeError(
                f"tt_svd cannot choose TT-matrix shapes for a {M} x {N} matrix: {why}. tt_svd "
                f"does not pad: {pad}pass row_shape/col_shape, or decompose it as a 2-mode "
                "tensor with as_matrix=False."
            ) from None
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
        of the two choices: when the rank caps cannot meet ``eps``, the guarantee does not
        hold, a :class:`~ttdecomp.errors.TTWarning` says so, and ``error_bound`` gives the
        error achieved.
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
    if any(int(s) == 0 for s in a.shape):
        raise ShapeError(
            f"a has shape {tuple(a.shape)} with a zero-size axis; an empty tensor has no "
            "tensor train. Drop the empty axis or skip the decomposition."
        )
    check_lapack_dtype(xp, a.dtype, "a")
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
    warn_unmet_eps(bound, eps, ranks)
    tt = TensorTrain(cores, error_bound=bound)
    if matrix:
        return TTMatrix.from_tensor_train(tt, rs, cs)
    return tt
