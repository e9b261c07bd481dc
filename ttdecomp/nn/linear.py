"""``TTLinear``: a linear layer whose weight is a TT-matrix, trained and served as its cores.

The layer holds the cores ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)`` as parameters and
an optional dense bias; ``forward`` is :func:`ttdecomp.contract.linear` (the contraction
order chosen by the cost model for each batch size, memory-lean autograd that saves only
``x`` and the cores). :meth:`TTLinear.from_linear` compresses an ``nn.Linear`` or a
transformers GPT-2 ``Conv1D`` (weight stored ``(in, out)``) by TT-SVD with given ranks, a
tolerance, a :class:`~ttdecomp.Plan` or a parameter budget (planned by
:func:`~ttdecomp.plan`), or, given calibration inputs, by the output-aware decomposition of
:mod:`ttdecomp.nn.whitened`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._validation import clip_ranks, normalize_ranks
from ..contract import linear as tt_linear
from ..decompose import tt_svd
from ..errors import InvalidInputError, ShapeError
from ..planner import Plan, plan
from ..tt_matrix import TTMatrix
from .kinds import check_weight_dtype, dense_weight
from .whitened import decompose_whitened, gram_of, whitened_weight

__all__ = ["TTLinear"]


class TTLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` (``out_features × in_features``) held as a TT-matrix.

    Parameters
    ----------
    in_features, out_features : int
        ``N`` and ``M``; ``∏ col_shape == N`` and ``∏ row_shape == M``.
    row_shape, col_shape : sequence of int
        Per-core output and input factors ``m_k`` and ``n_k`` (one entry per core).
    ranks : int or sequence of int
        ``d + 1`` TT ranks with boundary ones (or ``d - 1`` interior ranks, or one int for
        every bond). Ranks above the attainable ``min(∏ left m_k n_k, ∏ right m_k n_k)`` are
        clipped to it with a :class:`~ttdecomp.errors.RankClippedWarning`.
    bias : bool
        Whether the layer has a (dense) bias.
    dtype, device : optional
        Of the parameters.

    Notes
    -----
    A layer built this way starts from random cores whose dense entries have the standard
    deviation of ``nn.Linear``'s default initialisation (``1 / sqrt(3 · in_features)``),
    each core scaled by t3f's formula; :meth:`from_linear` and :meth:`from_ttmatrix` start
    from a given weight instead.

    Examples
    --------
    >>> import torch
    >>> dense = torch.nn.Linear(64, 32)
    >>> layer = TTLinear.from_linear(dense, ranks=64)  # enough rank: exact
    >>> x = torch.randn(5, 64)
    >>> bool(torch.allclose(layer(x), dense(x), atol=1e-5))
    True
    >>> layer.ranks, layer.n_params == sum(p.numel() for p in layer.parameters())
    ((1, 32, 1), True)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        row_shape: Sequence[int],
        col_shape: Sequence[int],
        ranks: Sequence[int],
        bias: bool = True,
        *,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(bias, bool):
            raise InvalidInputError(
                f"bias must be True or False, got {bias!r} ({type(bias).__name__}); a TTLinear "
                "has a dense bias or none."
            )
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}.")
        rows, cols = _factors(row_shape, "row_shape"), _factors(col_shape, "col_shape")
        if len(rows) != len(cols):
            raise ShapeError(
                f"row_shape {rows} and col_shape {cols} do not describe a TT-matrix: give d "
                "factors each."
            )
        rk = normalize_ranks(ranks, len(rows))
        if rk is None:
            raise InvalidInputError("ranks are required: an int, or d + 1 ints with boundary ones.")
        # ranks above min(prod left, prod right) cannot be reached: clip them, with a warning
        rk = clip_ranks(rk, [m * n for m, n in zip(rows, cols)], warn=True, stacklevel=3)
        if math.prod(rows) != out_features or math.prod(cols) != in_features:
            raise ShapeError(
                f"row_shape {rows} multiplies to {math.prod(rows)} and col_shape {cols} to "
                f"{math.prod(cols)}, but the layer is {out_features} x {in_features} "
                "(out_features x in_features)."
            )
        self.in_features, self.out_features = int(in_features), int(out_features)
        d = len(rows)
        std = 1.0 / math.sqrt(3 * in_features)  # nn.Linear's default init, in variance
        core_std = std ** (1 / d) * math.prod(rk[1:-1]) ** (-1 / (2 * d))
        self.cores = nn.ParameterList(
            nn.Parameter(
                torch.randn(rk[k], rows[k], cols[k], rk[k + 1], dtype=dtype, device=device)
                * core_std
            )
            for k in range(d)
        )
        self.bias = (
            nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        )

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_ttmatrix(
        cls, ttm: TTMatrix, bias: torch.Tensor | None = None, *, balance: bool = True
    ) -> TTLinear:
        """A layer holding copies of ``ttm``'s cores (torch tensors) and of ``bias``.

        With ``balance`` (default) the cores are rescaled to equal Frobenius norms (the
        product, hence the weight, is unchanged). Decompositions leave the scale on one
        core (TT-SVD on the last; un-whitening can make the input core tiny), and an
        optimiser whose steps are about ``lr`` per entry (Adam) would then move the small
        core by a large relative amount: balanced cores train evenly.

        Examples
        --------
        >>> import ttdecomp as tt
        >>> ttm = tt.random_ttm((4, 8), (2, 8), 3, seed=0, like=torch.zeros(1))
        >>> TTLinear.from_ttmatrix(ttm).extra_repr()
        'in_features=16, out_features=32, row_shape=(4, 8), col_shape=(2, 8), ranks=(1, 3, 1), bias=False'
        """  # noqa: E501
        if not isinstance(ttm, TTMatrix) or not isinstance(ttm.cores[0], torch.Tensor):
            raise InvalidInputError(
                f"from_ttmatrix needs a TTMatrix of torch cores, got {type(ttm).__name__}"
                + (" of numpy cores" if isinstance(ttm, TTMatrix) else "")
                + "; convert with TTMatrix([torch.as_tensor(c) for c in ttm.cores])."
            )
        m, n = ttm.shape
        first = ttm.cores[0]
        layer = cls(
            n, m, ttm.row_shape, ttm.col_shape, ttm.ranks, bias is not None, dtype=first.dtype
        ).to(first.device)
        scales = _balancing_scales(ttm.cores) if balance else [1.0] * len(ttm.cores)
        with torch.no_grad():
            for p, c, s in zip(layer.cores, ttm.cores, scales):
                p.copy_(c * s)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        *,
        ranks: int | Sequence[int] | None = None,
        eps: float | None = None,
        plan: Plan | None = None,
        budget: int | float | None = None,
        layout: str | None = None,
        row_shape: Sequence[int] | None = None,
        col_shape: Sequence[int] | None = None,
        calibration: Any = None,
        damping: float = 0.01,
    ) -> TTLinear:
        """Compress an ``nn.Linear`` (or a GPT-2 ``Conv1D``) into a :class:`TTLinear`.

        Give exactly one way to choose the TT: ``ranks`` (with ``eps``, or ``eps`` alone) for
        TT-SVD over ``row_shape``/``col_shape`` (default: :func:`~ttdecomp.tensorize`'s
        factorisation in ``layout``, interleaved unless given), a :class:`~ttdecomp.Plan`
        of this weight's shape, or a ``budget`` (parameters, or a fraction of the dense
        size) planned with :func:`~ttdecomp.plan` on this weight (``layout`` default
        ``"auto"``).

        Parameters
        ----------
        linear : nn.Linear or Conv1D
            The layer; its weight is decomposed (float16/bfloat16 in float32, with a
            warning) and the cores take its dtype and device. The bias is copied.
        ranks, eps, plan, budget
            How to choose shapes and ranks (see above).
        layout : {"auto", "split", "interleaved"}, optional
            With ``budget``: as in :func:`~ttdecomp.plan`. With ``ranks``/``eps`` (no
            shapes given): the factorisation's layout (``"interleaved"`` by default).
        row_shape, col_shape : sequence of int, optional
            The factorisation for ``ranks``/``eps``.
        calibration : array or tensor, optional
            Inputs ``X`` of shape ``(..., in_features)`` the layer sees (rows of
            activations). With them the decomposition minimises the output error
            ``‖X (W − Ŵ)ᵀ‖`` instead of ``‖W − Ŵ‖`` (see
            :func:`~ttdecomp.nn.whitened.decompose_whitened`), and a ``budget``
            is planned on the whitened weight.
        damping : float
            Relative ridge added to ``XᵀX`` before its Cholesky factor (with
            ``calibration``).

        Returns
        -------
        TTLinear

        Raises
        ------
        InvalidInputError
            None or several of ``ranks``/``eps``, ``plan``, ``budget``; a module that is not
            linear; calibration of the wrong width or with NaN/Inf.
        ShapeError
            A plan for another shape, or a padded plan (``pad=True``).

        Examples
        --------
        >>> import torch
        >>> torch.manual_seed(0) is not None
        True
        >>> layer = TTLinear.from_linear(torch.nn.Linear(256, 256), budget=0.25)
        >>> layer.tt_n_params <= 0.25 * 256 * 256
        True
        """
        w_view = dense_weight(linear)
        w = check_weight_dtype(w_view, f"the weight of {type(linear).__name__}")
        bias = linear.bias.detach() if getattr(linear, "bias", None) is not None else None
        given = [
            name
            for name, v in (("ranks/eps", ranks if ranks is not None else eps), ("plan", plan))
            if v is not None
        ] + (["budget"] if budget is not None else [])
        if len(given) != 1:
            raise InvalidInputError(
                "from_linear needs exactly one of ranks= (and/or eps=), plan= or budget=, got "
                f"{given or 'none'}; e.g. TTLinear.from_linear(layer, budget=0.25)."
            )
        gram = None
        if calibration is not None:
            gram = gram_of(calibration, w.shape[1], "calibration")
        if budget is not None:
            target = w if gram is None else whitened_weight(w, gram, damping)
            plan = _plan_for(target, budget, layout)
        if plan is not None:
            if not isinstance(plan, Plan):
                raise InvalidInputError(
                    f"plan must be a ttdecomp.Plan, got {type(plan).__name__}; make one with "
                    "ttdecomp.plan(weight.shape, budget)."
                )
            if plan.shape != tuple(w.shape):
                raise ShapeError(
                    f"the plan is for a {plan.shape} weight but the layer's weight is "
                    f"{tuple(w.shape)} (out_features, in_features); plan this weight."
                )
            if plan.padded_shape != plan.shape:
                raise ShapeError(
                    f"the plan pads {plan.shape} to {plan.padded_shape}; a TTLinear needs an "
                    "unpadded factorisation (plan with pad=False)."
                )
            rows, cols, rk = plan.row_shape, plan.col_shape, list(plan.ranks)
            eps_used = None
        else:
            if row_shape is None and col_shape is None:
                from ..shapes import tensorize

                lay = "interleaved" if layout in (None, "auto") else layout
                rows, cols = tensorize(w.shape[0], w.shape[1], layout=lay)
            elif row_shape is None or col_shape is None:
                raise InvalidInputError("give both row_shape and col_shape, or neither.")
            else:
                rows, cols = tuple(row_shape), tuple(col_shape)
            rk, eps_used = ranks, eps
        work = w.double()
        if gram is None:
            ttm = tt_svd(work, rk, eps=eps_used, row_shape=rows, col_shape=cols)
        else:
            if eps_used is not None:
                raise InvalidInputError(
                    "eps= with calibration= is not supported: the tolerance is on the weight "
                    "error; give ranks=, plan= or budget= with calibration."
                )
            if not isinstance(rk, (list, tuple)):
                rk = list(tt_svd(work, rk, row_shape=rows, col_shape=cols).ranks)
            ttm = decompose_whitened(work, gram, rows, cols, rk, damping=damping).ttm
        ttm = TTMatrix([c.to(dtype=w_view.dtype, device=w_view.device) for c in ttm.cores])
        return cls.from_ttmatrix(ttm, bias)

    # ---------------------------------------------------------------- properties
    @property
    def row_shape(self) -> tuple[int, ...]:
        """Output factors ``m_k``."""
        return tuple(int(c.shape[1]) for c in self.cores)

    @property
    def col_shape(self) -> tuple[int, ...]:
        """Input factors ``n_k``."""
        return tuple(int(c.shape[2]) for c in self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """``d + 1`` TT ranks with boundary ones."""
        return (1, *(int(c.shape[3]) for c in self.cores))

    @property
    def tt_n_params(self) -> int:
        """Numbers stored in the cores (what a plan's ``n_params`` counts)."""
        return sum(c.numel() for c in self.cores)

    @property
    def n_params(self) -> int:
        """All parameters of the layer: the cores plus the bias."""
        return self.tt_n_params + (0 if self.bias is None else self.bias.numel())

    @property
    def dense_n_params(self) -> int:
        """Parameters of the dense layer it stands for (weight plus bias)."""
        return self.in_features * self.out_features + (
            0 if self.bias is None else self.out_features
        )

    def assign(self, ttm: TTMatrix, bias: torch.Tensor | None = None) -> None:
        """Overwrite the cores (and the bias, when given) in place with ``ttm``'s, balanced.

        The shapes and ranks must be the layer's; the parameters stay the same objects (an
        optimiser holding them keeps working). Used by the layer-wise healing.

        Examples
        --------
        >>> layer = TTLinear(8, 4, (2, 2), (2, 4), (1, 2, 1))
        >>> other = TTLinear(8, 4, (2, 2), (2, 4), (1, 2, 1))
        >>> layer.assign(other.to_ttmatrix())
        >>> x = torch.randn(3, 8)
        >>> bool(torch.allclose(layer(x), other(x), atol=1e-6))
        True
        """
        shapes = [tuple(c.shape) for c in self.cores]
        given = [tuple(c.shape) for c in ttm.cores]
        if shapes != given:
            raise ShapeError(
                f"assign got cores of shapes {given}; the layer's are {shapes} (same "
                "row_shape, col_shape and ranks needed)."
            )
        scales = _balancing_scales(ttm.cores)
        with torch.no_grad():
            for p, c, s in zip(self.cores, ttm.cores, scales):
                p.copy_((c * s).to(dtype=p.dtype, device=p.device))
            if bias is not None and self.bias is not None:
                self.bias.copy_(bias.to(dtype=self.bias.dtype, device=self.bias.device))

    # ---------------------------------------------------------------- use
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[..., in_features] -> y[..., out_features]`` without forming the weight."""
        if x.dtype != self.cores[0].dtype and not torch.is_autocast_enabled():
            raise InvalidInputError(
                f"input of dtype {x.dtype} for a TTLinear in {self.cores[0].dtype}; cast the "
                "input or the layer (layer.to(dtype)), or run under torch.autocast."
            )
        return tt_linear(x, list(self.cores), self.bias, check_finite=False)

    def to_ttmatrix(self) -> TTMatrix:
        """The weight as a :class:`~ttdecomp.TTMatrix` (detached copies of the cores)."""
        return TTMatrix([c.detach().clone() for c in self.cores])

    def to_linear(self) -> nn.Linear:
        """The dense ``nn.Linear`` with the same weight (formed in float32 or wider) and bias.

        Examples
        --------
        >>> layer = TTLinear(8, 4, (2, 2), (2, 4), (1, 2, 1))
        >>> dense = layer.to_linear()
        >>> x = torch.randn(3, 8)
        >>> bool(torch.allclose(dense(x), layer(x), atol=1e-6))
        True
        """
        dtype = self.cores[0].dtype
        wide = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        ttm = TTMatrix([c.detach().to(wide) for c in self.cores])
        out = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            dtype=dtype,
            device=self.cores[0].device,
        )
        with torch.no_grad():
            out.weight.copy_(ttm.full().to(dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"row_shape={self.row_shape}, col_shape={self.col_shape}, ranks={self.ranks}, "
            f"bias={self.bias is not None}"
        )


def _factors(shape: Any, name: str) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or not shape:
        raise ShapeError(f"{name} must be a non-empty sequence of positive ints, got {shape!r}.")
    bad = [f for f in shape if isinstance(f, bool) or not isinstance(f, numbers.Integral) or f < 1]
    if bad:
        raise ShapeError(f"{name} {list(shape)!r} holds {bad!r}; every factor is a positive int.")
    return tuple(int(f) for f in shape)


def _balancing_scales(cores: Sequence[torch.Tensor]) -> list[float]:
    """Factors ``s_k`` with ``∏ s_k = 1`` that give every core the geometric-mean norm."""
    norms = [float(torch.linalg.norm(c.detach().double())) for c in cores]
    if min(norms) <= 0 or not all(math.isfinite(n) for n in norms):
        return [1.0] * len(cores)
    mean_log = sum(math.log(n) for n in norms) / len(norms)
    return [math.exp(mean_log - math.log(n)) for n in norms]


def _plan_for(weight: torch.Tensor, budget: int | float, layout: str | None) -> Plan:
    return plan(None, budget, weight=weight.double().cpu().numpy(), layout=layout, verify=True)
