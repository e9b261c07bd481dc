"""Random tensor trains with a chosen entry variance (t3f's formula).

A train whose cores have i.i.d. zero-mean entries of standard deviation ``s_k`` has
dense entries with variance ``∏_k s_k² · ∏_{k=1}^{d-1} r_k`` (each entry is a sum of
``∏ r_k`` products of ``d`` independent factors). Choosing
``s_k = σ^{1/d} · (∏_k r_k)^{-1/(2d)}`` makes that variance ``σ²`` whatever the ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._backend import get_namespace
from ._validation import clip_ranks, normalize_ranks
from .errors import ShapeError
from .tensor_train import TensorTrain
from .tt_matrix import TTMatrix

__all__ = ["random_tt", "random_ttm"]


def core_std(std: float, ranks: Sequence[int]) -> float:
    """The std of each core so that the train's entries have std ``std`` (t3f's formula).

    An entry is a sum over ``∏ r_k`` products of ``d`` independent core entries, so with
    core std ``s`` its variance is ``∏ r_k · s^(2d)``; hence
    ``s = std^(1/d) · (∏ r_k)^(−1/(2d))``. ``ranks`` are the ``d + 1`` ranks (boundary
    ones included).
    """
    d = len(ranks) - 1
    if std == 0:
        return 0.0
    # In logarithms: ∏ r_k overflows a float for trains of thousands of cores.
    return math.exp(math.log(std) / d - sum(math.log(r) for r in ranks) / (2 * d))


def _cores(
    modes: Sequence[int], ranks: Any, std: float, seed: Any, dtype: Any, like: Any
) -> list[Any]:
    modes = tuple(int(n) for n in modes)
    if not modes or any(n < 1 for n in modes):
        raise ShapeError(f"mode sizes must be positive integers, got {modes}.")
    d = len(modes)
    r = clip_ranks(normalize_ranks(ranks, d), modes, warn=not isinstance(ranks, int))
    std_k = core_std(std, r)
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype) if like is None else np.float64
    cores = [
        (rng.standard_normal((r[k], n, r[k + 1])) * std_k).astype(np_dtype)
        for k, n in enumerate(modes)
    ]
    if like is None:
        return cores
    xp = get_namespace(like)
    device = getattr(like, "device", None)
    return [
        xp.asarray(c, dtype=like.dtype if dtype is None else dtype, device=device) for c in cores
    ]


def random_tt(
    shape: Sequence[int],
    ranks: int | Sequence[int] = 1,
    *,
    std: float = 1.0,
    seed: Any = None,
    dtype: Any = "float64",
    like: Any = None,
) -> TensorTrain:
    """A random :class:`TensorTrain` whose dense entries have standard deviation ``std``.

    Parameters
    ----------
    shape : sequence of int
        Mode sizes.
    ranks : int or sequence of int
        As in :func:`ttdecomp.tt_svd` (an int caps every bond).
    std : float
        Standard deviation of the dense entries; each core gets
        ``std^(1/d) · (∏ r_k)^(-1/(2d))``.
    seed : int or numpy Generator seed, optional
    dtype : numpy dtype, optional
        Used when ``like`` is None.
    like : array, optional
        Build the cores in this array's library, on its device, with its dtype (unless
        ``dtype`` is given as that library's dtype).

    Examples
    --------
    >>> from ttdecomp import random_tt
    >>> x = random_tt((4, 4, 4), 3, seed=0)
    >>> x.ranks
    (1, 3, 3, 1)
    """
    if like is not None and dtype == "float64":
        dtype = None
    return TensorTrain(_cores(shape, ranks, std, seed, dtype, like))


def random_ttm(
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    ranks: int | Sequence[int] = 1,
    *,
    std: float = 1.0,
    seed: Any = None,
    dtype: Any = "float64",
    like: Any = None,
) -> TTMatrix:
    """A random :class:`TTMatrix` whose dense entries have standard deviation ``std``.

    Examples
    --------
    >>> from ttdecomp import random_ttm
    >>> W = random_ttm((4, 4), (2, 8), 3, seed=0)
    >>> W.shape, W.ranks
    ((16, 16), (1, 3, 1))
    """
    row_shape, col_shape = tuple(row_shape), tuple(col_shape)
    if len(row_shape) != len(col_shape):
        raise ShapeError(
            f"row_shape {row_shape} and col_shape {col_shape} need one entry per core each."
        )
    if like is not None and dtype == "float64":
        dtype = None
    modes = [m * n for m, n in zip(row_shape, col_shape)]
    tt = TensorTrain(_cores(modes, ranks, std, seed, dtype, like))
    return TTMatrix.from_tensor_train(tt, row_shape, col_shape)
