"""The tensor-train container: 3-D cores, TT arithmetic without densifying.

A tensor ``A`` of shape ``(n_1, ..., n_d)`` is stored as cores ``G_k`` of shape
``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``::

    A[i_1, ..., i_d] = G_1[:, i_1, :] @ G_2[:, i_2, :] @ ... @ G_d[:, i_d, :]

Norms, inner products, sums and Hadamard products are computed core by core, in
``O(d n r³)`` work, never by forming the ``∏ n_k`` dense entries.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from ._backend import get_namespace, is_complex, to_float
from ._cores import FULL_MAX_ENTRIES, CoreTrain
from ._validation import check_cores, check_error_bound
from .errors import BackendMismatchError, ShapeError

__all__ = ["TensorTrain"]


def _scalar_like(xp: Any, value: Any, ref: Any) -> Any:
    """A Python or 0-d scalar as something that multiplies ``ref`` without a device copy.

    NumPy scalars become Python scalars, so that they do not promote the core they multiply
    (NumPy 2 would turn a float32 core times ``np.float64(2)`` into float64).
    """
    if isinstance(value, numbers.Number):
        return value.item() if hasattr(value, "item") else value
    if getattr(value, "ndim", None) == 0:
        get_namespace(value, ref)  # raises on a numpy/torch mix
        return value
    if hasattr(value, "shape"):
        raise TypeError(
            f"a TensorTrain multiplies a scalar (a number or a 0-d array), got an array of shape "
            f"{tuple(value.shape)}; use a[0] / float(a) for a one-element array, or hadamard() "
            "for an element-wise product with another train."
        )
    raise TypeError(f"expected a scalar, got {type(value).__name__}")


def _exp(log_scale: float) -> float:
    """``exp(log_scale)``, ``inf`` beyond the float range (a value too large to represent)."""
    try:
        return math.exp(log_scale)
    except OverflowError:
        return math.inf


class TensorTrain(CoreTrain):
    """A tensor in tensor-train (TT) format.

    Parameters
    ----------
    cores : sequence of arrays
        ``d`` arrays of shape ``(r_{k-1}, n_k, r_k)`` from one array library, with one
        dtype and device, ``r_0 = r_d = 1``.
    error_bound : float, optional
        A guaranteed bound on ``‖A − TT‖_F / ‖A‖_F`` for the tensor ``A`` this train
        approximates; set by :func:`~ttdecomp.tt_svd` and :func:`~ttdecomp.round`.

    Attributes
    ----------
    cores : list of arrays
    error_bound : float or None

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp import TensorTrain
    >>> rng = np.random.default_rng(0)
    >>> tt = TensorTrain([rng.standard_normal((1, 4, 3)), rng.standard_normal((3, 5, 1))])
    >>> tt.shape, tt.ranks, tt.n_params, tt.full_size
    ((4, 5), (1, 3, 1), 27, 20)
    >>> bool(np.isclose(tt.norm(), np.linalg.norm(tt.full())))
    True
    """

    __array_priority__ = 1000  # numpy scalars defer to our __rmul__

    def __init__(self, cores: Sequence[Any], *, error_bound: float | None = None) -> None:
        self.cores, self._xp = check_cores(cores, 3, "TensorTrain")
        self.error_bound = check_error_bound(error_bound)

    # ---------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, ...]:
        """Mode sizes ``(n_1, ..., n_d)``."""
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def full_size(self) -> int:
        """Entries of the dense tensor: ``∏ n_k``."""
        return math.prod(self.shape)

    def __repr__(self) -> str:
        bound = self._bound_repr()
        return f"TensorTrain(shape={self.shape}, ranks={self.ranks}, dtype={self.dtype}{bound})"

    # ---------------------------------------------------------------- dense
    def full(self, *, max_entries: int | None = FULL_MAX_ENTRIES) -> Any:
        """The dense tensor (``∏ n_k`` entries; use only when that fits in memory).

        Raises :class:`~ttdecomp.errors.ShapeError` before any work when the tensor has more
        than ``max_entries`` entries (default ``2**30``); ``None`` lifts the guard.

        Examples
        --------
        >>> import numpy as np
        >>> from ttdecomp import TensorTrain
        >>> TensorTrain([np.ones((1, 2, 1)), np.ones((1, 3, 1))]).full().shape
        (2, 3)
        """
        self._check_full_size(max_entries)
        xp = self._xp
        res = xp.reshape(self.cores[0], (-1, self.cores[0].shape[-1]))  # (n_1, r_1)
        for core in self.cores[1:]:
            r, n, r2 = core.shape
            res = res @ xp.reshape(core, (r, n * r2))  # (n_1...n_k-1, n_k r_k)
            res = xp.reshape(res, (-1, r2))  # (n_1...n_k, r_k)
        return xp.reshape(res, self.shape)

    def __getitem__(self, index: Any) -> Any:
        """One entry ``A[i_1, ..., i_d]`` as a 0-d array, from ``d`` small matrix products."""
        if not isinstance(index, tuple):
            index = (index,)
        if len(index) != self.ndim or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in index
        ):
            raise IndexError(
                f"TensorTrain indexing takes a tuple of {self.ndim} integers, got {index!r}; "
                "for slices, build the slice with full() on a small train."
            )
        xp = self._xp
        res = None
        for k, (i, core) in enumerate(zip(index, self.cores)):
            n = core.shape[1]
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for mode {k} of size {n}.")
            mat = core[:, i % n, :]  # (r_{k-1}, r_k)
            res = mat if res is None else res @ mat
        return xp.reshape(res, ())

    # ---------------------------------------------------------------- inner products
    def _check_same(self, other: TensorTrain, op: str) -> None:
        if not isinstance(other, TensorTrain):
            raise TypeError(f"{op} needs two TensorTrains, got {type(other).__name__}.")
        get_namespace(self.cores[0], other.cores[0])
        if other.shape != self.shape:
            raise ShapeError(
                f"{op}: shapes {self.shape} and {other.shape} differ; both trains must "
                "have the same mode sizes."
            )
        if other.dtype != self.dtype:  # one rule, as in apply and A @ B: no silent promotion
            raise BackendMismatchError(
                f"{op}: dtypes {self.dtype} and {other.dtype} differ; cast one train first "
                "(e.g. TensorTrain([c.astype(...) for c in x.cores])); ttdecomp does not "
                "promote between trains silently."
            )

    def _scaled_dot(self, other: TensorTrain) -> tuple[Any, float]:
        """``⟨self, other⟩`` as ``value · exp(log_scale)``, rescaled at every core.

        The transfer matrix is divided by its norm after every core, so long trains of
        large or small cores neither overflow nor underflow.
        """
        xp = self._xp
        log_scale = 0.0
        t = None
        for a, b in zip(self.cores, other.cores):
            ra, n, ra2 = a.shape
            rb, _, rb2 = b.shape
            ac = xp.conj(a) if is_complex(xp, a.dtype) else a
            if t is None:
                tb = xp.reshape(b, (n, rb2))  # (n, rb2)
            else:
                tb = t @ xp.reshape(b, (rb, n * rb2))  # (ra, n rb2)
                tb = xp.reshape(tb, (ra * n, rb2))  # (ra n, rb2)
            t = xp.matrix_transpose(xp.reshape(ac, (ra * n, ra2))) @ tb  # (ra2, rb2)
            s = to_float(xp.max(xp.abs(t)))
            if s > 0:
                t = t / s
                log_scale += math.log(s)
        return xp.reshape(t, ()), log_scale

    def dot(self, other: TensorTrain) -> Any:
        """Inner product ``⟨self, other⟩ = Σ conj(self) · other`` in TT form.

        Costs ``O(d n r³)``; rescales at every core so long trains do not overflow.
        Returns a 0-d array of the trains' backend.

        Examples
        --------
        >>> import numpy as np
        >>> from ttdecomp import TensorTrain
        >>> rng = np.random.default_rng(1)
        >>> a = TensorTrain([rng.standard_normal((1, 3, 2)), rng.standard_normal((2, 4, 1))])
        >>> b = TensorTrain([rng.standard_normal((1, 3, 3)), rng.standard_normal((3, 4, 1))])
        >>> bool(np.isclose(a.dot(b), np.vdot(a.full(), b.full())))
        True
        """
        self._check_same(other, "dot")
        value, log_scale = self._scaled_dot(other)
        return value * _exp(log_scale)

    def norm(self) -> Any:
        """Frobenius norm ``‖A‖_F`` computed in TT form (0-d array, differentiable)."""
        xp = self._xp
        value, log_scale = self._scaled_dot(self)
        value = xp.real(value) if is_complex(xp, value.dtype) else value
        return xp.sqrt(xp.abs(value)) * _exp(0.5 * log_scale)

    def relative_error(self, dense: Any) -> float:
        """``‖dense − self.full()‖_F / ‖dense‖_F`` as a Python float.

        This forms the dense tensor (it compares with one), so use it on tensors that fit
        in memory.
        """
        xp = get_namespace(dense, self.cores[0])
        if tuple(dense.shape) != self.shape:
            raise ShapeError(
                f"relative_error: dense shape {tuple(dense.shape)} does not match the "
                f"train's shape {self.shape}."
            )
        ref = to_float(xp.linalg.vector_norm(dense))
        diff = to_float(xp.linalg.vector_norm(dense - self.full()))
        return diff / ref if ref > 0 else diff

    # ---------------------------------------------------------------- algebra
    def __add__(self, other: Any) -> TensorTrain:
        if not isinstance(other, TensorTrain):
            return NotImplemented
        self._check_same(other, "+")
        xp = self._xp
        if self.ndim == 1:
            return TensorTrain([self.cores[0] + other.cores[0]])
        dev = self.device
        cores = []
        d = self.ndim
        for k, (a, b) in enumerate(zip(self.cores, other.cores)):
            ra, n, ra2 = a.shape
            rb, _, rb2 = b.shape
            dtype = (a[:1, :1, :1] + b[:1, :1, :1]).dtype
            a = xp.astype(a, dtype) if a.dtype != dtype else a
            b = xp.astype(b, dtype) if b.dtype != dtype else b
            if k == 0:
                cores.append(xp.concat([a, b], axis=2))  # (1, n, ra2 + rb2)
            elif k == d - 1:
                cores.append(xp.concat([a, b], axis=0))  # (ra + rb, n, 1)
            else:
                top = xp.concat([a, xp.zeros((ra, n, rb2), dtype=dtype, device=dev)], axis=2)
                bot = xp.concat([xp.zeros((rb, n, ra2), dtype=dtype, device=dev), b], axis=2)
                cores.append(xp.concat([top, bot], axis=0))  # (ra + rb, n, ra2 + rb2)
        return TensorTrain(cores)

    def __neg__(self) -> TensorTrain:
        return TensorTrain([-self.cores[0], *self.cores[1:]])

    def __sub__(self, other: Any) -> TensorTrain:
        if not isinstance(other, TensorTrain):
            return NotImplemented
        return self + (-other)

    def __mul__(self, other: Any) -> TensorTrain:
        if isinstance(other, TensorTrain):
            return self.hadamard(other)
        return self._scaled(other, "*")

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> TensorTrain:
        return self._scaled(other, "/")

    def _scaled(self, other: Any, op: str) -> TensorTrain:
        """The train times (or divided by) a scalar, in one dtype.

        The result keeps the train's dtype, except that a complex scalar makes a real train
        complex (all cores, same precision), as a complex scalar times a real array does.
        """
        if not isinstance(other, numbers.Number) and not hasattr(other, "shape"):
            return NotImplemented
        scalar = _scalar_like(self._xp, other, self.cores[0])
        xp = self._xp
        first = self.cores[0] * scalar if op == "*" else self.cores[0] / scalar
        rest = list(self.cores[1:])
        if first.dtype != self.dtype:
            if is_complex(xp, first.dtype) and not is_complex(xp, self.dtype):
                rest = [xp.astype(c, first.dtype) for c in rest]
            else:
                first = xp.astype(first, self.dtype)
        return TensorTrain([first, *rest], error_bound=self.error_bound)

    def hadamard(self, other: TensorTrain) -> TensorTrain:
        """Element-wise product in TT form; ranks multiply (``r_k · q_k``).

        Examples
        --------
        >>> import numpy as np
        >>> from ttdecomp import TensorTrain
        >>> rng = np.random.default_rng(2)
        >>> a = TensorTrain([rng.standard_normal((1, 3, 2)), rng.standard_normal((2, 4, 1))])
        >>> c = a.hadamard(a)
        >>> c.ranks, bool(np.allclose(c.full(), a.full() ** 2))
        ((1, 4, 1), True)
        """
        self._check_same(other, "hadamard")
        xp = self._xp
        cores = []
        for a, b in zip(self.cores, other.cores):
            ra, n, ra2 = a.shape
            rb, _, rb2 = b.shape
            prod = a[:, None, :, :, None] * b[None, :, :, None, :]  # (ra, rb, n, ra2, rb2)
            cores.append(xp.reshape(prod, (ra * rb, n, ra2 * rb2)))
        return TensorTrain(cores)

    # ---------------------------------------------------------------- rounding
    def round(self, ranks: Any = None, *, eps: float | None = None) -> TensorTrain:
        """Recompress to lower ranks; see :func:`ttdecomp.round`."""
        from .rounding import round as _round

        return _round(self, ranks, eps=eps)

    def orthogonalize(self, direction: str = "left") -> TensorTrain:
        """Same tensor with orthonormal cores; see :func:`ttdecomp.orthogonalize`."""
        from .rounding import orthogonalize

        return orthogonalize(self, direction)
