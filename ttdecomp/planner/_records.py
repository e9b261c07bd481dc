"""The planner's records: :class:`Plan` (one weight) and :class:`ModelPlan` (a model), with
their tables (``str``) and flat records (``to_record`` / ``records``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import counts
from .._backend import check_array
from ..errors import ShapeError

__all__ = ["ModelPlan", "Plan", "format_shape"]


@dataclass(frozen=True)
class Plan:
    """A TT-matrix compression plan for one ``(out_features, in_features)`` weight.

    Attributes
    ----------
    shape : (int, int)
        The weight's ``(M, N)``.
    padded_shape : (int, int)
        ``(∏ row_shape, ∏ col_shape)``; differs from ``shape`` only with ``pad=True``.
    layout : str
        ``"split"`` or ``"interleaved"``.
    row_shape, col_shape : tuple of int
        Per-core factors ``m_k`` and ``n_k``.
    ranks : tuple of int
        ``d + 1`` TT ranks with boundary ones.
    n_params : int
        Stored numbers of the TT-matrix, ``Σ r_{k-1} m_k n_k r_k``.
    budget : int or None
        The parameter budget the plan respects (``None`` for a pure error target).
    eps : float or None
        The relative error target, if one was given.
    objective : str
        ``"error"`` (a weight was given) or ``"capacity"`` (shapes only).
    batch : int
        Rows of ``x`` the costs are for.
    order : str
        The contraction order ``apply()`` runs at that batch on float32 CPU operands (the
        choice of :func:`~ttdecomp.contraction_plan`, ranked by estimated time on
        :meth:`~ttdecomp.MachineModel.cpu`); ``"merged@s"`` names the split bond ``s``.
    flops : int
        FLOPs of ``apply()`` in that order (multiply-add = 2, setup included).
    peak_memory, saved_memory : int
        Elements of the largest intermediate, and saved for backward.
    lora_rank : int
        The LoRA rank the plan is compared with.
    predicted_error : float or None
        Upper bound ``min(sqrt(Σ tail_k²) / ‖W‖, 1)`` on the relative TT-SVD error (weight
        only; TT-SVD is an orthogonal projection, so its error never exceeds ``‖W‖``).
    achieved_error : float or None
        ``‖W − TT‖ / ‖W‖`` of the real TT-SVD (weight only, with ``verify=True``).

    Examples
    --------
    >>> from ttdecomp import plan
    >>> p = plan((768, 768), budget=5_000)
    >>> p.n_params <= 5_000, p.layout, len(p.ranks) == p.n_cores + 1
    (True, 'split', True)
    """

    shape: tuple[int, int]
    padded_shape: tuple[int, int]
    layout: str
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    ranks: tuple[int, ...]
    n_params: int
    budget: int | None
    eps: float | None
    objective: str
    batch: int
    order: str
    flops: int
    peak_memory: int
    saved_memory: int
    lora_rank: int = 8
    predicted_error: float | None = None
    achieved_error: float | None = None

    @property
    def n_cores(self) -> int:
        """Number of cores ``d``."""
        return len(self.row_shape)

    @property
    def tt_shape(self) -> tuple[int, ...]:
        """Each core's ``m_k · n_k`` (the TT-LoRA paper's flat shape for the split layout)."""
        return tuple(m * n for m, n in zip(self.row_shape, self.col_shape))

    @property
    def capacity(self) -> int:
        """Sum of the interior ranks."""
        return sum(self.ranks[1:-1])

    @property
    def dense_n_params(self) -> int:
        """``M · N`` of the (unpadded) weight."""
        return self.shape[0] * self.shape[1]

    @property
    def lora_n_params(self) -> int:
        """Parameters of LoRA at :attr:`lora_rank` on this weight."""
        return counts.lora_n_params(self.shape[0], self.shape[1], self.lora_rank)

    @property
    def compression(self) -> float:
        """``dense_n_params / n_params``."""
        return self.dense_n_params / self.n_params

    @property
    def compression_vs_lora(self) -> float:
        """``lora_n_params / n_params`` (above 1: fewer parameters than LoRA)."""
        return self.lora_n_params / self.n_params

    def decompose(self, weight: Any, *, method: str = "auto") -> Any:
        """Run TT-SVD on ``weight`` with this plan's shapes and ranks.

        Parameters
        ----------
        weight : array, shape ``self.shape``
            numpy, torch or array-API; zero-padded to ``padded_shape`` when that differs.
        method : str
            SVD path, see :func:`ttdecomp.tt_svd`.

        Returns
        -------
        TTMatrix
            Of shape ``padded_shape`` with ``ranks == self.ranks`` (smaller only where the
            weight is exactly rank-deficient) and ``error_bound`` set.

        Examples
        --------
        >>> import numpy as np
        >>> from ttdecomp import plan
        >>> p = plan((64, 48), 600)
        >>> ttm = p.decompose(np.random.default_rng(0).standard_normal((64, 48)))
        >>> ttm.n_params == p.n_params, ttm.shape
        (True, (64, 48))
        """
        from ..decompose import tt_svd

        xp = check_array(weight, "weight")
        if tuple(weight.shape) != self.shape:
            raise ShapeError(
                f"weight has shape {tuple(weight.shape)} but the plan is for {self.shape} "
                "(out_features, in_features); plan the weight you decompose, e.g. "
                "plan(weight.shape, budget)."
            )
        if self.padded_shape != self.shape:
            padded = xp.zeros(self.padded_shape, dtype=weight.dtype, device=_device(weight))
            padded[: self.shape[0], : self.shape[1]] = weight
            weight = padded
        return tt_svd(
            weight,
            list(self.ranks),
            row_shape=self.row_shape,
            col_shape=self.col_shape,
            method=method,
        )

    def to_record(self) -> dict[str, Any]:
        """The plan as a flat ``dict`` of plain Python values (one row of a table).

        Examples
        --------
        >>> from ttdecomp import plan
        >>> plan((768, 768), 2000).to_record()["n_params"] <= 2000
        True
        """
        return {
            "out_features": self.shape[0],
            "in_features": self.shape[1],
            "padded_shape": list(self.padded_shape),
            "layout": self.layout,
            "tt_shape": list(self.tt_shape),
            "row_shape": list(self.row_shape),
            "col_shape": list(self.col_shape),
            "ranks": list(self.ranks),
            "n_params": self.n_params,
            "budget": self.budget,
            "dense_n_params": self.dense_n_params,
            "compression": self.compression,
            "lora_rank": self.lora_rank,
            "compression_vs_lora": self.compression_vs_lora,
            "batch": self.batch,
            "order": self.order,
            "flops": self.flops,
            "peak_memory": self.peak_memory,
            "saved_memory": self.saved_memory,
            "predicted_error": self.predicted_error,
            "achieved_error": self.achieved_error,
        }

    def __str__(self) -> str:
        m, n = self.shape
        pad = (
            ""
            if self.padded_shape == self.shape
            else f" (padded to {format_shape(self.padded_shape)})"
        )
        lines = [
            f"TT plan for a {m} x {n} weight{pad}: {self.layout} layout, {self.n_cores} "
            f"cores, tt_shape {list(self.tt_shape)}",
            f"  {'core':>4} {'m_k':>5} {'n_k':>5} {'r_in':>5} {'r_out':>5} {'params':>10}",
        ]
        for k, (mk, nk) in enumerate(zip(self.row_shape, self.col_shape)):
            r0, r1 = self.ranks[k], self.ranks[k + 1]
            lines.append(f"  {k:>4} {mk:>5} {nk:>5} {r0:>5} {r1:>5} {r0 * mk * nk * r1:>10,}")
        budget = "" if self.budget is None else f" of a budget of {self.budget:,}"
        lines.append(f"  n_params {self.n_params:,}{budget}")
        lines.append(
            f"  vs dense {self.dense_n_params:,}: "
            f"{size_ratio(self.dense_n_params, self.n_params)}; vs LoRA "
            f"r={self.lora_rank} ({self.lora_n_params:,}): {self.compression_vs_lora:,.2f}x"
        )
        lines.append(
            f"  apply() on {self.batch} row(s): {self.order}, {self.flops:,} FLOPs, peak "
            f"{self.peak_memory:,} / saved {self.saved_memory:,} elements"
        )
        if self.predicted_error is not None:
            achieved = (
                "" if self.achieved_error is None else f", achieved {self.achieved_error:.4g}"
            )
            lines.append(f"  relative error: predicted <= {self.predicted_error:.4g}{achieved}")
        return "\n".join(lines)


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _device(a: Any) -> Any:
    import array_api_compat

    return array_api_compat.device(a)


@dataclass
class ModelPlan:
    """Per-layer plans under one global budget, from :func:`plan_model`.

    Attributes
    ----------
    plans : dict of str to Plan
        One plan per selected layer, in the order read.
    budget : int or None
        The global parameter budget.
    eps : float or None
        The per-layer error target, if one was given.

    Examples
    --------
    >>> from ttdecomp import plan_model
    >>> mp = plan_model({"q": (768, 768), "v": (768, 768)}, budget=10_000)
    >>> sorted(mp.plans), mp.n_params <= 10_000
    (['q', 'v'], True)
    """

    plans: dict[str, Plan] = field(default_factory=dict)
    budget: int | None = None
    eps: float | None = None

    @property
    def n_params(self) -> int:
        """Total TT parameters over all layers."""
        return sum(p.n_params for p in self.plans.values())

    @property
    def dense_n_params(self) -> int:
        """Total dense parameters of the planned layers."""
        return sum(p.dense_n_params for p in self.plans.values())

    def records(self) -> list[dict[str, Any]]:
        """One ``dict`` per layer (:meth:`Plan.to_record` plus ``"layer"``)."""
        return [{"layer": name, **p.to_record()} for name, p in self.plans.items()]

    def __str__(self) -> str:
        rows = []
        for name, p in self.plans.items():
            interior = p.ranks[1:-1]
            err = p.achieved_error if p.achieved_error is not None else p.predicted_error
            rows.append(
                (
                    name,
                    format_shape(p.shape),
                    "[" + ",".join(map(str, p.tt_shape)) + "]",
                    (
                        str(interior[0])
                        if min(interior) == max(interior)
                        else f"{min(interior)}-{max(interior)}"
                    ),
                    f"{p.n_params:,}",
                    f"{p.compression:,.0f}x",
                    "-" if err is None else f"{err:.3f}",
                )
            )
        head = ("layer", "shape", "tt_shape", "ranks", "params", "vs dense", "rel.err")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(
                h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))
            )
        ]
        for r in rows:
            lines.append(
                "  ".join(
                    c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
                )
            )
        budget = "" if self.budget is None else f" of a budget of {self.budget:,}"
        lines.append(
            f"{len(self.plans)} layers: {self.n_params:,} TT parameters{budget}; dense "
            f"{self.dense_n_params:,} ({size_ratio(self.dense_n_params, self.n_params, 0)})"
        )
        errs = [p.achieved_error for p in self.plans.values() if p.achieved_error is not None]
        if any(
            p.achieved_error is None and p.predicted_error is not None for p in self.plans.values()
        ):
            lines.append(
                "rel.err: upper bound from the unfolding spectra; verify=True (--verify) "
                "measures the achieved TT-SVD error."
            )
        if errs:
            lines.append(
                f"relative error (TT-SVD): mean {sum(errs) / len(errs):.3f}, max {max(errs):.3f}"
            )
        return "\n".join(lines)


def size_ratio(dense: int, n_params: int, digits: int = 1) -> str:
    """``"12.3x smaller"`` or, for a plan above the dense size, ``"2.1x larger"``."""
    if n_params <= 0:
        return "no parameters"
    if n_params <= dense:
        return f"{dense / n_params:,.{digits}f}x smaller"
    return f"{n_params / dense:,.{digits}f}x larger"
