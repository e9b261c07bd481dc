"""The GEMM steps of a contraction plan, run on arrays (the executor behind ``apply``).

:func:`prepare` turns a :class:`~ttdecomp.cost_model.ContractionPlan` into its list of
:class:`Step` s (merging cores into blocks where the plan says so; see
:mod:`ttdecomp.contract` for the states of each order), and :func:`execute` runs them on
``x`` (``(B, N)``) in chunks of ``plan.chunk`` rows, reusing one pair of state buffers
and writing straight into the output where the backend allows it (numpy, torch). Every
contraction is one ``matmul`` through :class:`Ops`, which counts the FLOPs it issues so
that the tests can hold them against :func:`ttdecomp.cost_model.estimate_costs`.

The names here are shared with :mod:`ttdecomp._torch_ops` (the autograd Function, whose
backward walks the same steps) and are not part of the public API.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .cost_model import ContractionPlan

__all__ = ["Ops", "Step", "execute", "prepare", "run", "state_buffers", "step_out_shape"]


class Ops:
    """The handful of array operations the executor uses, bound to one backend.

    ``counter`` (a one-element list) accumulates the FLOPs of every matrix product.
    numpy and torch can write a product into a preallocated buffer (``out=``), which the
    chunked executor uses to reuse its state buffers across chunks; other array-API
    libraries allocate.
    """

    def __init__(self, like: Any, counter: list[int] | None = None) -> None:
        from ._backend import get_namespace, is_numpy, is_torch

        if is_numpy(like):
            import numpy as np
        self.supports_out = is_torch(like) or is_numpy(like)
        if is_torch(like):
            import torch

            self.reshape = torch.reshape
            self.permute = torch.permute
            self._matmul = torch.matmul
            self.concat = torch.cat
            self.contiguous = torch.Tensor.contiguous
            self.empty = lambda n, ref: torch.empty(n, dtype=ref.dtype, device=ref.device)
        else:
            xp = get_namespace(like)
            self.reshape = xp.reshape
            self.permute = xp.permute_dims
            self._matmul = xp.matmul
            self.concat = lambda pieces: xp.concat(pieces, axis=0)
            # numpy can lay an operand out row-major; the array API has no layouts
            self.contiguous = np.ascontiguousarray if is_numpy(like) else lambda a: a
            self.empty = lambda n, ref: xp.empty(n, dtype=ref.dtype)
        self.counter = counter

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        """``a @ b`` (with broadcasting over leading axes), counting its FLOPs."""
        if self.counter is not None:
            *batch_a, m, k = a.shape
            *batch_b, _, n = b.shape
            if not batch_a or not batch_b:
                batch = math.prod(batch_a) * math.prod(batch_b)
            else:
                batch = math.prod(b if a == 1 else a for a, b in zip(batch_a, batch_b))
            self.counter[0] += 2 * batch * m * k * n
        if out is None:
            return self._matmul(a, b)
        return self._matmul(a, b, out=out)

    def view(self, buffer: Any, shape: tuple[int, ...]) -> Any:
        """The first ``∏ shape`` elements of a flat buffer, as an array of ``shape``."""
        return self.reshape(buffer[: math.prod(shape)], shape)


def _merge(ops: Ops, cores: Sequence[Any], direction: str) -> Any:
    """Merge consecutive 4-D cores into one ``(r_0, ∏m, ∏n, r_d)`` core."""
    d = len(cores)
    r0, rd = int(cores[0].shape[0]), int(cores[-1].shape[3])
    ms = [int(c.shape[1]) for c in cores]
    ns = [int(c.shape[2]) for c in cores]
    if d == 1:
        return cores[0]
    if direction == "ltr":
        block = ops.reshape(cores[0], (-1, int(cores[0].shape[3])))  # (r0 m1 n1, r1)
        for core in cores[1:]:
            r_prev, m, n, r_next = (int(s) for s in core.shape)
            mat = ops.reshape(core, (r_prev, m * n * r_next))  # (r_{k-1}, m_k n_k r_k)
            block = ops.matmul(block, mat)  # (r0 m1 n1 .. m_{k-1} n_{k-1}, m_k n_k r_k)
            block = ops.reshape(block, (-1, r_next))  # (r0 m1 n1 .. m_k n_k, r_k)
    else:
        block = ops.reshape(cores[-1], (int(cores[-1].shape[0]), -1))  # (r_{d-1}, m_d n_d rd)
        for core in reversed(cores[:-1]):
            r_prev, m, n, r_next = (int(s) for s in core.shape)
            mat = ops.reshape(core, (r_prev * m * n, r_next))  # (r_{k-1} m_k n_k, r_k)
            block = ops.matmul(mat, block)  # (r_{k-1} m_k n_k, m_{k+1} n_{k+1} .. rd)
            block = ops.reshape(block, (r_prev, -1))  # (r_{k-1}, m_k n_k .. m_d n_d rd)
    block = ops.reshape(block, (r0, *[s for mn in zip(ms, ns) for s in mn], rd))
    # (r0, m1, n1, ..., md, nd, rd)
    perm = (0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1)
    block = ops.permute(block, perm)  # (r0, m1..md, n1..nd, rd)
    return ops.reshape(block, (r0, math.prod(ms), math.prod(ns), rd))


@dataclass(frozen=True)
class Step:
    """One GEMM of a contraction: ``out[p] = mat @ z[p]`` with ``z`` viewed as
    ``(p, inner, cols)`` and ``p = rows_factor · B`` (``B`` the rows of ``x`` in the chunk).

    ``mat`` has shape ``(out_rows, inner)``. The output ``(p, out_rows, cols)`` is, read
    row-major, the next step's input.
    """

    mat: Any
    rows_factor: int
    inner: int
    cols: int


def _sweep_operands(ops: Ops, cores: Sequence[Any], order: str) -> list[Step]:
    """The GEMM steps of a core-by-core sweep (see the module docstring for the states)."""
    ms = [int(c.shape[1]) for c in cores]
    ns = [int(c.shape[2]) for c in cores]
    steps = []
    if order == "ltr":
        for k, core in enumerate(cores):
            r_prev, m, n, r_next = (int(s) for s in core.shape)
            mat = ops.permute(core, (1, 3, 0, 2))  # (m_k, r_k, r_{k-1}, n_k)
            mat = ops.reshape(mat, (m * r_next, r_prev * n))  # (m_k r_k, r_{k-1} n_k)
            # row-major: as a GEMM operand a transposed view can be 2-3x slower (MKL,
            # (256, 4096) @ (4096, 10)); the copy is the size of a core
            mat = ops.contiguous(mat)
            # state (B M_{<k}, r_{k-1} n_k, N_{>k}) -> (B M_{<k}, m_k r_k, N_{>k})
            steps.append(Step(mat, math.prod(ms[:k]), r_prev * n, math.prod(ns[k + 1 :])))
    else:
        for k in reversed(range(len(cores))):
            r_prev, m, n, r_next = (int(s) for s in cores[k].shape)
            mat = ops.reshape(cores[k], (r_prev * m, n * r_next))  # (r_{k-1} m_k, n_k r_k)
            mat = ops.contiguous(mat)  # a free reshape of a core, unless it was a view
            # state (B N_{<k}, n_k r_k, M_{>k}) -> (B N_{<k}, r_{k-1} m_k, M_{>k})
            steps.append(Step(mat, math.prod(ns[:k]), n * r_next, math.prod(ms[k + 1 :])))
    return steps


def prepare(ops: Ops, cores: Sequence[Any], plan: ContractionPlan) -> list[Step]:
    """Batch-independent setup of a plan (merging cores) and its GEMM steps."""
    if plan.order in ("ltr", "rtl"):
        return _sweep_operands(ops, cores, plan.order)
    if plan.order == "dense":
        w = _merge(ops, cores, "ltr")  # (1, M, N, 1)
        m, n = int(w.shape[1]), int(w.shape[2])
        return [Step(ops.reshape(w, (m, n)), 1, n, 1)]  # (M, N): y = x @ W.T
    s = plan.split
    left = _merge(ops, cores[:s], "ltr")  # (1, M_L, N_L, r_s)
    right = _merge(ops, cores[s:], "rtl")  # (r_s, M_R, N_R, 1)
    return _sweep_operands(ops, [left, right], plan.direction)


def step_out_shape(step: Step, batch: int) -> tuple[int, ...]:
    p = step.rows_factor * batch
    rows = int(step.mat.shape[0])
    if step.cols == 1:
        return (p, rows)
    return (rows, step.cols) if p == 1 else (p, rows, step.cols)


def _step_forward(ops: Ops, step: Step, z: Any, batch: int, out: Any = None) -> Any:
    """One GEMM step; returns the output in the layout the next step reads.

    ``out``, when given, is a preallocated array of the output's shape.
    """
    p = step.rows_factor * batch
    if step.cols == 1:
        z = ops.reshape(z, (p, step.inner))  # (p, inner)
        return ops.matmul(z, ops.permute(step.mat, (1, 0)), out)  # (p, out_rows)
    if p == 1:
        z = ops.reshape(z, (step.inner, step.cols))  # (inner, cols)
        return ops.matmul(step.mat, z, out)  # (out_rows, cols)
    z = ops.reshape(z, (p, step.inner, step.cols))  # (p, inner, cols)
    return ops.matmul(step.mat, z, out)  # (p, out_rows, cols)


def run(
    ops: Ops,
    steps: Sequence[Step],
    x2: Any,
    out: Any = None,
    buffers: Sequence[Any] | None = None,
    keep: int = 0,
) -> Any:
    """Apply the steps to ``x2`` (``(B, N)``); returns ``(B, M)``.

    With ``buffers`` (flat arrays, one per step but the last), the states are written
    into them; with ``out`` (``(B, M)``), the result is. ``keep`` stops after that many
    steps from the end and returns the list of states instead (for backward).
    """
    batch = int(x2.shape[0])
    states = [x2]
    for t, step in enumerate(steps[: len(steps) - keep]):
        dest = None
        if t == len(steps) - 1 and out is not None:
            dest = ops.reshape(out, step_out_shape(step, batch))
        elif t < len(steps) - 1 and buffers is not None:
            dest = ops.view(buffers[t], step_out_shape(step, batch))
        states.append(_step_forward(ops, step, states[-1], batch, dest))
    if keep:
        return states
    last = steps[-1]
    m_total = last.rows_factor * int(last.mat.shape[0]) * last.cols
    return ops.reshape(states[-1], (batch, m_total))  # (B, M)


def state_buffers(ops: Ops, steps: Sequence[Step], rows: int, like: Any) -> list[Any]:
    """One flat buffer per state between steps, sized for ``rows`` rows of ``x``."""
    return [ops.empty(math.prod(step_out_shape(s, rows)), like) for s in steps[:-1]]


def _pingpong_buffers(ops: Ops, steps: Sequence[Step], rows: int, like: Any) -> list[Any]:
    """Flat buffers for the states between steps when only the latest state is needed.

    Step ``t`` reads the state in buffer ``(t - 1) % 2`` and writes buffer ``t % 2``, so
    two buffers (one allocation) serve any number of steps: fewer fresh pages to fault in
    than one buffer per state, which on CPU costs more than the GEMMs at small batches.
    Returned as one entry per state, alternating, for :func:`_run`.
    """
    sizes = [math.prod(step_out_shape(s, rows)) for s in steps[:-1]]
    if not sizes:
        return []
    even, odd = max(sizes[0::2]), max(sizes[1::2], default=0)
    workspace = ops.empty(even + odd, like)
    pair = (workspace[:even], workspace[even:])
    return [pair[t % 2] for t in range(len(sizes))]


def _detached(a: Any) -> Any:
    """A torch tensor without autograd history (no-op for other arrays).

    The executor runs on detached operands so that its kernels, and therefore its
    rounding, do not depend on ``requires_grad``: torch's ``matmul`` folds a batched
    product into one GEMM only when no operand requires grad.
    """
    detach = getattr(a, "detach", None)
    return a if detach is None or not getattr(a, "requires_grad", False) else detach()


def execute(
    cores: Sequence[Any],
    x2: Any,
    plan: ContractionPlan,
    counter: list[int] | None = None,
) -> Any:
    """Run ``plan`` on ``x2`` (``(B, N)``) in chunks of ``plan.chunk`` rows.

    Chunks reuse one pair of state buffers and write straight into the output where the
    backend allows it (numpy, torch), so chunking costs no extra copies. Torch operands
    are detached first: gradients are the job of :mod:`ttdecomp._torch_ops`.
    """
    cores = [_detached(c) for c in cores]
    x2 = _detached(x2)
    ops = Ops(x2, counter)
    batch = int(x2.shape[0])
    steps = prepare(ops, cores, plan)
    starts = range(0, batch, max(plan.chunk, 1))
    if not ops.supports_out:
        if batch <= plan.chunk:
            return run(ops, steps, x2)
        return ops.concat([run(ops, steps, x2[i : i + plan.chunk, ...]) for i in starts])
    last = steps[-1]
    m_total = last.rows_factor * int(last.mat.shape[0]) * last.cols
    y = ops.view(ops.empty(batch * m_total, x2), (batch, m_total))  # (B, M)
    buffers = _pingpong_buffers(ops, steps, min(plan.chunk, batch), x2)
    for i in starts:
        run(ops, steps, x2[i : i + plan.chunk, ...], y[i : i + plan.chunk, ...], buffers)
    return y
