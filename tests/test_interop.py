"""tensorly round trips for TTTensor and TTMatrix."""

from __future__ import annotations

import numpy as np
import pytest

import ttdecomp as tt

tensorly = pytest.importorskip("tensorly")


def test_tensor_round_trip():
    x = tt.random_tt((3, 4, 5, 2), 3, seed=0)
    tl_x = tt.to_tensorly(x)
    assert isinstance(tl_x, tensorly.tt_tensor.TTTensor)
    assert np.allclose(tensorly.tt_to_tensor(tl_x), x.full())
    back = tt.from_tensorly(tl_x)
    assert isinstance(back, tt.TensorTrain)
    assert back.ranks == x.ranks and np.allclose(back.full(), x.full())


def test_matrix_round_trip():
    m = tt.random_ttm((2, 3, 4), (4, 2, 3), 2, seed=1)
    tl_m = tt.to_tensorly(m)
    assert isinstance(tl_m, tensorly.tt_matrix.TTMatrix)
    assert np.allclose(tensorly.tt_matrix.tt_matrix_to_matrix(tl_m), m.full())
    back = tt.from_tensorly(tl_m)
    assert isinstance(back, tt.TTMatrix) and np.allclose(back.full(), m.full())


def test_from_tensorly_decomposition():
    from tensorly.decomposition import tensor_train_matrix

    w = np.random.default_rng(2).standard_normal((4, 6, 3, 2))  # (m1, m2, n1, n2)
    tl_m = tensor_train_matrix(tensorly.tensor(w), rank=[1, 5, 1])
    ours = tt.from_tensorly(tl_m)
    assert ours.row_shape == (4, 6) and ours.col_shape == (3, 2)
    assert np.allclose(ours.full(), tensorly.tt_matrix.tt_matrix_to_matrix(tl_m))


def test_to_tensorly_rejects_other_types():
    with pytest.raises(TypeError, match="TensorTrain or TTMatrix"):
        tt.to_tensorly(np.ones(3))
