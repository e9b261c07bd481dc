"""Properties of tt_svd and the truncation kernel, on every backend and dtype."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    BACKENDS,
    RTOL,
    backends,
    dtypes,
    random_array,
    seeds,
    tensor_shapes,
    to_backend,
    to_numpy,
    torch,
)

import ttdecomp as tt
from ttdecomp._validation import attainable_ranks
from ttdecomp.errors import (
    BackendMismatchError,
    InvalidInputError,
    RankClippedWarning,
    RankError,
    ShapeError,
)

# Unit round-off per dtype: the floor under any "equal" or "≤ eps" check.
UNIT = {"float32": 6e-8, "float64": 1.1e-16, "complex128": 1.1e-16}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-300))


@given(shape=tensor_shapes(), dtype=dtypes, backend=backends, seed=seeds)
def test_exact_recovery_at_full_rank(shape, dtype, backend, seed):
    a = random_array(np.random.default_rng(seed), shape, dtype)
    x = tt.tt_svd(to_backend(a, backend), as_matrix=False)
    assert type(x.cores[0]) is type(to_backend(a, backend))
    assert x.shape == shape
    assert x.ranks == tuple(min(r, t) for r, t in zip(x.ranks, attainable_ranks(shape)))
    assert rel_err(a, to_numpy(x.full())) <= RTOL[dtype]
    assert x.error_bound == 0.0


@given(
    shape=tensor_shapes(min_dims=2, max_dims=6),
    eps=st.floats(1e-3, 0.9),
    dtype=dtypes,
    backend=backends,
    seed=seeds,
)
def test_eps_bound_holds(shape, eps, dtype, backend, seed):
    a = random_array(np.random.default_rng(seed), shape, dtype)
    x = tt.tt_svd(to_backend(a, backend), eps=eps, as_matrix=False)
    err = rel_err(a, to_numpy(x.full()))
    floor = 50 * UNIT[dtype] * len(shape)  # round-off of the reconstruction itself
    assert err <= eps + floor
    # error_bound is rigorous: it bounds the achieved error and respects eps
    assert err <= x.error_bound + floor
    assert x.error_bound <= eps * (1 + 1e-9) + floor


@given(
    shape=tensor_shapes(min_dims=2, max_dims=5),
    rank=st.integers(1, 8),
    backend=backends,
    seed=seeds,
)
def test_ranks_at_most_requested_and_attainable(shape, rank, backend, seed):
    a = random_array(np.random.default_rng(seed), shape, "float64")
    x = tt.tt_svd(to_backend(a, backend), ranks=rank, as_matrix=False)
    top = attainable_ranks(shape)
    assert all(
        r <= min(rank, t) or (k in (0, len(shape))) for k, (r, t) in enumerate(zip(x.ranks, top))
    )
    assert x.ranks[0] == x.ranks[-1] == 1
    # truncating to rank r is optimal per bond: the reported bound matches the real error
    err = rel_err(a, to_numpy(x.full()))
    assert err <= x.error_bound + 1e-12


@given(
    case=st.tuples(tensor_shapes(min_dims=3, max_dims=5, max_size=800), st.integers(1, 3), seeds)
)
def test_low_rank_input_is_recovered_with_its_ranks(case):
    shape, rank, seed = case
    x0 = tt.random_tt(shape, rank, seed=seed)
    a = x0.full()
    x = tt.tt_svd(a, eps=1e-8, as_matrix=False)
    assert all(r <= r0 for r, r0 in zip(x.ranks, x0.ranks))
    assert rel_err(a, x.full()) <= 1e-8


def test_ranks_and_eps_combine():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6, 6, 6))
    by_eps = tt.tt_svd(a, eps=0.4)
    both = tt.tt_svd(a, ranks=3, eps=0.4)
    assert all(r <= 3 for r in both.ranks)
    assert all(rb <= re for rb, re in zip(both.ranks, by_eps.ranks))
    assert rel_err(a, both.full()) <= both.error_bound + 1e-12


def test_sequence_ranks_forms_and_clipping_warning():
    a = np.random.default_rng(1).standard_normal((3, 4, 5))
    x = tt.tt_svd(a, ranks=[1, 2, 3, 1])
    assert x.ranks == (1, 2, 3, 1)
    assert tt.tt_svd(a, ranks=[2, 3]).ranks == (1, 2, 3, 1)
    with pytest.warns(RankClippedWarning, match=r"bond 1: 9 -> 3"):
        y = tt.tt_svd(a, ranks=[1, 9, 5, 1])
    assert y.ranks == (1, 3, 5, 1)
    # an int is a cap and clips silently at bonds that cannot reach it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tt.tt_svd(a, ranks=100).ranks == (1, 3, 5, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matrix_input_gives_ttmatrix(backend):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 48))
    m = tt.tt_svd(to_backend(w, backend), row_shape=(4, 4, 4), col_shape=(4, 3, 4))
    assert isinstance(m, tt.TTMatrix)
    assert m.shape == (64, 48)
    assert rel_err(w, to_numpy(m.full())) <= 1e-12
    m8 = tt.tt_svd(to_backend(w, backend), ranks=8, row_shape=(4, 4, 4), col_shape=(4, 3, 4))
    assert max(m8.ranks) <= 8
    assert rel_err(w, to_numpy(m8.full())) <= m8.error_bound + 1e-12


def test_matrix_as_tensor():
    w = np.random.default_rng(3).standard_normal((5, 7))
    x = tt.tt_svd(w, as_matrix=False)
    assert isinstance(x, tt.TensorTrain) and x.ranks == (1, 5, 1)


@pytest.mark.parametrize("method", ["svd", "qr", "gram", "auto"])
def test_every_svd_path_gives_the_same_truncation(method):
    x0 = tt.random_tt((4,) * 8, 5, seed=4)
    a = x0.full() + 1e-3 * np.random.default_rng(5).standard_normal((4,) * 8) / 16
    x = tt.tt_svd(a, ranks=5, method=method)
    ref = tt.tt_svd(a, ranks=5, method="svd")
    assert x.ranks == ref.ranks
    assert abs(rel_err(a, x.full()) - rel_err(a, ref.full())) <= 1e-7


def test_matches_tensorly_reference():
    tensorly = pytest.importorskip("tensorly")
    from tensorly.decomposition import tensor_train

    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 6, 7, 4))
    ranks = [1, 4, 9, 3, 1]
    ours = tt.tt_svd(a, ranks=ranks)
    theirs = tensor_train(tensorly.tensor(a), rank=ranks)
    assert ours.ranks == tuple(f.shape[-1] for f in [np.ones((1, 1, 1)), *theirs.factors])
    ref = tensorly.tt_to_tensor(theirs)
    # both are the same quasi-optimal TT-SVD truncation: equal errors
    assert abs(rel_err(a, ours.full()) - rel_err(a, ref)) <= 1e-10


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_torch_keeps_dtype_device_and_autograd():
    a = torch.randn(4, 5, 6, dtype=torch.float32, requires_grad=True)
    x = tt.tt_svd(a, ranks=3)
    assert all(c.dtype == torch.float32 and c.device == a.device for c in x.cores)
    loss = x.norm() ** 2
    loss.backward()
    assert a.grad is not None and a.grad.shape == a.shape
    assert torch.isfinite(a.grad).all()


@pytest.mark.skipif(torch is None, reason="torch not installed")
@given(shape=tensor_shapes(min_dims=2, max_dims=5), eps=st.floats(0.01, 0.5), seed=seeds)
def test_numpy_and_torch_agree(shape, eps, seed):
    a = np.random.default_rng(seed).standard_normal(shape)
    xn = tt.tt_svd(a, eps=eps, as_matrix=False)
    xt = tt.tt_svd(torch.from_numpy(a), eps=eps, as_matrix=False)
    # ranks may differ only where a singular value sits on the threshold (ties at round-off)
    fn, ft = xn.full(), to_numpy(xt.full())
    assert abs(rel_err(a, fn) - rel_err(a, ft)) <= 1e-8 or xn.ranks != xt.ranks
    if xn.ranks == xt.ranks:
        assert rel_err(fn, ft) <= 1e-8 + 2 * eps


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "a, match",
    [
        (np.arange(24).reshape(2, 3, 4), "integer|dtype int"),
        (np.ones((2, 3), dtype=bool), "dtype bool"),
        ([[1.0, 2.0]], "must be an array"),
    ],
)
def test_rejects_non_float_input(a, match):
    with pytest.raises(BackendMismatchError, match=match):
        tt.tt_svd(a)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_nan_inf(bad):
    a = np.ones((3, 4, 5))
    a[1, 2, 3] = bad
    with pytest.raises(InvalidInputError, match="1 NaN or Inf entry"):
        tt.tt_svd(a)


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.0, 2.0, float("nan")])
def test_rejects_meaningless_eps(eps):
    with pytest.raises(InvalidInputError, match="eps"):
        tt.tt_svd(np.ones((2, 3, 4)), eps=eps)


@pytest.mark.parametrize(
    "ranks, match",
    [
        (0, "positive"),
        (-3, "positive"),
        ([1, 2, 1], "3 entries for a train of 3 cores"),
        ([2, 2, 2, 1], "start and end with 1"),
        ([1, 0, 2, 1], r"ranks\[1\] = 0"),
        ([1, 2.5, 2, 1], "integers only"),
    ],
)
def test_rejects_bad_ranks(ranks, match):
    with pytest.raises(RankError, match=match):
        tt.tt_svd(np.ones((2, 3, 4)), ranks=ranks)


def test_rejects_shapes_that_do_not_multiply():
    w = np.ones((12, 10))
    with pytest.raises(ShapeError, match="multiplies to 8"):
        tt.tt_svd(w, row_shape=(2, 4), col_shape=(2, 5))
    with pytest.raises(ShapeError, match="same length"):
        tt.tt_svd(w, row_shape=(3, 4), col_shape=(10,))
    with pytest.raises(ShapeError, match="both row_shape and col_shape"):
        tt.tt_svd(w, row_shape=(3, 4))
    with pytest.raises(ShapeError, match="2-D"):
        tt.tt_svd(np.ones((2, 3, 4)), row_shape=(2,), col_shape=(3,))


def test_rejects_unknown_method_and_layout():
    with pytest.raises(InvalidInputError, match="method"):
        tt.tt_svd(np.ones((2, 3)), method="lanczos")
    with pytest.raises(InvalidInputError, match="layout"):
        tt.tt_svd(np.ones((4, 4)), layout="diagonal")


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_validation_happens_before_work_on_torch():
    a = torch.ones(3, 4, dtype=torch.int64)
    with pytest.raises(BackendMismatchError, match=r"torch\.int64"):
        tt.tt_svd(a)


def test_truncate_kernel_reports_tail():
    rng = np.random.default_rng(7)
    u, _ = np.linalg.qr(rng.standard_normal((20, 6)))
    v, _ = np.linalg.qr(rng.standard_normal((30, 6)))
    s = np.array([5.0, 4.0, 3.0, 0.2, 0.1, 0.05])
    a = (u * s) @ v.T
    cut = tt.truncate(a, tol_sq=0.06)
    assert cut.rank == 3
    assert math.isclose(cut.tail_sq, 0.2**2 + 0.1**2 + 0.05**2, rel_tol=1e-10)
    assert math.isclose(np.linalg.norm(a - cut.left @ cut.right) ** 2, cut.tail_sq, rel_tol=1e-8)
    assert tt.truncate(a, max_rank=2).rank == 2


def test_ranks_that_cannot_meet_eps_warn_with_the_achieved_bound():
    from ttdecomp.errors import TTWarning

    a = np.random.default_rng(0).standard_normal((6, 6, 6))
    with pytest.warns(TTWarning, match="eps=0.01 is not met"):
        x = tt.tt_svd(a, ranks=2, eps=0.01)
    assert x.error_bound > 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tt.tt_svd(a, ranks=36, eps=0.5)  # the ranks allow eps: no warning
    with pytest.warns(TTWarning, match="is not met"):
        tt.round(tt.tt_svd(a), 2, eps=0.01)


@pytest.mark.parametrize("ranks", [{1, 2}, "121", b"12", {0: 2}, frozenset({2})])
def test_ranks_as_a_set_string_or_mapping_are_refused(ranks):
    a = np.ones((3, 3, 3))
    from ttdecomp.errors import RankError

    with pytest.raises(RankError, match="ranks"):
        tt.tt_svd(a, ranks=ranks)


def test_ranks_as_a_numpy_array_still_work():
    a = np.random.default_rng(0).standard_normal((3, 3, 3))
    assert tt.tt_svd(a, ranks=np.array([1, 2, 2, 1])).ranks == (1, 2, 2, 1)
    assert tt.tt_svd(a, ranks=(2, 2)).ranks == (1, 2, 2, 1)


def test_unfactorable_matrix_advice_fits_tt_svd():
    with pytest.raises(tt.errors.ShapeError, match="tt_svd does not pad") as info:
        tt.tt_svd(np.ones((3, 5)))
    assert "pass pad=True" not in str(info.value) and "as_matrix=False" in str(info.value)
