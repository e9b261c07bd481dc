"""Rounding and orthogonalisation: exactness, the eps bound, idempotence, long trains."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    BACKENDS,
    RTOL,
    backends,
    dtypes,
    seeds,
    tensor_shapes,
    to_backend,
    to_numpy,
    torch,
)

import ttdecomp as tt
from ttdecomp.errors import InvalidInputError, RankClippedWarning

cases = st.tuples(tensor_shapes(min_dims=2, max_dims=6, max_size=1500), st.integers(1, 4), seeds)


def build(shape, rank, seed, dtype, backend):
    x = tt.random_tt(shape, rank, seed=seed)
    rng = np.random.default_rng(seed)
    cores = []
    for c in x.cores:
        c = c.astype(dtype)
        if dtype.startswith("complex"):
            c = c + 1j * rng.standard_normal(c.shape)
        cores.append(to_backend(c, backend))
    return tt.TensorTrain(cores)


def rel(a, b):
    a, b = to_numpy(a), to_numpy(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@given(case=cases, dtype=dtypes, backend=backends)
def test_round_of_sum_is_twice_with_original_ranks(case, dtype, backend):
    shape, rank, seed = case
    x = tt.round(build(shape, rank, seed, dtype, backend))  # minimal ranks of x itself
    y = tt.round(x + x)
    assert y.ranks == x.ranks
    assert rel(y.full(), 2 * to_numpy(x.full())) <= RTOL[dtype]
    assert type(y.cores[0]) is type(x.cores[0])


@given(case=cases, eps=st.floats(1e-4, 0.5), dtype=dtypes, backend=backends)
def test_eps_bound_and_idempotence(case, eps, dtype, backend):
    shape, rank, seed = case
    x = build(shape, rank, seed, dtype, backend)
    x = x + build(shape, rank, seed + 1, dtype, backend) * 0.1
    y = tt.round(x, eps=eps)
    floor = 1e-5 if dtype == "float32" else 1e-12  # round-off of the sweep itself
    err = rel(y.full(), x.full())
    assert err <= eps + floor
    assert err <= y.error_bound + floor
    # rounding again without a tolerance changes neither ranks nor values
    z = tt.round(y)
    assert z.ranks == y.ranks
    assert rel(z.full(), y.full()) <= RTOL[dtype]
    # and asking for the same ranks again is exact too
    w = tt.round(y, y.ranks)
    assert rel(w.full(), y.full()) <= RTOL[dtype]


@given(case=cases, cap=st.integers(1, 3), backend=backends)
def test_rank_cap_is_respected_and_optimal_per_bond(case, cap, backend):
    shape, rank, seed = case
    x = build(shape, rank + 2, seed, "float64", backend)
    y = tt.round(x, cap)
    assert max(y.ranks) <= cap
    assert rel(y.full(), x.full()) <= y.error_bound + 1e-12


def test_long_train_rounds_without_overflow_or_underflow():
    d = 500
    rng = np.random.default_rng(0)
    # every core has norm ~ 30: the tensor's norm is ~ 30^500 = 1e738, beyond float64
    cores = [
        rng.standard_normal((1 if k == 0 else 3, 2, 1 if k == d - 1 else 3)) * 10 for k in range(d)
    ]
    x = tt.TensorTrain(cores)
    y = tt.round(x + x, eps=1e-10)
    assert y.ranks == tt.round(x, eps=1e-10).ranks
    assert all(np.isfinite(c).all() for c in y.cores)
    # compare log-norms: ‖2x‖ = 2‖x‖
    lx = tt.round(x)._scaled_dot(tt.round(x))
    ly = y._scaled_dot(y)
    log_nx = 0.5 * (np.log(float(lx[0])) + lx[1])
    log_ny = 0.5 * (np.log(float(ly[0])) + ly[1])
    assert log_nx > 700  # would overflow as a float
    assert log_ny - log_nx == pytest.approx(np.log(2.0), abs=1e-8)
    tiny = tt.TensorTrain([c / 100 for c in cores])
    t = tt.round(tiny, eps=1e-10)
    assert all(np.isfinite(c).all() and np.abs(c).max() > 0 for c in t.cores)


def test_ttmatrix_rounding_keeps_type_and_shapes():
    m = tt.random_ttm((2, 3, 4), (4, 3, 2), 3, seed=0)
    r = tt.round(m + m)
    assert isinstance(r, tt.TTMatrix)
    assert r.row_shape == m.row_shape and r.col_shape == m.col_shape
    assert r.ranks == tt.round(m).ranks
    assert rel(r.full(), 2 * m.full()) <= 1e-10
    assert m.round(2).ranks == (1, 2, 2, 1)


def test_zero_train_rounds_to_rank_one_zeros():
    x = tt.TensorTrain([np.zeros((1, 3, 2)), np.zeros((2, 3, 1))])
    y = tt.round(x, eps=0.1)
    assert y.ranks == (1, 1, 1) and float(y.norm()) == 0.0


@given(case=cases, backend=backends, direction=st.sampled_from(["left", "right"]))
def test_orthogonalize(case, backend, direction):
    shape, rank, seed = case
    x = build(shape, rank, seed, "float64", backend)
    y = tt.orthogonalize(x, direction)
    assert rel(y.full(), x.full()) <= 1e-10
    cores = [to_numpy(c) for c in y.cores]
    check = cores[:-1] if direction == "left" else cores[1:]
    for c in check:
        r, n, r2 = c.shape
        m = c.reshape(r * n, r2) if direction == "left" else c.reshape(r, n * r2).T
        assert np.allclose(m.T @ m, np.eye(m.shape[1]), atol=1e-10)


def test_bad_arguments():
    x = tt.random_tt((2, 3, 4), 2, seed=0)
    with pytest.raises(InvalidInputError, match="direction"):
        tt.orthogonalize(x, "up")
    with pytest.raises(InvalidInputError, match="eps"):
        tt.round(x, eps=1.5)
    with pytest.raises(TypeError, match="TensorTrain or TTMatrix"):
        tt.round(np.ones((2, 3)))
    with pytest.warns(RankClippedWarning):
        tt.round(x, [1, 5, 5, 1])


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_rounding_keeps_torch_autograd():
    cores = [
        torch.randn(1, 3, 4, requires_grad=True),
        torch.randn(4, 3, 4, requires_grad=True),
        torch.randn(4, 3, 1, requires_grad=True),
    ]
    y = tt.round(tt.TensorTrain(cores), 2)
    y.norm().backward()
    assert all(c.grad is not None and torch.isfinite(c.grad).all() for c in cores)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_round_refuses_non_finite_cores_naming_the_core(backend, bad):
    x = tt.random_tt((3, 4, 5), 2, seed=0)
    cores = [np.array(c) for c in x.cores]
    cores[1][0, 1, 0] = bad
    y = tt.TensorTrain([to_backend(c, backend) for c in cores])
    with pytest.raises(InvalidInputError, match=r"core 1 .*NaN or Inf"):
        tt.round(y, 2)
    with pytest.raises(InvalidInputError, match=r"core 1 .*NaN or Inf"):
        tt.TTMatrix.from_tensor_train(y, (3, 4, 5), (1, 1, 1)).round(eps=0.1)
