"""The TT-matrix container: 4-D cores ``(r_{k-1}, m_k, n_k, r_k)``.

A matrix ``W`` of shape ``(M, N)`` with ``M = ∏ m_k`` and ``N = ∏ n_k`` is stored as::

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]

where ``(i_1..i_d)`` is the row-major multi-index over ``row_shape = (m_1..m_d)`` and
``(j_1..j_d)`` likewise over ``col_shape = (n_1..n_d)``.

One format covers every layout:

* **interleaved** (classic TT-matrix): every core has ``m_k, n_k > 1``;
* **split** (TT-LoRA): the first cores carry the input factors with ``m_k = 1``, the
  last cores the output factors with ``n_k = 1``;
* anything in between. The same contraction code serves them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._backend import get_namespace, to_float
from ._cores import FULL_MAX_ENTRIES, CoreTrain
from ._validation import check_cores, check_error_bound
from .errors import BackendMismatchError, ShapeError
from .tensor_train import TensorTrain

__all__ = ["TTMatrix", "ttm_matmul"]


class TTMatrix(CoreTrain):
    """A matrix in tensor-train (TT-matrix, a.k.a. MPO) format.

    Parameters
    ----------
    cores : sequence of arrays
        ``d`` arrays of shape ``(r_{k-1}, m_k, n_k, r_k)``, one library, dtype and
        device, ``r_0 = r_d = 1``.
    error_bound : float, optional
        A guaranteed bound on ``‖W − TT‖_F / ‖W‖_F`` (set by :func:`~ttdecomp.tt_svd`).

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp import TTMatrix
    >>> rng = np.random.default_rng(0)
    >>> W = TTMatrix([rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((4, 5, 2, 1))])
    >>> W.shape, W.row_shape, W.col_shape, W.ranks
    ((10, 6), (2, 5), (3, 2), (1, 4, 1))
    >>> x = rng.standard_normal((7, 6))
    >>> bool(np.allclose(W.apply(x), x @ W.full().T))
    True
    """

    __array_priority__ = 1000

    def __init__(self, cores: Sequence[Any], *, error_bound: float | None = None) -> None:
        self.cores, self._xp = check_cores(cores, 4, "TTMatrix")
        self.error_bound = check_error_bound(error_bound)

    # ---------------------------------------------------------------- properties
    @property
    def row_shape(self) -> tuple[int, ...]:
        """Output factors ``(m_1, ..., m_d)``; ``M = ∏ m_k``."""
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def col_shape(self) -> tuple[int, ...]:
        """Input factors ``(n_1, ..., n_d)``; ``N = ∏ n_k``."""
        return tuple(int(c.shape[2]) for c in self.cores)

    @property
    def shape(self) -> tuple[int, int]:
        """``(M, N)``: the shape of the dense matrix."""
        return math.prod(self.row_shape), math.prod(self.col_shape)

    @property
    def full_size(self) -> int:
        """Entries of the dense matrix: ``M · N``."""
        return math.prod(self.shape)

    @property
    def layout(self) -> str:
        """``"split"``, ``"interleaved"`` or ``"mixed"`` (see the module docstring)."""
        ms, ns = self.row_shape, self.col_shape
        if all(m > 1 and n > 1 for m, n in zip(ms, ns)):
            return "interleaved"
        k = next((i for i, m in enumerate(ms) if m > 1), len(ms))
        if all(m == 1 for m in ms[:k]) and all(n == 1 for n in ns[k:]):
            return "split"
        return "mixed"

    def __repr__(self) -> str:
        bound = self._bound_repr()
        return (
            f"TTMatrix(shape={self.shape}, row_shape={self.row_shape}, "
            f"col_shape={self.col_shape}, ranks={self.ranks}, dtype={self.dtype}{bound})"
        )

    # ---------------------------------------------------------------- conversions
    def to_tensor_train(self) -> TensorTrain:
        """View as a :class:`TensorTrain` with modes ``m_k · n_k`` (no copy of data).

        Examples
        --------
        >>> import numpy as np
        >>> from ttdecomp import TTMatrix
        >>> TTMatrix([np.ones((1, 2, 3, 1))]).to_tensor_train().shape
        (6,)
        """
        xp = self._xp
        cores = [
            xp.reshape(c, (c.shape[0], c.shape[1] * c.shape[2], c.shape[3])) for c in self.cores
        ]
        return TensorTrain(cores, error_bound=self.error_bound)

    @classmethod
    def from_tensor_train(
        cls, tt: TensorTrain, row_shape: Sequence[int], col_shape: Sequence[int]
    ) -> TTMatrix:
        """Reinterpret a train whose mode ``k`` has size ``m_k · n_k`` as a TT-matrix.

        Examples
        --------
        >>> import numpy as np
        >>> from ttdecomp import TensorTrain, TTMatrix
        >>> tt = TensorTrain([np.ones((1, 6, 2)), np.ones((2, 4, 1))])
        >>> TTMatrix.from_tensor_train(tt, (2, 2), (3, 2)).shape
        (4, 6)
        """
        row_shape, col_shape = tuple(row_shape), tuple(col_shape)
        if len(row_shape) != tt.ndim or len(col_shape) != tt.ndim:
            raise ShapeError(
                f"row_shape {row_shape} and col_shape {col_shape} must each have one entry "
                f"per core ({tt.ndim})."
            )
        for k, (m, n, s) in enumerate(zip(row_shape, col_shape, tt.shape)):
            if m * n != s:
                raise ShapeError(
                    f"core {k} has mode size {s} but row_shape[{k}] * col_shape[{k}] = "
                    f"{m} * {n} = {m * n}; the factors must multiply to the mode size."
                )
        xp = tt._xp
        cores = [
            xp.reshape(c, (c.shape[0], m, n, c.shape[2]))
            for c, m, n in zip(tt.cores, row_shape, col_shape)
        ]
        return cls(cores, error_bound=tt.error_bound)

    def full(self, *, max_entries: int | None = FULL_MAX_ENTRIES) -> Any:
        """The dense ``(M, N)`` matrix (use only when ``M · N`` entries fit in memory).

        Refused up front above ``max_entries`` entries, as :meth:`TensorTrain.full`.
        """
        xp = self._xp
        d = self.ndim
        dense = self.to_tensor_train().full(max_entries=max_entries)  # (m1 n1, ..., md nd)
        dense = xp.reshape(
            dense, tuple(s for mn in zip(self.row_shape, self.col_shape) for s in mn)
        )
        perm = tuple(range(0, 2 * d, 2)) + tuple(range(1, 2 * d, 2))
        dense = xp.permute_dims(dense, perm)  # (m1..md, n1..nd)
        return xp.reshape(dense, self.shape)

    @property
    def T(self) -> TTMatrix:
        """The transpose, in TT form (swaps ``m_k`` and ``n_k`` in every core)."""
        xp = self._xp
        return TTMatrix(
            [xp.permute_dims(c, (0, 2, 1, 3)) for c in self.cores], error_bound=self.error_bound
        )

    # ---------------------------------------------------------------- products
    def apply(self, x: Any) -> Any:
        """``y = x @ W.T``: maps ``x[..., N]`` to ``y[..., M]`` without forming ``W``.

        Any leading axes are kept. The contraction order is chosen by the cost model of
        :mod:`ttdecomp.cost_model` (see :func:`ttdecomp.contraction_plan`).
        """
        from .contract import apply

        return apply(self, x)

    def __matmul__(self, other: Any) -> Any:
        """``W @ other`` for a dense ``(N,)`` vector or ``(N, K)`` matrix, or a TT operand.

        Dense operands give dense results; a :class:`TTMatrix` or :class:`TensorTrain`
        operand gives the product in TT form (see :func:`ttm_matmul`).
        """
        if isinstance(other, (TTMatrix, TensorTrain)):
            return ttm_matmul(self, other)
        xp = get_namespace(other, self.cores[0])
        if other.ndim == 1:
            return self.apply(other)
        if other.ndim != 2:
            raise ShapeError(
                f"W @ x takes x of shape (N,) or (N, K); got {tuple(other.shape)}. For batched "
                "inputs of shape (..., N) use W.apply(x)."
            )
        return xp.matrix_transpose(self.apply(xp.matrix_transpose(other)))

    def matmul(
        self, other: TTMatrix | TensorTrain, *, eps: float | None = None, ranks: Any = None
    ) -> TTMatrix | TensorTrain:
        """``W @ other`` in TT form for a TT operand, optionally rounded (``@`` cannot round).

        Parameters
        ----------
        other : TTMatrix or TensorTrain
            A TT-matrix whose ``row_shape`` equals this ``col_shape``, or a train over it.
        eps, ranks
            Rounding of the product, as in :func:`ttdecomp.round`.

        Examples
        --------
        >>> import numpy as np
        >>> import ttdecomp as tt
        >>> A = tt.random_ttm((2, 3), (4, 2), 2, seed=0)
        >>> B = tt.random_ttm((4, 2), (3, 3), 2, seed=1)
        >>> C = A.matmul(B, eps=1e-12)
        >>> C.shape, bool(np.allclose(C.full(), A.full() @ B.full()))
        ((6, 9), True)
        """
        return ttm_matmul(self, other, eps=eps, ranks=ranks)

    # ---------------------------------------------------------------- algebra via the TT view
    def _wrap(self, tt: TensorTrain) -> TTMatrix:
        return TTMatrix.from_tensor_train(tt, self.row_shape, self.col_shape)

    def _same_modes(self, other: TTMatrix, op: str) -> None:
        if not isinstance(other, TTMatrix):
            raise TypeError(f"{op} needs two TTMatrix operands, got {type(other).__name__}.")
        if (other.row_shape, other.col_shape) != (self.row_shape, self.col_shape):
            raise ShapeError(
                f"{op}: row/col shapes {self.row_shape}x{self.col_shape} and "
                f"{other.row_shape}x{other.col_shape} differ."
            )

    def __add__(self, other: Any) -> TTMatrix:
        if not isinstance(other, TTMatrix):
            return NotImplemented
        self._same_modes(other, "+")
        return self._wrap(self.to_tensor_train() + other.to_tensor_train())

    def __sub__(self, other: Any) -> TTMatrix:
        if not isinstance(other, TTMatrix):
            return NotImplemented
        self._same_modes(other, "-")
        return self._wrap(self.to_tensor_train() - other.to_tensor_train())

    def __neg__(self) -> TTMatrix:
        return self._wrap(-self.to_tensor_train())

    def __mul__(self, other: Any) -> TTMatrix:
        if isinstance(other, TTMatrix):
            self._same_modes(other, "hadamard")
            return self._wrap(self.to_tensor_train().hadamard(other.to_tensor_train()))
        res = self.to_tensor_train().__mul__(other)
        return NotImplemented if res is NotImplemented else self._wrap(res)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> TTMatrix:
        res = self.to_tensor_train().__truediv__(other)
        return NotImplemented if res is NotImplemented else self._wrap(res)

    def norm(self) -> Any:
        """Frobenius norm ``‖W‖_F`` in TT form."""
        return self.to_tensor_train().norm()

    def dot(self, other: TTMatrix) -> Any:
        """Frobenius inner product ``Σ conj(W) · V`` in TT form."""
        self._same_modes(other, "dot")
        return self.to_tensor_train().dot(other.to_tensor_train())

    def relative_error(self, dense: Any) -> float:
        """``‖dense − W‖_F / ‖dense‖_F`` for a dense ``(M, N)`` matrix (forms ``W``)."""
        xp = get_namespace(dense, self.cores[0])
        if tuple(dense.shape) != self.shape:
            raise ShapeError(
                f"relative_error: dense shape {tuple(dense.shape)} does not match the "
                f"TT-matrix shape {self.shape}."
            )
        ref = to_float(xp.linalg.vector_norm(dense))
        diff = to_float(xp.linalg.vector_norm(dense - self.full()))
        return diff / ref if ref > 0 else diff

    def round(self, ranks: Any = None, *, eps: float | None = None) -> TTMatrix:
        """Recompress to lower ranks; see :func:`ttdecomp.round`."""
        from .rounding import round as _round

        return _round(self, ranks, eps=eps)


def ttm_matmul(a: Any, b: Any, *, eps: float | None = None, ranks: Any = None) -> Any:
    """The product ``A @ B`` of a TT-matrix with a TT-matrix or a tensor train, in TT form.

    Core ``k`` of the result is ``Σ_j A_k[:, i, j, :] ⊗ B_k[:, j, l, :]``: ranks multiply
    (``r_k^A · r_k^B``); the result is exact unless ``eps`` or ``ranks`` ask for rounding
    (then ``‖C − round(C)‖ ≤ eps ‖C‖`` as :meth:`TensorTrain.round` guarantees).

    Parameters
    ----------
    a : TTMatrix
        ``M × N`` with column factors ``(n_1..n_d)``.
    b : TTMatrix or TensorTrain
        ``N × K`` with row factors ``(n_1..n_d)``, or a train over modes ``(n_1..n_d)``
        (a vector of length ``N`` in TT form).
    eps : float, optional
        Relative Frobenius tolerance of the rounding.
    ranks : int or sequence of int, optional
        Largest ranks after rounding.

    Returns
    -------
    TTMatrix or TensorTrain
        A TT-matrix ``M × K`` when ``b`` is a TT-matrix, a tensor train over
        ``(m_1..m_d)`` when ``b`` is a tensor train.

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp import TTMatrix
    >>> from ttdecomp.tt_matrix import ttm_matmul
    >>> rng = np.random.default_rng(0)
    >>> a = TTMatrix([rng.standard_normal((1, 2, 3, 2)), rng.standard_normal((2, 2, 3, 1))])
    >>> b = TTMatrix([rng.standard_normal((1, 3, 2, 3)), rng.standard_normal((3, 3, 2, 1))])
    >>> c = ttm_matmul(a, b)
    >>> c.shape, c.ranks
    ((4, 4), (1, 6, 1))
    >>> bool(np.allclose(c.full(), a.full() @ b.full()))
    True
    """
    if not isinstance(a, TTMatrix):
        raise ShapeError(f"ttm_matmul's left operand must be a TTMatrix, got {type(a).__name__}.")
    is_tt = isinstance(b, TensorTrain) and not isinstance(b, TTMatrix)
    if not (is_tt or isinstance(b, TTMatrix)):
        raise ShapeError(
            f"ttm_matmul's right operand must be a TTMatrix or TensorTrain, got "
            f"{type(b).__name__}; for a dense operand use apply()."
        )
    a_cores = list(a.cores)
    xp = get_namespace(*a_cores, *b.cores)
    if is_tt:
        b_cores = [xp.expand_dims(c, axis=2) for c in b.cores]  # (s_{k-1}, n_k, 1, s_k)
    else:
        b_cores = list(b.cores)
    b_rows = tuple(int(c.shape[1]) for c in b_cores)
    if len(a_cores) != len(b_cores) or a.col_shape != b_rows:
        raise ShapeError(
            f"A @ B needs A's column factors to equal B's row factors core by core; got "
            f"A.col_shape={a.col_shape} and B's {'shape' if is_tt else 'row_shape'}={b_rows}. "
            "Re-tensorize one operand (e.g. with ttdecomp.tt_svd and matching shapes)."
        )
    for k, (ca, cb) in enumerate(zip(a_cores, b_cores)):
        if ca.dtype != cb.dtype:
            raise BackendMismatchError(
                f"core {k}: A has dtype {ca.dtype}, B has {cb.dtype}; cast one operand so "
                "both share a dtype (ttdecomp does not promote silently)."
            )
    cores = []
    for ca, cb in zip(a_cores, b_cores):
        ra, m, n, ra2 = (int(s) for s in ca.shape)
        rb, _, p, rb2 = (int(s) for s in cb.shape)
        left = xp.permute_dims(ca, (0, 1, 3, 2))  # (ra, m, ra', n)
        left = xp.reshape(left, (ra * m * ra2, n))  # (ra m ra', n)
        right = xp.permute_dims(cb, (1, 0, 2, 3))  # (n, rb, p, rb')
        right = xp.reshape(right, (n, rb * p * rb2))  # (n, rb p rb')
        core = xp.matmul(left, right)  # (ra m ra', rb p rb')
        core = xp.reshape(core, (ra, m, ra2, rb, p, rb2))  # (ra, m, ra', rb, p, rb')
        core = xp.permute_dims(core, (0, 3, 1, 4, 2, 5))  # (ra, rb, m, p, ra', rb')
        cores.append(xp.reshape(core, (ra * rb, m, p, ra2 * rb2)))  # (ra rb, m, p, ra' rb')
    if is_tt:
        result = TensorTrain([xp.reshape(c, (c.shape[0], c.shape[1], c.shape[3])) for c in cores])
    else:
        result = TTMatrix(cores)
    if eps is not None or ranks is not None:
        result = result.round(ranks, eps=eps)
    return result
