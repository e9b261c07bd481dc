"""Conversions to and from tensorly's ``TTTensor`` and ``TTMatrix``.

tensorly stores the same cores as ttdecomp (3-D ``(r, n, r')`` for a tensor, 4-D
``(r, m, n, r')`` for a matrix), so conversion shares the arrays without copying.
tensorly is imported only inside these functions.
"""

from __future__ import annotations

from typing import Any

from .tensor_train import TensorTrain
from .tt_matrix import TTMatrix

__all__ = ["from_tensorly", "to_tensorly"]


def to_tensorly(x: TensorTrain | TTMatrix) -> Any:
    """Convert to ``tensorly.tt_tensor.TTTensor`` or ``tensorly.tt_matrix.TTMatrix``.

    Examples
    --------
    >>> import numpy as np
    >>> import ttdecomp as tt
    >>> x = tt.tt_svd(np.arange(24.0).reshape(2, 3, 4))
    >>> tl_x = tt.to_tensorly(x)
    >>> type(tl_x).__name__, bool(np.allclose(tl_x.to_tensor(), x.full()))
    ('TTTensor', True)
    """
    if isinstance(x, TTMatrix):
        from tensorly.tt_matrix import TTMatrix as TLTTMatrix

        return TLTTMatrix(list(x.cores))
    if isinstance(x, TensorTrain):
        from tensorly.tt_tensor import TTTensor

        return TTTensor(list(x.cores))
    raise TypeError(f"to_tensorly takes a TensorTrain or TTMatrix, got {type(x).__name__}.")


def from_tensorly(x: Any) -> TensorTrain | TTMatrix:
    """Convert a tensorly ``TTTensor`` / ``TTMatrix`` (or its list of factors).

    3-D factors give a :class:`TensorTrain`, 4-D factors a :class:`TTMatrix`.

    Examples
    --------
    >>> import numpy as np
    >>> import tensorly as tl
    >>> from tensorly.decomposition import tensor_train
    >>> import ttdecomp as tt
    >>> A = np.random.default_rng(0).standard_normal((3, 4, 5))
    >>> x = tt.from_tensorly(tensor_train(tl.tensor(A), rank=[1, 3, 5, 1]))
    >>> x.ranks, bool(np.allclose(x.full(), A))
    ((1, 3, 5, 1), True)
    """
    factors = list(getattr(x, "factors", x))
    if factors and all(getattr(f, "ndim", None) == 4 for f in factors):
        return TTMatrix(factors)
    return TensorTrain(factors)
