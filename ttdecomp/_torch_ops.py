"""The torch autograd Function behind :func:`ttdecomp.contract.apply` for torch tensors.

Imported lazily, only when a torch tensor reaches :func:`~ttdecomp.contract.apply`, so
``import ttdecomp`` never imports torch.

The Function saves only ``x`` and the cores. Backward recomputes what it needs chunk by
chunk (the merged blocks once, then each chunk's intermediates), so the activation memory
of a TT layer is that of its input, and the backward pass never holds more than one
chunk's intermediates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .contract import ContractionPlan, _execute, _Ops, _prepare, _run

__all__ = ["tt_apply"]


def _needs_grad(x2: torch.Tensor, cores: Sequence[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and (x2.requires_grad or any(c.requires_grad for c in cores))


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
        need_cores = any(ctx.needs_input_grad[2:])
        grad_x = grad_operands = None
        with torch.enable_grad():
            ops = _Ops(x2)
            leaves = [c.detach().requires_grad_(need_cores) for c in cores]
            operands, how = _prepare(ops, leaves, plan.cost, int(x2.shape[0]))
            single = not isinstance(operands, list)
            op_list = [operands] if single else list(operands)
            detached = [o.detach().requires_grad_(need_cores) for o in op_list]
            run_operands = detached[0] if single else detached
            pieces = []
            for start in range(0, int(x2.shape[0]), plan.chunk):
                xc = x2[start : start + plan.chunk].detach().requires_grad_(need_x)
                yc = _run(ops, (run_operands, how), xc)
                inputs = ([xc] if need_x else []) + (detached if need_cores else [])
                grads = torch.autograd.grad(yc, inputs, grad_y[start : start + plan.chunk])
                if need_x:
                    pieces.append(grads[0])
                    grads = grads[1:]
                if need_cores:
                    grad_operands = (
                        list(grads)
                        if grad_operands is None
                        else [a + g for a, g in zip(grad_operands, grads)]
                    )
            if need_x:
                grad_x = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
            grad_cores: list[Any] = [None] * len(cores)
            if need_cores:
                wanted = [k for k, n in enumerate(ctx.needs_input_grad[2:]) if n]
                grads = torch.autograd.grad(
                    op_list, [leaves[k] for k in wanted], grad_operands, allow_unused=True
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
    if _needs_grad(x2, cores):
        return _TTApply.apply(plan, x2, *cores)
    return _execute(cores, x2, plan)
