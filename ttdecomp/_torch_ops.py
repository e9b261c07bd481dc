"""The torch autograd Function behind :func:`ttdecomp.contract.apply` for torch tensors.

Imported lazily, only when a torch tensor reaches :func:`~ttdecomp.contract.apply`, so
``import ttdecomp`` never imports torch.

Forward runs the plan's GEMM steps (see :mod:`ttdecomp.contract`) and saves only ``x``
and the cores. Backward rebuilds the step operands (merged blocks, reshaped cores) with
autograd recording, then, chunk by chunk, recomputes the states *before* the last step
(never the output) and walks the steps backwards with two GEMMs each: the state's
gradient ``matᴴ @ grad`` and the operand's gradient ``Σ_p grad[p] @ z[p]ᴴ``. The operand
gradients are finally pulled back to the cores through the (small) merge graph. So the
activation memory of a TT layer is its input, backward holds one chunk's states at a
time, and for the two-block plans (TT-LoRA) the cost is LoRA's plus one GEMM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .contract import ContractionPlan, _execute, _Ops, _prepare, _Step, _step_forward

__all__ = ["tt_apply"]


def _step_backward(
    step: _Step, z: torch.Tensor, grad: torch.Tensor, batch: int, need_z: bool, need_mat: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of one step ``out[p] = mat @ z[p]`` w.r.t. ``mat`` and ``z``."""
    mat = step.mat.detach()
    rows = int(mat.shape[0])
    p = step.rows_factor * batch
    grad_mat = grad_z = None
    if step.cols == 1:
        z2 = z.reshape(p, step.inner)  # (p, inner)
        g2 = grad.reshape(p, rows)  # (p, out_rows)
        if need_mat:
            grad_mat = g2.mT @ z2.conj()  # (out_rows, inner)
        if need_z:
            grad_z = g2 @ mat.conj()  # (p, inner)
    elif p == 1:
        z2 = z.reshape(step.inner, step.cols)  # (inner, cols)
        g2 = grad.reshape(rows, step.cols)  # (out_rows, cols)
        if need_mat:
            grad_mat = g2 @ z2.mH  # (out_rows, inner)
        if need_z:
            grad_z = mat.mH @ g2  # (inner, cols)
    else:
        z3 = z.reshape(p, step.inner, step.cols)  # (p, inner, cols)
        g3 = grad.reshape(p, rows, step.cols)  # (p, out_rows, cols)
        if need_mat:
            grad_mat = torch.tensordot(g3, z3.conj(), dims=([0, 2], [0, 2]))  # (out_rows, inner)
        if need_z:
            grad_z = torch.matmul(mat.mH, g3)  # (p, inner, cols)
    return grad_mat, grad_z


def _backward_chunk(
    ops: _Ops,
    steps: Sequence[_Step],
    x2: torch.Tensor,
    grad_y: torch.Tensor,
    need_x: bool,
    grad_mats: list[Any] | None,
) -> torch.Tensor | None:
    """Backward through all steps for one chunk; accumulates into ``grad_mats``."""
    batch = int(x2.shape[0])
    states = [x2]
    for step in steps[:-1]:
        states.append(_step_forward(ops, step, states[-1], batch))
    grad = grad_y
    for t in reversed(range(len(steps))):
        need_z = t > 0 or need_x
        g_mat, grad = _step_backward(
            steps[t], states[t], grad, batch, need_z, grad_mats is not None
        )
        if grad_mats is not None:
            grad_mats[t] = g_mat if grad_mats[t] is None else grad_mats[t] + g_mat
        states[t] = None  # free the state as soon as its gradient is taken
    return grad.reshape(batch, int(x2.shape[1])) if need_x else None  # (B, N)


class _TTApply(torch.autograd.Function):
    """``y = x2 @ W.T`` with ``W`` a TT-matrix; saves only ``x2`` and the cores."""

    @staticmethod
    def forward(ctx: Any, plan: ContractionPlan, x2: torch.Tensor, *cores: torch.Tensor) -> Any:
        ctx.plan = plan
        ctx.save_for_backward(x2, *cores)
        return _execute(cores, x2, plan)

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> Any:
        x2, *cores = ctx.saved_tensors
        plan: ContractionPlan = ctx.plan
        need_x = ctx.needs_input_grad[1]
        need_cores = ctx.needs_input_grad[2:]
        batch = int(x2.shape[0])
        ops = _Ops(x2)
        with torch.enable_grad():
            leaves = [c.detach().requires_grad_(n) for c, n in zip(cores, need_cores)]
            steps = _prepare(ops, leaves, plan.cost, batch)
        grad_mats: list[Any] | None = [None] * len(steps) if any(need_cores) else None
        with torch.no_grad():
            pieces = [
                _backward_chunk(
                    ops,
                    steps,
                    x2[i : i + plan.chunk],
                    grad_y[i : i + plan.chunk],
                    need_x,
                    grad_mats,
                )
                for i in range(0, batch, plan.chunk)
            ] or [None]
        grad_x = None
        if need_x:
            grad_x = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
            if batch == 0:
                grad_x = torch.zeros_like(x2)
        grad_cores: list[Any] = [None] * len(cores)
        if grad_mats is not None:
            wanted = [k for k, n in enumerate(need_cores) if n]
            mats = [s.mat for s in steps]
            outs = [g if g is not None else torch.zeros_like(m) for m, g in zip(mats, grad_mats)]
            grads = torch.autograd.grad(mats, [leaves[k] for k in wanted], outs, allow_unused=True)
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
    return _execute(cores, x2, plan)
