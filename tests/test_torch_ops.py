"""The torch autograd path of ttdecomp.contract: gradients, saved memory, compile, devices."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strategies import random_array, seeds, torch, ttm_layouts

if torch is None:
    pytest.skip("torch not installed", allow_module_level=True)

from ttdecomp.contract import apply, contraction_plan, estimate_costs, linear
from ttdecomp.tt_matrix import TTMatrix


def torch_cores(rng, layout, dtype="float64", requires_grad=True):
    rows, cols, ranks = layout
    return [
        torch.tensor(
            random_array(rng, (ranks[k], rows[k], cols[k], ranks[k + 1]), dtype),
            requires_grad=requires_grad,
        )
        for k in range(len(rows))
    ]


def dense(cores):
    """The dense matrix through plain autograd ops (the reference for gradients)."""
    return TTMatrix(cores).full()


@settings(max_examples=10)
@given(layout=ttm_layouts(max_cores=3, max_mode=3, max_rank=3), seed=seeds)
def test_gradcheck_every_order(layout, seed):
    rng = np.random.default_rng(seed)
    cores = torch_cores(rng, layout)
    x = torch.tensor(rng.standard_normal((3, math.prod(layout[1]))), requires_grad=True)
    for cost in estimate_costs(*layout, 3):
        # memory_budget=1 processes the batch row by row, exercising chunked backward
        for budget in (1, 10**9):

            def f(x, *cores, cost=cost, budget=budget):
                return apply(
                    list(cores), x, order=cost.order, split=cost.split, memory_budget=budget
                )

            assert torch.autograd.gradcheck(f, (x, *cores))


def test_gradcheck_complex():
    rng = np.random.default_rng(0)
    layout = ((2, 3), (3, 2), (1, 2, 1))
    cores = torch_cores(rng, layout, "complex128")
    x = torch.tensor(random_array(rng, (2, 6), "complex128"), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *c: apply(list(c), x), (x, *cores))


@given(
    layout=ttm_layouts(),
    lead=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    seed=seeds,
)
def test_gradients_equal_those_of_the_dense_layer(layout, lead, seed):
    rng = np.random.default_rng(seed)
    cores = torch_cores(rng, layout)
    x = torch.tensor(rng.standard_normal((*lead, math.prod(layout[1]))), requires_grad=True)
    g = torch.tensor(rng.standard_normal((*lead, math.prod(layout[0]))))
    grads = torch.autograd.grad((apply(cores, x) * g).sum(), [x, *cores])
    ref = torch.autograd.grad((x @ dense(cores).T * g).sum(), [x, *cores])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_only_x_and_the_cores_are_saved_for_backward():
    rng = np.random.default_rng(1)
    layout = ((4, 4, 4), (4, 4, 4), (1, 5, 5, 1))
    cores = torch_cores(rng, layout, "float32")
    x = torch.randn(32, 64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = apply(cores, x)
    plan = contraction_plan(cores, 32)
    assert sum(saved) == plan.cost.saved == x.numel() + sum(c.numel() for c in cores)
    y.sum().backward()
    assert x.grad is not None and all(c.grad is not None for c in cores)


def test_partial_requires_grad():
    rng = np.random.default_rng(2)
    layout = ((2, 3), (3, 2), (1, 2, 1))
    cores = torch_cores(rng, layout)
    frozen = [c.detach() for c in cores]
    x = torch.tensor(rng.standard_normal((4, 6)), requires_grad=True)
    (gx,) = torch.autograd.grad(apply(frozen, x).sum(), [x])
    torch.testing.assert_close(gx, torch.ones(4, 6, dtype=torch.float64) @ dense(frozen))
    gc = torch.autograd.grad(apply(cores, x.detach()).sum(), cores)
    ref = torch.autograd.grad((x.detach() @ dense(cores).T).sum(), cores)
    for a, b in zip(gc, ref):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        assert not apply(cores, x).requires_grad


def test_nn_parameters_and_linear_bias_gradients():
    rng = np.random.default_rng(3)
    layout = ((1, 1, 3, 2), (2, 3, 1, 1), (1, 2, 2, 2, 1))  # split (TT-LoRA) layout
    params = [torch.nn.Parameter(c.detach()) for c in torch_cores(rng, layout)]
    bias = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    x = torch.randn(5, 6, dtype=torch.float64)
    y = linear(x, params, bias)
    ref = torch.nn.functional.linear(x, dense(params), bias)
    torch.testing.assert_close(y, ref)
    y.square().sum().backward()
    assert bias.grad is not None and all(p.grad is not None for p in params)


def test_torch_compile_matches_eager():
    rng = np.random.default_rng(4)
    layout = ((2, 3, 2), (3, 2, 2), (1, 2, 3, 1))
    cores = torch_cores(rng, layout)
    x = torch.tensor(rng.standard_normal((4, 12)), requires_grad=True)

    def f(x, cores):
        return apply(cores, x).sin().sum()

    compiled = torch.compile(f, backend="eager")
    out = compiled(x, cores)
    torch.testing.assert_close(out, f(x, cores))
    g = torch.autograd.grad(out, [x, *cores])
    ref = torch.autograd.grad(f(x, cores), [x, *cores])
    for a, b in zip(g, ref):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_stay_on_the_device():
    rng = np.random.default_rng(5)
    layout = ((4, 4), (4, 4), (1, 3, 1))
    cores = [c.detach().cuda().requires_grad_() for c in torch_cores(rng, layout)]
    x = torch.randn(8, 16, dtype=torch.float64, device="cuda", requires_grad=True)
    y = apply(cores, x)
    assert y.device == x.device
    torch.testing.assert_close(y, x @ dense(cores).T)
    y.sum().backward()
    assert x.grad.device == x.device and all(c.grad.device == x.device for c in cores)


def test_non_contiguous_input_and_chunked_backward():
    rng = np.random.default_rng(6)
    layout = ((2, 3, 2), (3, 2, 2), (1, 3, 2, 1))
    cores = torch_cores(rng, layout)
    base = torch.tensor(rng.standard_normal((12, 7)), requires_grad=True)
    x = base.T  # (7, 12), not contiguous
    g = torch.randn(7, 12, dtype=torch.float64)
    for budget in (1, 5, 10**9):
        grads = torch.autograd.grad(
            (apply(cores, x, memory_budget=budget) * g).sum(), [base, *cores]
        )
        ref = torch.autograd.grad((x @ dense(cores).T * g).sum(), [base, *cores])
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loop", [False, True], ids=["one-gemm", "looped"])
@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@settings(max_examples=10)
@given(layout=ttm_layouts(max_cores=3, max_mode=3, max_rank=3), seed=seeds)
def test_both_operand_gradient_strategies_equal_the_dense_gradients(loop, dtype, layout, seed):
    # The operand gradient of a step with a (p, inner, cols) state is accumulated either
    # by one GEMM over a permuted copy or by one GEMM per p; thresholds pick one by size,
    # so force each in turn on small shapes, with chunking (budget 7) and without.
    from ttdecomp import _torch_ops

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_torch_ops, "_LOOP_MIN_MACS", 0 if loop else 1 << 62)
        _check_gradients_of_every_order(layout, dtype, seed)


def _check_gradients_of_every_order(layout, dtype, seed):
    rng = np.random.default_rng(seed)
    cores = torch_cores(rng, layout, dtype)
    n, m = math.prod(layout[1]), math.prod(layout[0])
    x = torch.tensor(random_array(rng, (5, n), dtype), requires_grad=True)
    g = torch.tensor(random_array(rng, (5, m), dtype))
    ref = torch.autograd.grad((x @ dense(cores).T * g).real.sum(), [x, *cores])
    for cost in estimate_costs(*layout, 5):
        for budget in (7, 10**9):
            y = apply(cores, x, order=cost.order, split=cost.split, memory_budget=budget)
            grads = torch.autograd.grad((y * g).real.sum(), [x, *cores])
            for a, b in zip(grads, ref):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@settings(max_examples=15)
@given(
    layout=ttm_layouts(max_cores=4, max_mode=5, max_rank=6),
    batch=st.sampled_from([1, 3, 17, 200]),
    budget=st.sampled_from([64, 1 << 22]),
    seed=seeds,
)
# layouts where torch's kernels differed with requires_grad before the executor detached
@example(layout=((4, 4), (5, 5), (1, 1, 1)), batch=3, budget=1 << 22, seed=0)
@example(layout=((3, 4, 3, 1), (4, 1, 4, 3), (1, 4, 4, 3, 1)), batch=1, budget=1 << 22, seed=0)
@example(layout=((4, 3, 3, 5), (4, 3, 3, 2), (1, 1, 4, 2, 1)), batch=200, budget=64, seed=0)
def test_forward_is_bit_identical_whatever_requires_grad(layout, batch, budget, seed):
    # torch.matmul picks other kernels (other rounding) when an operand requires grad;
    # the executor runs on detached operands so y does not depend on autograd flags.
    rng = np.random.default_rng(seed)
    plain = torch_cores(rng, layout, "float32", requires_grad=False)
    x = torch.tensor(random_array(rng, (batch, math.prod(layout[1])), "float32"))
    y = apply(plain, x, memory_budget=budget)
    y_cores = apply([c.clone().requires_grad_() for c in plain], x, memory_budget=budget)
    y_x = apply(plain, x.clone().requires_grad_(), memory_budget=budget)
    assert torch.equal(y, y_cores.detach()) and torch.equal(y, y_x.detach())


def test_autocast_casts_like_f_linear_and_keeps_float32_gradients():
    from ttdecomp.errors import BackendMismatchError

    rng = np.random.default_rng(7)
    layout = ((2, 4, 2), (4, 2, 2), (1, 3, 3, 1))
    cores = torch_cores(rng, layout, "float32")
    bias = torch.randn(16, requires_grad=True)
    x = torch.randn(6, 16, requires_grad=True)
    g = torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear(x, cores, bias)
        ref = torch.nn.functional.linear(x, dense(cores), bias)
        # an activation that autocast already made bfloat16 meets float32 cores
        y_bf16_in = apply(cores, x.detach().bfloat16())
        # backward inside the region must not re-cast the recomputation
        grads = torch.autograd.grad((y.float() * g).sum(), [x, bias, *cores])
    assert y.dtype == ref.dtype == y_bf16_in.dtype == torch.bfloat16
    # the same bf16-rounded operands in float32: only the bf16 products/sums differ
    exact = x.bfloat16().float() @ dense([c.bfloat16().float() for c in cores]).T
    exact = exact + bias.bfloat16().float()
    scale = exact.abs().max()
    assert (y.float() - exact).abs().max() <= 0.05 * scale
    assert (y_bf16_in.float() - (y - bias.bfloat16()).float()).abs().max() <= 0.05 * scale
    ref_grads = torch.autograd.grad((exact * g).sum(), [x, bias, *cores])
    for a, b in zip(grads, ref_grads):
        assert a.dtype == torch.float32
        assert (a - b).abs().max() <= 0.05 * b.abs().max()
    # float64 is not an autocast dtype: untouched, identical to the result without autocast
    c64 = [c.detach().double() for c in cores]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y64 = apply(c64, x.detach().double())
    assert y64.dtype == torch.float64 and torch.equal(y64, apply(c64, x.detach().double()))
    # without autocast a bfloat16/float32 mix is an error, not a silent promotion
    with pytest.raises(BackendMismatchError, match="dtype"):
        apply(cores, x.detach().bfloat16())


def test_meta_tensors_stay_on_their_device_through_forward_and_backward():
    # "meta" tensors have shapes but no data: any hidden host copy or device-specific call
    # (autocast queries included) would fail here, so this runs the device-generic paths
    # that CUDA tensors take, on a machine without a GPU.
    layout = ((2, 4, 2), (4, 2, 2), (1, 3, 3, 1))
    rows, cols, ranks = layout
    cores = [
        torch.empty(ranks[k], rows[k], cols[k], ranks[k + 1], device="meta", requires_grad=True)
        for k in range(3)
    ]
    x = torch.empty(5, 16, device="meta", requires_grad=True)
    for cost in estimate_costs(*layout, 5):
        y = apply(cores, x, order=cost.order, split=cost.split, memory_budget=8)
        assert y.device.type == "meta" and y.shape == (5, 16)
        grads = torch.autograd.grad(y.sum(), [x, *cores])
        assert all(
            g.device.type == "meta" and g.shape == t.shape for g, t in zip(grads, [x, *cores])
        )
