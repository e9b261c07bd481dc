"""The torch autograd Function behind :func:`ttdecomp.contract.apply` for torch tensors.

Imported lazily, only when a torch tensor reaches :func:`~ttdecomp.contract.apply`, so
``import ttdecomp`` never imports torch.

Forward runs the plan's GEMM steps (see :mod:`ttdecomp._executor`) and saves only ``x``
and the cores. Backward rebuilds the step operands (merged blocks, reshaped cores) with
autograd recording, then, chunk by chunk, recomputes the states *before* the last step
(never the output) and walks the steps backwards with two GEMMs each: the state's
gradient ``matᴴ @ grad`` and the operand's gradient ``Σ_p grad[p] @ z[p]ᴴ``. The operand
gradients are finally pulled back to the cores through the (small) merge graph. So the
activation memory of a TT layer is its input, backward holds one chunk's states at a
time, and for the two-block plans (TT-LoRA) the cost is LoRA's plus one GEMM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ._executor import Ops, Step, execute, prepare, run, state_buffers, step_out_shape
from .cost_model import ContractionPlan

__all__ = ["autocast_operands", "tt_apply"]


def _autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``; False for types autocast does not know."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except RuntimeError:  # e.g. "meta": no autocast dispatch key
        return False


def autocast_operands(
    x: torch.Tensor, cores: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], str | None]:
    """Cast ``x`` and the cores as autocast casts a matmul's operands, if it is on.

    Under ``torch.autocast`` on ``x``'s device type, every float16/bfloat16/float32
    operand is cast to the autocast dtype (float64 and complex stay, as autocast leaves
    them), like ``F.linear``'s. The casts are ordinary autograd ops, so gradients reach
    float32 parameters in float32. Returns the operands and the device type to disable
    autocast for while the contraction runs (``None`` when autocast is off).

    Examples
    --------
    >>> import torch
    >>> x, cores = torch.ones(2, 3), [torch.ones(1, 2, 3, 1)]
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     x2, cores2, device_type = autocast_operands(x, cores)
    >>> x2.dtype, cores2[0].dtype, device_type
    (torch.bfloat16, torch.bfloat16, 'cpu')
    >>> autocast_operands(x, cores)[0].dtype
    torch.float32
    """
    device_type = x.device.type
    if not _autocast_enabled(device_type):
        return x, list(cores), None
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t: torch.Tensor) -> torch.Tensor:
        eligible = t.is_floating_point() and t.dtype != torch.float64
        return t.to(dtype) if eligible and t.dtype != dtype else t

    return cast(x), [cast(c) for c in cores], device_type


# A step whose state is ``(p, inner, cols)`` with ``cols > 1`` has its operand gradient
# ``Σ_p grad[p] @ z[p]ᴴ`` contracted over ``(p, cols)``, two axes that are not adjacent
# in ``z``: one GEMM needs a permuted copy of ``z`` (the size of the state). Looping over
# ``p`` with one GEMM each needs no copy and wins (2x at p = 64, (64 x 1024 x 64) per
# GEMM, 2 threads) once each GEMM is large enough to hide the per-call overhead.
_LOOP_MIN_MACS = 1 << 18  # multiply-adds per GEMM of the loop
_LOOP_MAX_P = 1024  # calls per chunk


def _loops(step: Step, batch: int) -> bool:
    """Whether the operand gradient of ``step`` is accumulated one ``p`` at a time.

    ``batch`` is the rows of ``x`` per chunk; the choice is made once per backward (from
    the full chunk) so that every chunk accumulates in the same layout.
    """
    p = step.rows_factor * batch
    rows = int(step.mat.shape[0])
    big = rows * step.inner * step.cols >= _LOOP_MIN_MACS
    return 1 < p <= _LOOP_MAX_P and step.cols > 1 and big


def _acc_transposed(step: Step, batch: int) -> bool:
    """Whether the operand gradient of ``step`` is accumulated as ``(inner, out_rows)``.

    BLAS writes a short-and-wide product up to 9x faster than a tall-and-thin one, and
    the looped accumulation is fastest with ``z[p]`` as the untransposed left operand.
    """
    return _loops(step, batch) or int(step.mat.shape[0]) > step.inner


def _step_backward(
    step: Step,
    mat_h: torch.Tensor,
    z: torch.Tensor,
    grad: torch.Tensor,
    batch: int,
    acc: torch.Tensor | None,
    layout: tuple[bool, bool],
    out_z: torch.Tensor | None,
) -> None:
    """Backward of one step ``out[p] = mat @ z[p]``.

    Adds ``Σ_p grad[p] @ z[p]ᴴ`` into ``acc`` and writes ``matᴴ @ grad[p]`` into ``out_z``
    (``z``'s shape), each skipped when ``None``. ``mat_h`` is ``matᴴ``, row-major.
    ``layout`` is ``(flipped, loop)`` from :func:`_acc_transposed` and :func:`_loops`:
    ``acc`` is ``(out_rows, inner)``, or its transpose when ``flipped``.
    """
    rows = int(mat_h.shape[1])
    p = step.rows_factor * batch
    flipped, loop = layout
    if step.cols == 1:
        z2 = z.reshape(p, step.inner)  # (p, inner)
        g2 = grad.reshape(p, rows)  # (p, out_rows)
        if acc is not None and flipped:
            acc.addmm_(z2.mH, g2)  # (inner, p) @ (p, out_rows)
        elif acc is not None:
            acc.addmm_(g2.mT, z2.conj())  # (out_rows, p) @ (p, inner)
        if out_z is not None:
            torch.matmul(g2, mat_h.mT, out=out_z.reshape(p, step.inner))  # (p, inner)
    elif p == 1:
        z2 = z.reshape(step.inner, step.cols)  # (inner, cols)
        g2 = grad.reshape(rows, step.cols)  # (out_rows, cols)
        if acc is not None and flipped:
            acc.addmm_(z2.conj(), g2.mT)  # (inner, cols) @ (cols, out_rows)
        elif acc is not None:
            acc.addmm_(g2, z2.mH)  # (out_rows, cols) @ (cols, inner)
        if out_z is not None:
            torch.matmul(mat_h, g2, out=out_z.reshape(step.inner, step.cols))  # (inner, cols)
    else:
        z3 = z.reshape(p, step.inner, step.cols)  # (p, inner, cols)
        g3 = grad.reshape(p, rows, step.cols)  # (p, out_rows, cols)
        if acc is not None and loop:
            for i in range(p):  # acc is (inner, out_rows)
                acc.addmm_(z3[i].conj(), g3[i].mT)  # (inner, cols) @ (cols, out_rows)
        elif acc is not None:
            g_mat = g3.permute(1, 0, 2).reshape(rows, p * step.cols)  # (out_rows, p cols)
            z_mat = z3.conj().permute(0, 2, 1).reshape(p * step.cols, step.inner)
            if flipped:
                acc.addmm_(z_mat.mT, g_mat.mT)  # (inner, p cols) @ (p cols, out_rows)
            else:
                acc.addmm_(g_mat, z_mat)  # (out_rows, p cols) @ (p cols, inner)
        if out_z is not None:
            out3 = out_z.reshape(p, step.inner, step.cols)
            torch.matmul(mat_h, g3, out=out3)  # (p, inner, cols)


def _backward_chunk(
    ops: Ops,
    steps: Sequence[Step],
    mat_hs: Sequence[torch.Tensor],
    layouts: Sequence[tuple[bool, bool]],
    x2: torch.Tensor,
    grad_y: torch.Tensor,
    grad_x: torch.Tensor | None,
    accs: Sequence[torch.Tensor] | None,
    state_bufs: Sequence[torch.Tensor],
    grad_buffers: Sequence[torch.Tensor],
) -> None:
    """Backward through all steps for one chunk of rows.

    Recomputes the states before the last step into ``state_bufs``, then walks the
    steps backwards with the state gradients in the two ``grad_buffers`` (ping-pong);
    the gradient of ``x2`` goes into ``grad_x`` and the operand gradients are added to
    ``accs``.
    """
    batch = int(x2.shape[0])
    states = run(ops, steps, x2, buffers=state_bufs, keep=1)
    grad = grad_y
    for t in reversed(range(len(steps))):
        if t == 0:
            out_z = grad_x
        else:
            shape = step_out_shape(steps[t - 1], batch)
            out_z = ops.view(grad_buffers[t % 2], shape)
        acc = None if accs is None else accs[t]
        _step_backward(steps[t], mat_hs[t], states[t], grad, batch, acc, layouts[t], out_z)
        grad = out_z


class _TTApply(torch.autograd.Function):
    """``y = x2 @ W.T`` with ``W`` a TT-matrix; saves only ``x2`` and the cores."""

    @staticmethod
    def forward(ctx: Any, plan: ContractionPlan, x2: torch.Tensor, *cores: torch.Tensor) -> Any:
        ctx.plan = plan
        ctx.save_for_backward(x2, *cores)
        return execute(cores, x2, plan)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> Any:
        # the operands were cast (or not) before forward; an autocast region around
        # .backward() must not re-cast the recomputation
        device_type = grad_y.device.type
        if not _autocast_enabled(device_type):
            return _TTApply._backward(ctx, grad_y)
        with torch.autocast(device_type, enabled=False):
            return _TTApply._backward(ctx, grad_y)

    @staticmethod
    def _backward(ctx: Any, grad_y: torch.Tensor) -> Any:
        x2, *cores = ctx.saved_tensors
        plan: ContractionPlan = ctx.plan
        need_x = ctx.needs_input_grad[1]
        need_cores = ctx.needs_input_grad[2:]
        batch = int(x2.shape[0])
        grad_y = grad_y.contiguous()
        x2 = x2.detach()
        ops = Ops(x2)
        with torch.enable_grad():
            leaves = [c.detach().requires_grad_(n) for c, n in zip(cores, need_cores)]
            steps = prepare(ops, leaves, plan)
        # the chunk loop runs on detached operands: its kernels (and rounding) then match
        # the forward's, and nothing in it is recorded
        dsteps = [replace(s, mat=s.mat.detach()) for s in steps]
        mat_hs = [s.mat.mH.resolve_conj().contiguous() for s in dsteps]  # (inner, out_rows)
        rows = min(plan.chunk, batch)
        layouts = [(_acc_transposed(s, rows), _loops(s, rows)) for s in dsteps]
        grad_x = torch.empty_like(x2, memory_format=torch.contiguous_format) if need_x else None
        accs = None
        if any(need_cores):
            # (out_rows, inner), or (inner, out_rows) where the layout says "flipped"
            accs = [
                x2.new_zeros(tuple(s.mat.shape)[::-1] if flipped else tuple(s.mat.shape))
                for s, (flipped, _) in zip(dsteps, layouts)
            ]
        state_bufs = state_buffers(ops, dsteps, rows, x2)
        sizes = [math.prod(step_out_shape(s, rows)) for s in dsteps[:-1]]
        grad_buffers = [torch.empty(max(sizes, default=0), dtype=x2.dtype, device=x2.device)] * 2
        if len(sizes) > 1:
            grad_buffers[1] = torch.empty_like(grad_buffers[0])
        with torch.no_grad():
            for i in range(0, batch, plan.chunk):
                _backward_chunk(
                    ops,
                    dsteps,
                    mat_hs,
                    layouts,
                    x2[i : i + plan.chunk],
                    grad_y[i : i + plan.chunk],
                    None if grad_x is None else grad_x[i : i + plan.chunk],
                    accs,
                    state_bufs,
                    grad_buffers,
                )
        grad_cores: list[Any] = [None] * len(cores)
        if accs is not None:
            wanted = [k for k, n in enumerate(need_cores) if n]
            grads = torch.autograd.grad(
                [s.mat for s in steps],
                [leaves[k] for k in wanted],
                [a.mT if flipped else a for a, (flipped, _) in zip(accs, layouts)],
                allow_unused=True,
            )
            for k, g in zip(wanted, grads):
                grad_cores[k] = torch.zeros_like(cores[k]) if g is None else g
        return (None, grad_x, *grad_cores)


def tt_apply(cores: Sequence[torch.Tensor], x2: torch.Tensor, plan: ContractionPlan) -> Any:
    """``x2 @ W.T`` for ``x2`` of shape ``(B, N)``; differentiable in ``x2`` and the cores.

    Parameters
    ----------
    cores : sequence of torch.Tensor
        4-D cores ``(r_{k-1}, m_k, n_k, r_k)``, already checked against ``x2``.
    x2 : torch.Tensor
        Shape ``(B, N)``.
    plan : ContractionPlan
        The contraction to run (from :func:`ttdecomp.contraction_plan`).

    Returns
    -------
    torch.Tensor
        Shape ``(B, M)``.

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.contract import contraction_plan
    >>> from ttdecomp._torch_ops import tt_apply
    >>> cores = [torch.ones(1, 2, 3, 2, requires_grad=True), torch.ones(2, 2, 2, 1)]
    >>> y = tt_apply(cores, torch.ones(4, 6), contraction_plan(cores, 4))
    >>> y.shape, y.requires_grad
    (torch.Size([4, 4]), True)
    """
    if torch.is_grad_enabled() and (x2.requires_grad or any(c.requires_grad for c in cores)):
        return _TTApply.apply(plan, x2, *cores)
    return execute(cores, x2, plan)
