"""TensorTrain: containers, TT arithmetic against the dense results, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import RTOL, backends, dtypes, seeds, tensor_shapes, to_backend, to_numpy, torch

import ttdecomp as tt
from ttdecomp.errors import BackendMismatchError, ShapeError


def make_tt(shape, rank, seed, dtype, backend) -> tt.TensorTrain:
    x = tt.random_tt(shape, rank, seed=seed)
    cores = []
    rng = np.random.default_rng(seed + 1)
    for c in x.cores:
        c = c.astype(dtype)
        if dtype.startswith("complex"):
            c = c + 1j * rng.standard_normal(c.shape)
        cores.append(to_backend(c, backend))
    return tt.TensorTrain(cores)


def close(a, b, dtype) -> bool:
    a, b = to_numpy(a), to_numpy(b)
    return bool(np.linalg.norm(a - b) <= RTOL[dtype] * max(np.linalg.norm(b), 1.0))


pairs = st.tuples(
    tensor_shapes(min_dims=1, max_dims=5, max_size=600), st.integers(1, 3), st.integers(1, 3), seeds
)


@given(case=pairs, dtype=dtypes, backend=backends)
def test_arithmetic_matches_dense(case, dtype, backend):
    shape, ra, rb, seed = case
    a = make_tt(shape, ra, seed, dtype, backend)
    b = make_tt(shape, rb, seed + 7, dtype, backend)
    fa, fb = to_numpy(a.full()), to_numpy(b.full())
    assert close((a + b).full(), fa + fb, dtype)
    assert close((a - b).full(), fa - fb, dtype)
    assert close((a * 2.5).full(), 2.5 * fa, dtype)
    assert close((3 * a).full(), 3 * fa, dtype)
    assert close((a / 4).full(), fa / 4, dtype)
    assert close((-a).full(), -fa, dtype)
    h = a.hadamard(b)
    assert close(h.full(), fa * fb, dtype)
    assert close((a * b).full(), fa * fb, dtype)
    assert h.ranks == tuple(x * y for x, y in zip(a.ranks, b.ranks))
    assert (a + b).ranks[1:-1] == tuple(x + y for x, y in zip(a.ranks[1:-1], b.ranks[1:-1]))
    assert close(a.dot(b), np.vdot(fa, fb), dtype)
    assert close(a.norm(), np.linalg.norm(fa), dtype)


@given(case=pairs, dtype=dtypes, backend=backends)
def test_properties_and_indexing(case, dtype, backend):
    shape, ra, _, seed = case
    a = make_tt(shape, ra, seed, dtype, backend)
    assert a.shape == shape and a.ndim == len(shape)
    assert a.n_params == sum(int(np.prod(c.shape)) for c in a.cores)
    assert a.full_size == int(np.prod(shape))
    assert a.ranks[0] == a.ranks[-1] == 1
    fa = to_numpy(a.full())
    idx = tuple(int(i) for i in np.random.default_rng(seed).integers(0, shape))
    assert close(a[idx], fa[idx], dtype)
    neg = tuple(i - n for i, n in zip(idx, shape))
    assert close(a[neg], fa[idx], dtype)


def test_norm_of_long_train_does_not_overflow():
    # 400 cores of norm 10: the norm is 1e400, far beyond float64, but the dot is rescaled
    cores = [np.full((1, 1, 1), 10.0) for _ in range(400)]
    x = tt.TensorTrain(cores)
    value, log_scale = x._scaled_dot(x)
    assert np.isclose(0.5 * (np.log(float(value)) + log_scale), 400 * np.log(10.0))
    small = tt.TensorTrain([np.full((1, 1, 1), 0.5) for _ in range(300)])
    assert float(small.norm()) == pytest.approx(0.5**300, rel=1e-10)


def test_relative_error():
    a = tt.random_tt((3, 4, 5), 2, seed=0)
    dense = a.full()
    assert a.relative_error(dense) <= 1e-15
    assert a.relative_error(2 * dense) == pytest.approx(0.5)
    with pytest.raises(ShapeError, match="does not match"):
        a.relative_error(np.ones((3, 4)))


def test_validation_messages_quote_offending_core():
    with pytest.raises(ShapeError, match="core 1 has left rank 4 but core 0 has right rank 3"):
        tt.TensorTrain([np.ones((1, 2, 3)), np.ones((4, 2, 1))])
    with pytest.raises(ShapeError, match="core 1 has 2 axes"):
        tt.TensorTrain([np.ones((1, 2, 3)), np.ones((3, 2))])
    with pytest.raises(ShapeError, match="first core's left rank must be 1"):
        tt.TensorTrain([np.ones((2, 2, 1))])
    with pytest.raises(ShapeError, match="last core's right rank must be 1"):
        tt.TensorTrain([np.ones((1, 2, 2))])
    with pytest.raises(ShapeError, match="at least one core"):
        tt.TensorTrain([])
    with pytest.raises(BackendMismatchError, match="dtype"):
        tt.TensorTrain([np.ones((1, 2, 2)), np.ones((2, 2, 1), dtype=np.float32)])
    with pytest.raises(BackendMismatchError, match="floating"):
        tt.TensorTrain([np.ones((1, 2, 1), dtype=np.int64)])


def test_shape_mismatch_in_algebra():
    a = tt.random_tt((2, 3), 1, seed=0)
    b = tt.random_tt((3, 2), 1, seed=0)
    with pytest.raises(ShapeError, match="differ"):
        a + b
    with pytest.raises(ShapeError, match="differ"):
        a.dot(b)
    with pytest.raises(IndexError, match="tuple of 2 integers"):
        a[0]
    with pytest.raises(IndexError, match="out of range"):
        a[2, 0]


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_mixing_numpy_and_torch_is_an_error():
    a = tt.random_tt((2, 3), 2, seed=0)
    b = tt.TensorTrain([torch.from_numpy(c) for c in a.cores])
    with pytest.raises(BackendMismatchError, match="one array library"):
        a + b
    with pytest.raises(BackendMismatchError, match="one array library"):
        tt.TensorTrain([a.cores[0], b.cores[1]])


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_torch_autograd_through_arithmetic():
    cores = [torch.randn(1, 3, 2, requires_grad=True), torch.randn(2, 4, 1, requires_grad=True)]
    x = tt.TensorTrain(cores)
    loss = (x + x).norm() + x.hadamard(x).dot(x)
    loss.backward()
    assert all(c.grad is not None and torch.isfinite(c.grad).all() for c in cores)


@pytest.mark.parametrize(
    ("da", "db"), [("float64", "float32"), ("float64", "complex64"), ("complex128", "float32")]
)
@pytest.mark.parametrize("op", ["add", "dot", "hadamard"])
def test_one_dtype_rule_for_train_train_operations(da, db, op):
    x = tt.random_tt((3, 4), 2, seed=0)
    a = tt.TensorTrain([c.astype(da) for c in x.cores])
    b = tt.TensorTrain([c.astype(db) for c in x.cores])
    with pytest.raises(BackendMismatchError, match="cast one train"):
        {"add": lambda: a + b, "dot": lambda: a.dot(b), "hadamard": lambda: a * b}[op]()


def test_full_refuses_a_huge_dense_tensor_up_front_with_an_override():
    import time

    x = tt.random_tt((10,) * 15, 2, seed=0)  # 10^15 entries
    start = time.perf_counter()
    with pytest.raises(ShapeError, match=r"1,000,000,000,000,000 entries.*max_entries"):
        x.full()
    assert time.perf_counter() - start < 1.0
    m = tt.TTMatrix.from_tensor_train(x, (10,) * 15, (1,) * 15)
    with pytest.raises(ShapeError, match="entries"):
        m.full()
    small = tt.random_tt((4, 4, 4), 2, seed=0)
    with pytest.raises(ShapeError, match="64 entries"):
        small.full(max_entries=10)
    assert small.full(max_entries=None).shape == (4, 4, 4)
    assert tt.TTMatrix.from_tensor_train(small, (2, 2, 2), (2, 2, 2)).full(
        max_entries=64
    ).shape == (
        8,
        8,
    )


def test_norm_and_dot_of_a_huge_deep_train_return_inf_instead_of_raising():
    cores = [np.full((1, 2, 1), 1e3) for _ in range(500)]  # entries 1e1500: beyond float64
    x = tt.TensorTrain(cores)
    assert float(x.norm()) == np.inf
    assert float(x.dot(x)) == np.inf
    tiny = tt.TensorTrain([np.full((1, 2, 1), 1e-3) for _ in range(500)])
    assert float(tiny.norm()) == 0.0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_scalar_times_train_keeps_one_dtype(backend):
    if backend == "torch" and torch is None:
        pytest.skip("torch not installed")
    x = tt.random_tt((3, 4, 5), 2, seed=0)
    x32 = tt.TensorTrain([to_backend(c.astype("float32"), backend) for c in x.cores])
    ref = to_numpy(x32.full())
    for s in (np.float64(2), np.float32(2), 2, 2.0):
        y = x32 * s
        assert y.dtype == x32.dtype and np.allclose(to_numpy(y.full()), 2 * ref, rtol=1e-6)
        y = s * x32
        assert y.dtype == x32.dtype
    z = x32 * 1j
    assert np.allclose(to_numpy(z.full()), 1j * ref, rtol=1e-6)
    assert len({str(c.dtype) for c in z.cores}) == 1 and "complex" in str(z.dtype)
    with pytest.raises(TypeError, match="scalar"):
        x32 * np.array([2.0])
    with pytest.raises(TypeError, match="scalar"):
        np.array([2.0]) * x32


def test_zero_size_and_half_precision_inputs_are_refused_up_front():
    from ttdecomp.errors import BackendMismatchError, ShapeError

    with pytest.raises(ShapeError, match="zero-size"):
        tt.tt_svd(np.ones((3, 0, 2)))
    with pytest.raises(BackendMismatchError, match="float16"):
        tt.tt_svd(np.ones((4, 4, 4), dtype=np.float16))
    if torch is not None:
        with pytest.raises(BackendMismatchError, match="bfloat16"):
            tt.tt_svd(torch.ones(4, 4, 4, dtype=torch.bfloat16))
        x = tt.random_tt((3, 4, 5), 2, seed=0)
        half = tt.TensorTrain([torch.tensor(c, dtype=torch.float16) for c in x.cores])
        with pytest.raises(BackendMismatchError, match="float16"):
            tt.round(half, 1)


@pytest.mark.parametrize("bound", ["abc", -1, float("nan"), True, "0.1"])
def test_containers_refuse_a_bad_error_bound(bound):
    from ttdecomp.errors import InvalidInputError

    x = tt.random_tt((3, 4), 2, seed=0)
    with pytest.raises(InvalidInputError, match="error_bound"):
        tt.TensorTrain(x.cores, error_bound=bound)
    with pytest.raises(InvalidInputError, match="error_bound"):
        tt.TTMatrix([c[:, :, None, :] for c in x.cores], error_bound=bound)
    assert tt.TensorTrain(x.cores, error_bound=0.5).error_bound == 0.5
