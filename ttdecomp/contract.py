"""TT-matrix × dense contraction: ``apply`` and ``linear``.

A TT-matrix ``W`` of shape ``(M, N)`` has 4-D cores ``G_k`` of shape
``(r_{k-1}, m_k, n_k, r_k)`` with ``M = ∏ m_k`` and ``N = ∏ n_k``. :func:`apply` maps
``x[..., N]`` to ``y[..., M] = x @ W.T`` without forming ``W``, by one of four orders:

``"ltr"``
    core by core, left to right. Before step ``k`` the state has shape
    ``(B, M_{<k}, r_{k-1}, N_{≥k})``; step ``k`` is one (batched) GEMM of the core,
    reshaped to ``(m_k r_k, r_{k-1} n_k)``, with the state viewed as
    ``(B M_{<k}, r_{k-1} n_k, N_{>k})``. No transposes of the state are needed.
``"rtl"``
    core by core, right to left: state ``(B, N_{≤k}, r_k, M_{>k})``, core reshaped to
    ``(r_{k-1} m_k, n_k r_k)`` (a free reshape).
``"merged"``
    cut the train at bond ``split``: merge cores ``1..split`` into one block of shape
    ``(M_L, N_L, r)`` and the rest into ``(r, M_R, N_R)``, then contract the two blocks
    (by whichever of the two sweeps is cheaper). For a split (TT-LoRA) layout cut at the
    bond between the input-side and output-side cores this is ``(x @ A) @ B`` with
    ``A`` of shape ``(N, r)`` and ``B`` of shape ``(r, M)``: exactly what LoRA costs.
``"dense"``
    reconstruct ``W`` and do one GEMM.

The order is chosen by the cost model (:mod:`ttdecomp.cost_model`:
:func:`~ttdecomp.cost_model.estimate_costs`, :func:`~ttdecomp.cost_model.contraction_plan`,
re-exported here) and run by the executor (:mod:`ttdecomp._executor`), which counts the
FLOPs it issues (every contraction is one ``matmul``); the tests check both agree exactly.
Chunks of rows reuse one set of buffers and write straight into the output (numpy, torch),
so chunking changes neither the FLOPs nor the result, only the peak memory.

Inputs are never promoted or moved: ``x`` and the cores must share the array library,
dtype (complex with real is an error) and device; only shapes are checked per call, so a
list of torch ``nn.Parameter`` can be passed on every forward at no cost.

Nothing here is tied to an array library: the code dispatches on the input (numpy, torch
with autograd, or any array-API library), and torch is imported only when a torch tensor
arrives. Torch tensors that need
gradients go through a memory-lean autograd Function (:mod:`ttdecomp._torch_ops`) that
saves only ``x`` and the cores. TT × TT products (:func:`~ttdecomp.tt_matrix.ttm_matmul`)
live beside :class:`~ttdecomp.TTMatrix` and are re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

from ._backend import is_torch
from ._executor import execute
from ._validation import check_finite_cores, check_operands, matrix_cores, matrix_shapes
from .cost_model import (
    DEFAULT_MEMORY_BUDGET,
    ORDERS,
    ContractionCost,
    ContractionPlan,
    MachineModel,
    cached_plan,
    contraction_plan,
    estimate_costs,
    itemsize_of,
    machine_for,
)
from .errors import ShapeError
from .tt_matrix import ttm_matmul

__all__ = [
    "ORDERS",
    "ContractionCost",
    "ContractionPlan",
    "MachineModel",
    "apply",
    "contraction_plan",
    "estimate_costs",
    "linear",
    "ttm_matmul",
]


def apply(
    ttm_or_cores: Any,
    x: Any,
    *,
    order: str | None = None,
    split: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    plan: ContractionPlan | None = None,
    machine: MachineModel | None = None,
    check_finite: bool = True,
) -> Any:
    """``y = x @ W.T`` for a TT-matrix ``W`` (``M × N``): maps ``x[..., N]`` to ``y[..., M]``.

    The contraction order is chosen by :func:`contraction_plan` for the actual batch (the
    product of the leading axes); ``W`` is never formed unless reconstructing it is the
    cheapest order. numpy in gives numpy out, torch in gives torch out (same device and
    dtype, gradients flowing to ``x`` and every core through an autograd Function that
    saves only ``x`` and the cores), other array-API arrays work through the standard.

    Under ``torch.autocast`` the operands are cast as for ``F.linear`` (float32, float16
    and bfloat16 to the autocast dtype; float64 and complex untouched) and the result is
    in the autocast dtype; gradients reach float32 cores in float32.

    Parameters
    ----------
    ttm_or_cores : TTMatrix or sequence of arrays
        The TT-matrix, or its 4-D cores ``(r_{k-1}, m_k, n_k, r_k)`` (e.g. a list of torch
        ``nn.Parameter``). Shapes are checked, and the cores' data for NaN/Inf unless
        ``check_finite=False``.
    x : array
        Shape ``(..., N)``, same library, dtype and device as the cores.
    order, split : optional
        Force a contraction order (see :func:`contraction_plan`).
    memory_budget : int
        Largest intermediate in elements before the batch is processed in chunks.
    plan : ContractionPlan, optional
        A plan from :func:`contraction_plan` for these shapes and this batch, to skip
        planning on every call (a layer can keep one per batch size); overrides
        ``order``, ``split``, ``memory_budget`` and ``machine``.
    machine : MachineModel, optional
        Rates the plan's time estimates use (see :func:`contraction_plan`).
    check_finite : bool
        Refuse cores holding NaN or Inf (one pass over the cores, which are small; on a GPU it
        costs one synchronisation). Layers that call this on every step pass ``False``.

    Returns
    -------
    array
        Shape ``(..., M)``.

    Raises
    ------
    ShapeError
        The last axis of ``x`` is not ``N``, the cores do not chain, or ``plan`` was made
        for other shapes or another batch size.
    BackendMismatchError
        ``x`` and the cores differ in library, dtype (including complex/real) or device.
    InvalidInputError
        A core holds NaN or Inf (with ``check_finite``).

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp.contract import apply
    >>> rng = np.random.default_rng(0)
    >>> cores = [rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((4, 5, 2, 1))]
    >>> x = rng.standard_normal((7, 3, 6))
    >>> y = apply(cores, x)
    >>> y.shape
    (7, 3, 10)
    >>> w = np.einsum("aijb,bklc->ikjl", *cores).reshape(10, 6)
    >>> bool(np.allclose(y, x @ w.T))
    True
    """
    cores = matrix_cores(ttm_or_cores)
    row_shape, col_shape, ranks = matrix_shapes(cores)
    n_total, m_total = math.prod(col_shape), math.prod(row_shape)
    amp_device = None
    if is_torch(x):
        from ._torch_ops import autocast_operands

        x, cores, amp_device = autocast_operands(x, cores)
    xp = check_operands(x, cores, n_total)
    if check_finite:
        check_finite_cores(cores, "apply")
    lead = tuple(int(s) for s in x.shape[:-1])
    batch = math.prod(lead)
    if plan is None:
        plan = cached_plan(
            row_shape,
            col_shape,
            ranks,
            batch,
            order,
            split,
            memory_budget,
            machine_for(machine, x),
            itemsize_of(x),
        )
    elif (plan.row_shape, plan.col_shape, plan.ranks, plan.batch) != (
        row_shape,
        col_shape,
        ranks,
        batch,
    ):
        raise ShapeError(
            f"plan is for row_shape={plan.row_shape}, col_shape={plan.col_shape}, "
            f"ranks={plan.ranks}, batch={plan.batch}; got row_shape={row_shape}, "
            f"col_shape={col_shape}, ranks={ranks}, batch={batch}. Make it with "
            "contraction_plan(cores, batch) for this input."
        )
    if is_torch(x):
        from ._torch_ops import tt_apply

        if amp_device is None:
            y2 = tt_apply(cores, x.reshape(batch, n_total), plan)
        else:  # operands already cast: the contraction runs with autocast off
            import torch

            with torch.autocast(amp_device, enabled=False):
                y2 = tt_apply(cores, x.reshape(batch, n_total), plan)
    else:
        x2 = xp.reshape(x, (batch, n_total))  # (B, N)
        y2 = execute(cores, x2, plan)  # (B, M)
    return xp.reshape(y2, (*lead, m_total))  # (..., M)


def linear(x: Any, ttm_or_cores: Any, bias: Any | None = None, *, check_finite: bool = True) -> Any:
    """``torch.nn.functional.linear`` with a TT-matrix weight: ``y = x @ W.T + bias``.

    Parameters
    ----------
    x : array
        Shape ``(..., N)``.
    ttm_or_cores : TTMatrix or sequence of arrays
        The weight ``W`` (``M × N``) in TT form.
    bias : array, optional
        Shape ``(M,)``, same library, dtype and device as ``x``.
    check_finite : bool
        As in :func:`apply`.

    Returns
    -------
    array
        Shape ``(..., M)``.

    Examples
    --------
    >>> import numpy as np
    >>> from ttdecomp.contract import linear
    >>> cores = [np.ones((1, 2, 2, 1)), np.ones((1, 3, 3, 1))]
    >>> linear(np.ones((1, 6)), cores, bias=np.arange(6.0))
    array([[ 6.,  7.,  8.,  9., 10., 11.]])
    """
    y = apply(ttm_or_cores, x, check_finite=check_finite)
    if bias is None:
        return y
    m_total = int(y.shape[-1])
    if bias.ndim != 1 or int(bias.shape[0]) != m_total:
        raise ShapeError(
            f"bias has shape {tuple(bias.shape)}; expected ({m_total},), one entry per output "
            "feature (M = ∏ row_shape)."
        )
    check_operands(bias, matrix_cores(ttm_or_cores), m_total, what="bias")
    if is_torch(bias) and bias.dtype != y.dtype:  # autocast cast the matmul's operands
        from ._torch_ops import autocast_operands

        bias = autocast_operands(bias, [])[0]
    return y + bias
