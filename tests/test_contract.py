"""Properties of ttdecomp.contract: every order equals ``x @ W.T``, the cost model is exact."""

from __future__ import annotations

import math
import subprocess
import sys

import array_api_strict
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    BACKENDS,
    backends,
    random_array,
    seeds,
    to_backend,
    to_numpy,
    torch,
    ttm_layouts,
)

from ttdecomp._executor import execute
from ttdecomp.contract import (
    ORDERS,
    ContractionCost,
    ContractionPlan,
    MachineModel,
    apply,
    contraction_plan,
    estimate_costs,
    linear,
    ttm_matmul,
)
from ttdecomp.errors import BackendMismatchError, ShapeError
from ttdecomp.tensor_train import TensorTrain
from ttdecomp.tt_matrix import TTMatrix

# Tolerances of apply versus a dense reference, relative to ‖x‖·‖W‖ (the products reorder
# sums, so the error scales with the magnitudes, not with ‖y‖).
TOL = {"float32": 1e-4, "float64": 1e-11, "complex128": 1e-11}


def random_cores(rng, layout, dtype="float64"):
    rows, cols, ranks = layout
    return [
        random_array(rng, (ranks[k], rows[k], cols[k], ranks[k + 1]), dtype)
        for k in range(len(rows))
    ]


def close(y, ref, x, w, dtype):
    scale = max(np.linalg.norm(x) * np.linalg.norm(w), 1e-30)
    return np.linalg.norm(to_numpy(y) - ref) <= TOL[dtype] * scale


leading_axes = st.lists(st.integers(0, 3), min_size=0, max_size=2).map(tuple)


@given(
    layout=ttm_layouts(),
    lead=leading_axes,
    dtype=st.sampled_from(["float32", "float64", "complex128"]),
    backend=backends,
    seed=seeds,
)
def test_apply_equals_dense(layout, lead, dtype, backend, seed):
    rng = np.random.default_rng(seed)
    cores = random_cores(rng, layout, dtype)
    w = TTMatrix(cores).full()
    x = random_array(rng, (*lead, w.shape[1]), dtype)
    y = apply([to_backend(c, backend) for c in cores], to_backend(x, backend))
    assert tuple(y.shape) == (*lead, w.shape[0])
    assert close(y, x @ w.T, x, w, dtype)


@given(layout=ttm_layouts(), batch=st.integers(0, 9), seed=seeds)
def test_every_order_gives_the_same_result_and_counted_flops_equal_the_model(layout, batch, seed):
    rng = np.random.default_rng(seed)
    cores = random_cores(rng, layout)
    w = TTMatrix(cores).full()
    x = rng.standard_normal((batch, w.shape[1]))
    costs = estimate_costs(*layout, batch)
    assert {c.order for c in costs} == set(ORDERS) - ({"merged"} if len(cores) == 1 else set())
    for budget in (1, 10**9):  # chunked row by row, and in one piece
        # float64 cores: 8 bytes per element in the time estimate
        for cost in estimate_costs(*layout, batch, itemsize=8, memory_budget=budget):
            plan = contraction_plan(
                cores, batch, order=cost.order, split=cost.split, memory_budget=budget
            )
            assert plan.cost == cost
            counter = [0]
            y = execute(cores, x, plan, counter)
            assert counter[0] == cost.flops, (cost, counter[0])
            assert close(y, x @ w.T, x, w, "float64")


@given(layout=ttm_layouts(), batch=st.integers(1, 10_000))
def test_plan_picks_the_fastest_estimate_and_chunks_within_budget(layout, batch):
    # float64 cores: 8 bytes per element in the traffic estimate
    costs = estimate_costs(*layout, batch, itemsize=8, memory_budget=1000)
    rows, cols, ranks = layout
    cores = [np.zeros((ranks[k], rows[k], cols[k], ranks[k + 1])) for k in range(len(rows))]
    plan = contraction_plan(cores, batch, memory_budget=1000)
    assert plan.cost.seconds == min(c.seconds for c in costs)
    assert plan.candidates[0] == plan.cost
    by_flops = contraction_plan(cores, batch, machine=MachineModel.flops_only())
    assert by_flops.cost.flops == min(c.flops for c in costs)
    assert sorted(plan.candidates, key=lambda c: (c.order, c.split or 0)) == sorted(
        costs, key=lambda c: (c.order, c.split or 0)
    )
    assert 1 <= plan.chunk <= batch

    def memory(rows):
        same = [c for c in estimate_costs(*layout, rows) if c.order == plan.order]
        return next(c.memory for c in same if c.split == plan.split)

    assert plan.chunk == batch or memory(plan.chunk) <= max(1000, memory(1))
    assert "<- chosen" in str(plan)


def test_cost_model_numbers_for_the_issue_examples():
    # (8,8,8,8)^2 rank 16: two merged halves cost 1.08 GFLOP for 64 vectors.
    costs = {
        (c.order, c.split): c for c in estimate_costs((8,) * 4, (8,) * 4, (1, 16, 16, 16, 1), 64)
    }
    assert costs[("merged", 2)].flops == 1_077_936_128
    assert costs[("ltr", None)].flops == costs[("rtl", None)].flops == 2_281_701_376
    assert costs[("dense", None)].flops - costs[("dense", None)].setup_flops == 2 * 64 * 4096**2
    # TT-LoRA split layout [16,4,4,4,2,2 | 2,2,4,4,4,16], rank 10: LoRA's cost plus setup.
    cols = (16, 4, 4, 4, 2, 2) + (1,) * 6
    rows = (1,) * 6 + (2, 2, 4, 4, 4, 16)
    ranks = (1,) + (10,) * 11 + (1,)
    batch = 8192
    plan_cost = min(estimate_costs(rows, cols, ranks, batch), key=lambda c: c.flops)
    assert (plan_cost.order, plan_cost.split) == ("merged", 6)
    assert plan_cost.flops - plan_cost.setup_flops == 2 * batch * (4096 + 4096) * 10
    assert plan_cost.setup_flops < 0.01 * plan_cost.flops
    assert plan_cost.saved == batch * 4096 + sum(
        ranks[k] * rows[k] * cols[k] * ranks[k + 1] for k in range(12)
    )


def test_time_estimate_is_the_roofline_of_each_gemm():
    # one core (M x N): every order is one GEMM of x (B, N) with W (M, N); with unit rates,
    # no cache and 1-byte items the estimate is max(FLOPs, elements moved)
    unit = MachineModel(flop_rate=1.0, bandwidth=1.0, cache_bytes=0, op_overhead=0.0)
    m, n, batch = 3, 5, 7
    for cost in estimate_costs((m,), (n,), (1, 1), batch, machine=unit, itemsize=1):
        assert cost.seconds == max(2 * batch * m * n, batch * n + batch * m + m * n)
    # overhead: one call per GEMM; a cache that holds W removes its traffic but not x's/y's
    slow_calls = MachineModel(flop_rate=1e30, bandwidth=1.0, cache_bytes=m * n, op_overhead=9.0)
    for cost in estimate_costs((m,), (n,), (1, 1), batch, machine=slow_calls, itemsize=1):
        assert cost.seconds == pytest.approx(9.0 + batch * (n + m))


@given(layout=ttm_layouts(), batch=st.integers(0, 5000))
def test_estimated_time_grows_with_the_batch_in_one_chunk(layout, batch):
    # In one piece every kernel only grows with the rows. (With chunking it need not: more
    # rows can mean more, smaller chunks whose states fit the cache, which the model
    # rewards, e.g. ((1,1,1,4,4), (3,3,4,1,1), (1,1,3,4,3,1)) rtl at 683 vs 910 rows.)
    budget = 1 << 62
    now = estimate_costs(*layout, batch, memory_budget=budget)
    more = estimate_costs(*layout, batch + 1 + batch // 3, memory_budget=budget)
    for a, b in zip(now, more):
        assert (a.order, a.split) == (b.order, b.split)
        assert 0 <= a.seconds <= b.seconds


def test_machine_defaults_and_bad_machine():
    cores = [np.zeros((1, 4, 4, 2)), np.zeros((2, 4, 4, 1))]
    assert contraction_plan(cores, 8).machine == MachineModel.cpu()
    assert contraction_plan(cores, 8, machine=MachineModel.cuda()).machine == MachineModel.cuda()
    with pytest.raises(ShapeError, match="MachineModel"):
        contraction_plan(cores, 8, machine="gpu")


def test_contraction_cost_is_a_frozen_dataclass():
    cost = estimate_costs((2, 2), (3, 3), (1, 2, 1), 4)[0]
    assert isinstance(cost, ContractionCost)
    with pytest.raises(AttributeError):
        cost.flops = 0  # type: ignore[misc]
    plan = contraction_plan([np.ones((1, 2, 3, 2)), np.ones((2, 2, 3, 1))], 4)
    assert isinstance(plan, ContractionPlan)
    assert plan.order == plan.cost.order and plan.split == plan.cost.split


@given(layout=ttm_layouts(max_cores=3), seed=seeds)
def test_numpy_torch_and_array_api_strict_agree(layout, seed):
    rng = np.random.default_rng(seed)
    cores = random_cores(rng, layout)
    x = rng.standard_normal((3, math.prod(layout[1])))
    ref = apply(cores, x)
    for backend in ("torch", "array_api_strict") if torch is not None else ("array_api_strict",):
        y = apply([to_backend(c, backend) for c in cores], to_backend(x, backend))
        np.testing.assert_allclose(to_numpy(y), ref, rtol=1e-12, atol=1e-12)


def test_array_api_strict_returns_its_own_arrays():
    cores = [array_api_strict.ones((1, 2, 3, 2)), array_api_strict.ones((2, 2, 1, 1))]
    y = apply(cores, array_api_strict.ones((4, 3)))
    assert isinstance(y, type(cores[0])) and y.shape == (4, 4)


def test_ttmatrix_and_core_list_give_the_same_result():
    rng = np.random.default_rng(1)
    cores = random_cores(rng, ((2, 3), (3, 2), (1, 2, 1)))
    x = rng.standard_normal((5, 6))
    np.testing.assert_array_equal(apply(TTMatrix(cores), x), apply(cores, x))
    np.testing.assert_allclose(TTMatrix(cores).apply(x), apply(cores, x))


@given(layout=ttm_layouts(max_cores=3), backend=backends, seed=seeds)
def test_linear_is_f_linear(layout, backend, seed):
    rng = np.random.default_rng(seed)
    cores = random_cores(rng, layout)
    w = TTMatrix(cores).full()
    x = rng.standard_normal((2, 3, w.shape[1]))
    b = rng.standard_normal(w.shape[0])
    y = linear(
        to_backend(x, backend), [to_backend(c, backend) for c in cores], to_backend(b, backend)
    )
    np.testing.assert_allclose(to_numpy(y), x @ w.T + b, rtol=1e-10, atol=1e-10)
    if backend == "torch":
        ref = torch.nn.functional.linear(
            torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
        )
        np.testing.assert_allclose(to_numpy(y), ref.numpy(), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- TT x TT
@st.composite
def ttm_pairs(draw):
    d = draw(st.integers(1, 3))
    dims = st.integers(1, 3)
    rows, inner, cols = ([draw(dims) for _ in range(d)] for _ in range(3))
    ranks_a = [1] + [draw(st.integers(1, 3)) for _ in range(d - 1)] + [1]
    ranks_b = [1] + [draw(st.integers(1, 3)) for _ in range(d - 1)] + [1]
    return (rows, inner, ranks_a), (inner, cols, ranks_b)


@given(
    pair=ttm_pairs(),
    dtype=st.sampled_from(["float64", "complex128"]),
    backend=backends,
    seed=seeds,
)
def test_ttm_matmul_equals_the_dense_product(pair, dtype, backend, seed):
    rng = np.random.default_rng(seed)
    a_np = random_cores(rng, pair[0], dtype)
    b_np = random_cores(rng, pair[1], dtype)
    a = TTMatrix([to_backend(c, backend) for c in a_np])
    b = TTMatrix([to_backend(c, backend) for c in b_np])
    c = ttm_matmul(a, b)
    assert isinstance(c, TTMatrix)
    assert c.ranks == tuple(ra * rb for ra, rb in zip(a.ranks, b.ranks))
    ref = TTMatrix(a_np).full() @ TTMatrix(b_np).full()
    np.testing.assert_allclose(to_numpy(c.full()), ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(to_numpy((a @ b).full()), ref, rtol=1e-10, atol=1e-10)


@given(pair=ttm_pairs(), backend=backends, seed=seeds)
def test_ttm_times_tensor_train_is_the_matrix_vector_product(pair, backend, seed):
    rng = np.random.default_rng(seed)
    a_np = random_cores(rng, pair[0])
    inner, ranks_b = pair[1][0], pair[1][2]
    v_np = [rng.standard_normal((ranks_b[k], n, ranks_b[k + 1])) for k, n in enumerate(inner)]
    a = TTMatrix([to_backend(c, backend) for c in a_np])
    c = ttm_matmul(a, TensorTrain([to_backend(c, backend) for c in v_np]))
    assert isinstance(c, TensorTrain) and c.shape == a.row_shape
    np.testing.assert_allclose(
        np.reshape(to_numpy(c.full()), -1),
        TTMatrix(a_np).full() @ np.reshape(TensorTrain(v_np).full(), -1),
        rtol=1e-10,
        atol=1e-10,
    )


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_flop_count_matches_on_other_backends(backend):
    if backend == "torch" and torch is None:
        pytest.skip("torch not installed")
    rng = np.random.default_rng(6)
    layout = ((2, 3, 2), (3, 2, 2), (1, 2, 3, 1))
    cores = [to_backend(c, backend) for c in random_cores(rng, layout)]
    x = to_backend(rng.standard_normal((5, 12)), backend)
    for cost in estimate_costs(*layout, 5):
        plan = contraction_plan(cores, 5, order=cost.order, split=cost.split, memory_budget=20)
        counter = [0]
        execute(cores, x, plan, counter)
        assert counter[0] == cost.flops


def test_ttm_matmul_rounding_meets_eps_and_ranks():
    rng = np.random.default_rng(3)
    a = TTMatrix(random_cores(rng, ((3, 3, 3), (3, 3, 3), (1, 3, 3, 1))))
    b = TTMatrix(random_cores(rng, ((3, 3, 3), (3, 3, 3), (1, 3, 3, 1))))
    exact = a.full() @ b.full()
    c = ttm_matmul(a, b, eps=0.1)
    assert np.linalg.norm(c.full() - exact) <= 0.1 * np.linalg.norm(exact) * (1 + 1e-9)
    assert max(ttm_matmul(a, b, ranks=2).ranks) <= 2


def test_ttm_matmul_on_torch_keeps_autograd():
    if torch is None:
        pytest.skip("torch not installed")
    rng = np.random.default_rng(4)
    cores = [
        torch.tensor(c, requires_grad=True) for c in random_cores(rng, ((2, 2), (2, 2), (1, 2, 1)))
    ]
    c = ttm_matmul(TTMatrix(cores), TTMatrix(cores))
    c.full().sum().backward()
    assert all(core.grad is not None for core in cores)


def test_ttm_matmul_rejects_incompatible_modes():
    a = TTMatrix([np.ones((1, 2, 3, 1)), np.ones((1, 2, 2, 1))])
    b = TTMatrix([np.ones((1, 2, 2, 1)), np.ones((1, 3, 2, 1))])
    with pytest.raises(ShapeError, match=r"col_shape=\(3, 2\).*row_shape=\(2, 3\)"):
        ttm_matmul(a, b)
    with pytest.raises(ShapeError, match="TTMatrix"):
        ttm_matmul(np.ones((6, 6)), b)
    with pytest.raises(ShapeError, match="TensorTrain"):
        ttm_matmul(a, np.ones((6, 6)))
    c = TTMatrix([np.ones((1, 3, 2, 1), dtype=np.float32), np.ones((1, 2, 2, 1), np.float32)])
    with pytest.raises(BackendMismatchError, match="dtype"):
        ttm_matmul(a, c)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    cores = [np.ones((1, 2, 3, 2)), np.ones((2, 2, 2, 1))]
    with pytest.raises(ShapeError, match=r"shape \(4, 5\).*N = 6"):
        apply(cores, np.ones((4, 5)))
    with pytest.raises(ShapeError, match="last axis"):
        apply(cores, np.ones(()))
    with pytest.raises(BackendMismatchError, match=r"float32.*float64.*dtype mismatch"):
        apply(cores, np.ones((4, 6), np.float32))
    with pytest.raises(BackendMismatchError, match="complex/real"):
        apply(cores, np.ones((4, 6), np.complex128))
    with pytest.raises(BackendMismatchError, match="floating"):
        apply(cores, np.ones((4, 6), np.int64))
    with pytest.raises(BackendMismatchError):
        apply(cores, [[1.0] * 6])
    with pytest.raises(ShapeError, match="left rank 3 but core 0 has right rank 2"):
        apply([np.ones((1, 2, 3, 2)), np.ones((3, 2, 2, 1))], np.ones((1, 6)))
    with pytest.raises(ShapeError, match="4-D"):
        apply([np.ones((1, 2, 1))], np.ones((1, 2)))
    with pytest.raises(ShapeError, match="right rank must be 1"):
        apply([np.ones((1, 2, 3, 2))], np.ones((1, 3)))
    with pytest.raises(ShapeError, match="non-empty"):
        apply([], np.ones((1, 3)))
    with pytest.raises(ShapeError, match=r"bias has shape \(3,\)"):
        linear(np.ones((1, 6)), cores, np.ones(3))
    with pytest.raises(ShapeError, match="order must be one of"):
        apply(cores, np.ones((1, 6)), order="zigzag")
    with pytest.raises(ShapeError, match="split at bonds"):
        apply([np.ones((1, 2, 3, 1))], np.ones((1, 3)), order="merged")
    with pytest.raises(ShapeError, match="boundary ones"):
        estimate_costs((2, 2), (2, 2), (1, 2), 1)
    with pytest.raises(ShapeError, match="equal length"):
        estimate_costs((2, 2), (2,), (1, 2, 1), 1)


def test_backend_and_device_mismatches_are_errors_not_copies():
    if torch is None:
        pytest.skip("torch not installed")
    cores = [torch.ones(1, 2, 3, 1)]
    with pytest.raises(BackendMismatchError, match="one array library"):
        apply(cores, np.ones((1, 3)))
    meta = [torch.ones(1, 2, 3, 1, device="meta")]
    with pytest.raises(BackendMismatchError, match="device"):
        apply(meta, torch.ones(1, 3))
    with pytest.raises(BackendMismatchError, match="complex/real"):
        apply(cores, torch.ones(1, 3, dtype=torch.complex64))


def test_importing_and_running_on_numpy_does_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "import ttdecomp.contract as c\n"
        "c.apply([np.ones((1, 2, 3, 1))], np.ones((2, 3)))\n"
        "c.estimate_costs((2,), (3,), (1, 1), 4)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="."
    )
    assert out.stdout.strip() == "False"


def test_a_precomputed_plan_is_used_and_checked():
    rng = np.random.default_rng(7)
    cores = random_cores(rng, ((2, 3), (3, 2), (1, 2, 1)))
    x = rng.standard_normal((5, 6))
    for cost in estimate_costs((2, 3), (3, 2), (1, 2, 1), 5):
        plan = contraction_plan(cores, 5, order=cost.order, split=cost.split)
        np.testing.assert_allclose(apply(cores, x, plan=plan), apply(cores, x), rtol=1e-12)
    with pytest.raises(ShapeError, match=r"batch=5; got .* batch=4"):
        apply(cores, x[:4], plan=contraction_plan(cores, 5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_refuses_non_finite_cores_naming_the_core(backend):
    from ttdecomp.errors import InvalidInputError

    cores = [np.ones((1, 2, 3, 2)), np.ones((2, 2, 2, 1))]
    cores[1][1, 0, 1, 0] = np.nan
    cores = [to_backend(c, backend) for c in cores]
    x = to_backend(np.ones((4, 6)), backend)
    with pytest.raises(InvalidInputError, match=r"core 1 .*NaN or Inf"):
        apply(cores, x)
    with pytest.raises(InvalidInputError, match=r"core 1 .*NaN or Inf"):
        linear(x, cores)
