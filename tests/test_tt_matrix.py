"""TTMatrix: dense equivalence of full/T/apply/@, TT views, layouts, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import RTOL, backends, dtypes, seeds, to_backend, to_numpy, torch

import ttdecomp as tt
from ttdecomp.errors import BackendMismatchError, ShapeError


@st.composite
def matrix_layouts(draw):
    """Row/col shapes of an interleaved, split or mixed TT-matrix, with ranks and seed."""
    kind = draw(st.sampled_from(["interleaved", "split", "mixed"]))
    d = draw(st.integers(1, 4))
    if kind == "interleaved":
        rows = tuple(draw(st.integers(2, 4)) for _ in range(d))
        cols = tuple(draw(st.integers(2, 4)) for _ in range(d))
    elif kind == "split":
        k = draw(st.integers(1, 3))
        cols = tuple(draw(st.integers(2, 5)) for _ in range(k)) + (1,) * (d)
        rows = (1,) * k + tuple(draw(st.integers(2, 5)) for _ in range(d))
    else:
        rows = tuple(draw(st.integers(1, 4)) for _ in range(d))
        cols = tuple(draw(st.integers(1, 4)) for _ in range(d))
    rank = draw(st.integers(1, 4))
    return rows, cols, rank, draw(seeds)


def make_ttm(rows, cols, rank, seed, dtype, backend):
    m = tt.random_ttm(rows, cols, rank, seed=seed)
    rng = np.random.default_rng(seed + 3)
    cores = []
    for c in m.cores:
        c = c.astype(dtype)
        if dtype.startswith("complex"):
            c = c + 1j * rng.standard_normal(c.shape)
        cores.append(to_backend(c, backend))
    return tt.TTMatrix(cores)


def dense_of(rows, cols, cores) -> np.ndarray:
    """Reference: W[i, j] from the definition, entry by entry via einsum over all cores."""
    d = len(cores)
    letters = "abcdefghijklmnopqrstuvwxyz"
    # core k: (r_{k-1}, m_k, n_k, r_k) with rank letters R[k], R[k+1]
    ranks = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    spec = ",".join(ranks[k] + letters[k] + letters[13 + k] + ranks[k + 1] for k in range(d))
    out = "A" + letters[:d] + letters[13 : 13 + d] + ranks[d]
    full = np.einsum(spec + "->" + out, *[to_numpy(c) for c in cores])
    return full.reshape(int(np.prod(rows)), int(np.prod(cols)))


def close(a, b, dtype):
    a, b = to_numpy(a), to_numpy(b)
    return bool(np.linalg.norm(a - b) <= RTOL[dtype] * max(np.linalg.norm(b), 1.0))


@given(case=matrix_layouts(), dtype=dtypes, backend=backends)
def test_full_transpose_and_products_match_dense(case, dtype, backend):
    rows, cols, rank, seed = case
    m = make_ttm(rows, cols, rank, seed, dtype, backend)
    w = dense_of(rows, cols, m.cores)
    assert m.shape == w.shape and m.row_shape == rows and m.col_shape == cols
    assert close(m.full(), w, dtype)
    assert close(m.T.full(), w.T, dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 2, m.shape[1])).astype(dtype)
    assert close(m.apply(to_backend(x, backend)), x @ w.T, dtype)
    v = rng.standard_normal(m.shape[1]).astype(dtype)
    assert close(m @ to_backend(v, backend), w @ v, dtype)
    k = rng.standard_normal((m.shape[1], 5)).astype(dtype)
    assert close(m @ to_backend(k, backend), w @ k, dtype)
    assert m.n_params == sum(int(np.prod(c.shape)) for c in m.cores)
    assert m.full_size == w.size


@given(case=matrix_layouts(), backend=backends)
def test_tensor_train_view_round_trip_and_algebra(case, backend):
    rows, cols, rank, seed = case
    m = make_ttm(rows, cols, rank, seed, "float64", backend)
    view = m.to_tensor_train()
    assert view.shape == tuple(a * b for a, b in zip(rows, cols))
    back = tt.TTMatrix.from_tensor_train(view, rows, cols)
    assert close(back.full(), m.full(), "float64")
    w = to_numpy(m.full())
    assert close((m + m).full(), 2 * w, "float64")
    assert close((m - 0.5 * m).full(), 0.5 * w, "float64")
    assert close((m * m).full(), w * w, "float64")
    assert close(m.norm(), np.linalg.norm(w), "float64")
    assert close(m.dot(m), np.sum(w * w), "float64")


def test_layout_names():
    assert tt.random_ttm((2, 3), (4, 5), 2, seed=0).layout == "interleaved"
    assert tt.random_ttm((1, 1, 3, 4), (4, 5, 1, 1), 2, seed=0).layout == "split"
    assert tt.random_ttm((1, 2), (3, 1), 2, seed=0).layout == "split"
    assert tt.random_ttm((2, 1), (1, 3), 2, seed=0).layout == "mixed"  # outputs first
    assert tt.random_ttm((2, 1, 3), (1, 3, 1), 1, seed=0).layout == "mixed"


def test_tt_svd_of_matrix_round_trip_through_ttmatrix():
    w = np.random.default_rng(0).standard_normal((24, 30))
    m = tt.tt_svd(w, row_shape=(2, 3, 4), col_shape=(5, 3, 2))
    assert close(m.full(), w, "float64")
    assert m.relative_error(w) < 1e-12


def test_validation():
    with pytest.raises(ShapeError, match="core 0 has 3 axes"):
        tt.TTMatrix([np.ones((1, 2, 1))])
    with pytest.raises(ShapeError, match="core 1 has left rank 3 but core 0 has right rank 2"):
        tt.TTMatrix([np.ones((1, 2, 2, 2)), np.ones((3, 2, 2, 1))])
    m = tt.random_ttm((2, 2), (3, 3), 2, seed=0)
    with pytest.raises(ShapeError, match="factors must multiply"):
        tt.TTMatrix.from_tensor_train(m.to_tensor_train(), (2, 2), (2, 3))
    with pytest.raises(ShapeError, match=r"\(N,\) or \(N, K\)"):
        m @ np.ones((2, 9, 3))
    with pytest.raises(ShapeError, match="differ"):
        m + tt.random_ttm((4, 1), (3, 3), 2, seed=0)
    with pytest.raises(ShapeError, match="does not match"):
        m.relative_error(np.ones((9, 4)))


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_mixing_backends_in_apply_is_an_error():
    m = tt.random_ttm((2, 2), (3, 3), 2, seed=0)
    with pytest.raises(BackendMismatchError):
        m.apply(torch.ones(4, 9, dtype=torch.float64))
