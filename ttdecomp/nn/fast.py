"""The adapters' forward fast path: contraction plans and inference operands cached per TT-matrix.

:func:`ttdecomp.contract.linear` plans the contraction, validates the operands and checks the
cores on every call. That is the right default for a library function, but an adapter layer
calls it with the same cores on every forward, and at decode time (one token, a few rows) the
Python work costs more than the GEMMs. :class:`TTForwardCache` keeps, for one TT-matrix:

* the contraction plan for each batch size seen (a few at most; a change of the cores'
  shapes, dtype or device clears them), so training steps skip the planner and the checks but
  still run through the memory-lean autograd Function;
* in inference (no gradient recorded) and for at most :data:`CACHE_MAX_ROWS` rows, the
  operands of the cheapest contraction with the merging already done, keyed by the cores'
  storage and version counters, so an optimizer step, a ``copy_`` or a ``.to()`` of any core
  invalidates them:

  - a split layout (TT-LoRA's: input cores first, output cores after) is cut at the bond
    between the halves into ``A`` (N × r) and ``B`` (r × M), so ``y = (x A) B`` costs what
    LoRA of rank r costs, two GEMMs;
  - a small matrix (LoRETTA's ``A``, ``B``, ``down``, ``up``: at most :data:`DENSE_MAX_ENTRIES`
    entries or no more than ``n_params`` · 16) is reconstructed once: one GEMM;
  - otherwise the plan's prepared GEMM steps (merged blocks included) are kept.

Anything unusual (autocast on, a shape that does not fit) takes the checked path of
:func:`ttdecomp.contract.linear`, which raises the clear errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .._executor import Ops, prepare, run
from .._torch_ops import tt_apply
from ..contract import linear as tt_linear
from ..cost_model import DEFAULT_MEMORY_BUDGET, cached_plan, machine_for

__all__ = [
    "CACHE_MAX_ROWS",
    "DENSE_MAX_ENTRIES",
    "TTForwardCache",
    "split_bond",
    "split_halves",
]

#: Inference operands are cached for inputs of at most this many rows (decode, small batches);
#: larger inputs merge per call, where the merge is amortised over the rows.
CACHE_MAX_ROWS = 64
#: A TT-matrix with at most this many entries is reconstructed for the inference cache.
DENSE_MAX_ENTRIES = 1 << 15
_MAX_PLANS = 8


def split_bond(cores: Sequence[Any]) -> int | None:
    """The bond ``s`` with ``m_k = 1`` for every core before it and ``n_k = 1`` after, or None.

    Examples
    --------
    >>> split_bond([torch.ones(1, 1, 4, 3), torch.ones(3, 1, 2, 3), torch.ones(3, 8, 1, 1)])
    2
    >>> split_bond([torch.ones(1, 2, 2, 3), torch.ones(3, 2, 2, 1)]) is None
    True
    """
    d = len(cores)
    for s in range(1, d):
        if all(int(c.shape[1]) == 1 for c in cores[:s]) and all(
            int(c.shape[2]) == 1 for c in cores[s:]
        ):
            return s
    return None


def split_halves(cores: Sequence[torch.Tensor], s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` (N × r_s) from the input cores and ``B`` (r_s × M) from the output cores."""
    a = cores[0].reshape(-1, int(cores[0].shape[3]))  # (n_1, r_1)
    for core in cores[1:s]:
        r_prev, _, n, r_next = (int(v) for v in core.shape)
        a = (a @ core.reshape(r_prev, n * r_next)).reshape(-1, r_next)  # (n_1..n_k, r_k)
    b = cores[-1].reshape(int(cores[-1].shape[0]), -1)  # (r_{d-1}, m_d)
    for core in reversed(cores[s:-1]):
        r_prev, m, _, r_next = (int(v) for v in core.shape)
        b = (core.reshape(r_prev * m, r_next) @ b).reshape(r_prev, -1)  # (r_{k-1}, m_k..m_d)
    return a.contiguous(), b.contiguous()


class TTForwardCache:
    """Plans by batch size and inference operands of one TT-matrix (see the module docstring).

    Parameters
    ----------
    scale : float
        Multiplies the TT-matrix (an adapter's ``alpha``), folded into the cached operands.

    Examples
    --------
    >>> from ttdecomp import TTMatrix
    >>> torch.manual_seed(0) and None
    >>> cores = [torch.randn(1, 1, 8, 3), torch.randn(3, 4, 1, 1)]
    >>> cache = TTForwardCache(scale=2.0)
    >>> x = torch.randn(2, 8)
    >>> with torch.no_grad():
    ...     y = cache.linear(x, cores)
    >>> bool(torch.allclose(y, 2.0 * x @ TTMatrix(cores).full().T, atol=1e-5))
    True
    >>> cache.kind
    'halves'
    """

    __slots__ = ("_bond", "_bond_rank", "_key", "_operands", "_plans", "_shapes", "kind", "scale")

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)
        self._plans: dict[int, Any] = {}
        self._shapes: tuple | None = None
        self._key: tuple | None = None
        self._operands: Any = None
        self._bond: int | None = None  # split_bond of the cores, with _shapes
        self._bond_rank = 0
        #: What the inference cache holds: ``"halves"``, ``"dense"``, ``"steps"`` or ``None``.
        self.kind: str | None = None

    def clear(self) -> None:
        """Drop the cached plans and operands (they are rebuilt on the next call)."""
        self._plans.clear()
        self._shapes = None
        self._bond, self._bond_rank = None, 0
        self._key = self._operands = self.kind = None

    @property
    def cached_bytes(self) -> int:
        """Bytes held by the cached inference operands."""
        ops = self._operands
        if ops is None:
            return 0
        tensors = [s.mat for s in ops] if self.kind == "steps" else list(ops)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _plan(self, cores: Sequence[torch.Tensor], batch: int, like: torch.Tensor) -> Any:
        shapes = (
            tuple(int(c.shape[1]) for c in cores),
            tuple(int(c.shape[2]) for c in cores),
            (1, *(int(c.shape[3]) for c in cores)),
            like.dtype,
            like.device,
            math.prod(int(c.shape[2]) for c in cores),
        )
        if shapes != self._shapes:  # the cores changed shape, dtype or device
            self.clear()
            self._shapes = shapes
            self._bond = split_bond(cores)
            self._bond_rank = 0 if self._bond is None else int(cores[self._bond].shape[0])
        plan = self._plans.get(batch)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.pop(next(iter(self._plans)))
            plan = cached_plan(
                shapes[0],
                shapes[1],
                shapes[2],
                batch,
                None,
                None,
                DEFAULT_MEMORY_BUDGET,
                machine_for(None, like),
                like.element_size(),
            )
            self._plans[batch] = plan
        return plan

    def _inference_operands(self, cores: Sequence[torch.Tensor], plan: Any) -> Any:
        key = (tuple([(c.data_ptr(), c._version) for c in cores]), self.scale)
        if split_bond(cores) is None and not self._small(cores):
            key = (*key, plan.order, plan.split, plan.direction)  # the steps follow the plan
        if key == self._key:
            return self._operands
        cores = [c.detach() for c in cores]
        scaled = [*cores[:-1], cores[-1] * self.scale] if self.scale != 1.0 else cores
        rows = math.prod(int(c.shape[1]) for c in cores)
        cols = math.prod(int(c.shape[2]) for c in cores)
        s = split_bond(cores)
        if s is not None:
            self.kind, self._operands = "halves", split_halves(scaled, s)
        elif self._small(cores):
            w = torch.ones(1, 1, 1, 1, dtype=cores[0].dtype, device=cores[0].device)
            for core in scaled:  # (1, M_<k, N_<k, r) x (r, m, n, r') -> (1, M_≤k, N_≤k, r')
                _, m, n, r_next = (int(v) for v in core.shape)
                w = torch.einsum("aijr,rmns->aimjns", w, core).reshape(
                    1, int(w.shape[1]) * m, int(w.shape[2]) * n, r_next
                )
            self.kind, self._operands = "dense", (w.reshape(rows, cols).T.contiguous(),)
        else:
            self.kind, self._operands = "steps", prepare(Ops(scaled[0]), scaled, plan)
        self._key = key
        return self._operands

    @staticmethod
    def _small(cores: Sequence[torch.Tensor]) -> bool:
        """Whether the TT-matrix is small enough to keep reconstructed."""
        entries = math.prod(int(c.shape[1]) * int(c.shape[2]) for c in cores)
        return entries <= max(DENSE_MAX_ENTRIES, 16 * sum(c.numel() for c in cores))

    def linear(
        self, x: torch.Tensor, cores: Sequence[torch.Tensor], bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``scale · x W_TTᵀ (+ bias)`` for ``x[..., N]``, as :func:`ttdecomp.contract.linear`.

        Differentiable in ``x``, the cores and the bias; the inference operands are used only
        when no gradient is recorded.
        """
        grad = torch.is_grad_enabled() and (
            x.requires_grad
            or any(c.requires_grad for c in cores)
            or (bias is not None and bias.requires_grad)
        )
        ops = self._operands
        if not grad and ops is not None and self.kind != "steps":
            # the decode path: a few checks, then one or two GEMMs on the cached operands
            lead = x.shape[:-1]
            n_in = x.shape[-1]
            if (
                n_in == self._shapes[5]
                and x.numel() <= CACHE_MAX_ROWS * n_in
                and x.dtype == self._shapes[3]
                and x.device == self._shapes[4]
                and self._key[0] == tuple([(c.data_ptr(), c._version) for c in cores])
                and not torch.is_autocast_enabled(x.device.type)
            ):
                x2 = x.reshape(-1, n_in)  # (B, N)
                y2 = (x2 @ ops[0]) @ ops[1] if self.kind == "halves" else x2 @ ops[0]
                y = y2.reshape(*lead, y2.shape[-1])  # (..., M)
                return y if bias is None else y + bias
        n_total = math.prod(int(c.shape[2]) for c in cores)
        if (
            x.shape[-1] != n_total
            or x.dtype != cores[0].dtype
            or x.device != cores[0].device
            or torch.is_autocast_enabled(x.device.type)
        ):
            return self._checked(x, cores, bias)
        lead = x.shape[:-1]
        batch = math.prod(lead)
        x2 = x.reshape(batch, n_total)  # (B, N)
        plan = self._plan(cores, batch, x)
        if grad or batch > CACHE_MAX_ROWS:
            if self._key is not None and grad:
                self._key = self._operands = self.kind = None  # training: values will change
            s = self._bond
            if s is not None and batch >= self._bond_rank:
                # split layout: (x A) B with the halves merged under autograd, LoRA's two GEMMs
                # (and four in backward) plus merges of the tiny cores; saves x and x A (B × r)
                a, b = split_halves(cores, s)
                y2 = (x2 @ a) @ (b * self.scale if self.scale != 1.0 else b)
            else:
                scaled = [*cores[:-1], cores[-1] * self.scale] if self.scale != 1.0 else list(cores)
                y2 = tt_apply(scaled, x2, plan)
        else:
            ops = self._inference_operands(cores, plan)
            if self.kind == "halves":
                y2 = (x2 @ ops[0]) @ ops[1]  # (B, r) -> (B, M)
            elif self.kind == "dense":
                y2 = x2 @ ops[0]  # (B, M)
            else:
                y2 = run(Ops(x2), ops, x2)  # (B, M)
        y = y2.reshape(*lead, int(y2.shape[-1]))
        return y if bias is None else y + bias

    def _checked(
        self, x: torch.Tensor, cores: Sequence[torch.Tensor], bias: torch.Tensor | None
    ) -> torch.Tensor:
        scaled = [*cores[:-1], cores[-1] * self.scale] if self.scale != 1.0 else list(cores)
        return tt_linear(x, scaled, bias, check_finite=False)
