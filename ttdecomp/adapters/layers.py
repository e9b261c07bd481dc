"""Wrapper layers holding ``base_layer`` and any number of named tensor-train adapters.

:class:`TTAdapterLayer` wraps an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight stored (in, out)) and
keeps it as ``base_layer``, untouched. Each adapter is a small module in ``tt_adapters[name]``
(an :class:`~ttdecomp.adapters.packed.AdapterDict`, which also holds frozen TT-LoRA adapters
*packed*, as one flat parameter each, until they are activated):

* :class:`TTLoRAAdapter`: ``y += alpha · x W_TT^T`` with one split-layout TT-matrix ``W_TT``;
* :class:`LoRETTARepAdapter`: ``y += (alpha / r) · x A^T B^T`` with TT-matrices A and B;
* :class:`LoRETTAAdpAdapter`: ``y ← y + up(act(down(y) + b_down)) + b_up`` (applied after the
  base layer; non-linear, so it cannot be merged).

Unmerged forwards run the TT cores through :class:`~ttdecomp.nn.fast.TTForwardCache`
(the planner's contraction, cached per batch size, through the memory-lean autograd Function of
:func:`ttdecomp.contract.linear`; in inference the merged operands are cached too, so one-token
decode costs what LoRA costs). Merging forms ΔW in float32 once and adds it to the base weight.
A batch whose rows use different adapters is routed by :mod:`ttdecomp.adapters.routing`.
``ModulesToSaveWrapper`` (PEFT's ``modules_to_save``) lives in
:mod:`ttdecomp.adapters.saved_modules` and is re-exported here.

Adapter parameters live in float32 when the base weight is float16/bfloat16 (as PEFT does);
inputs are cast to the adapter dtype and the adapter's output back to the layer's dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..counts import max_ranks
from ..errors import InvalidInputError
from ..nn.cores import CoreList, gaussian_tt_cores_, make_cores, paper_init_
from ..nn.fast import TTForwardCache
from ..nn.kinds import is_conv1d
from ..tt_matrix import TTMatrix
from .config import ADP_CANNOT_MERGE
from .packed import AdapterDict, Packed, PackedSpec, packed_spec
from .routing import Routing, check_not_merged, route_rows
from .saved_modules import ModulesToSaveWrapper

__all__ = [
    "AdapterDict",
    "CoreList",
    "LoRETTAAdpAdapter",
    "LoRETTARepAdapter",
    "ModulesToSaveWrapper",
    "TTAdapterLayer",
    "TTLoRAAdapter",
    "gaussian_tt_cores_",
    "is_conv1d",
]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32 for half-precision bases (stable training), else the base's own dtype."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


class _TTAdapter(nn.Module):
    """Common surface of one adapter: ``kind``, ``delta_weight()``, ``forward``."""

    #: "parallel": ``y = base(x) + adapter(x)``; "sequential": ``y = h + adapter(h)``, h = base(x).
    kind = "parallel"

    #: The CoreList whose first core gives the dtype the adapter computes in.
    _first_cores = "cores"

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the adapter's parameters (all share one), which it computes in."""
        return next(iter(self._modules[self._first_cores]._parameters.values())).dtype


class TTLoRAAdapter(_TTAdapter):
    """TT-LoRA: ΔW = ``alpha`` · TT-matrix with split-layout cores and ranks ``[1, r, ..., r, 1]``.

    Parameters
    ----------
    row_shape, col_shape : sequence of int
        Per-core output factors ``m_k`` and input factors ``n_k`` (split layout: ``m_k = 1`` on
        the input cores, ``n_k = 1`` on the output cores).
    tt_rank : int
        Interior rank ``r``, clipped per bond to what the shape can carry (:func:`adapter_ranks`).
    alpha : float
        Raw scale of ΔW.
    dropout : float
        Dropout on the adapter's input.
    init : str or None
        ``"zero"``, ``"paper"`` or ``"ttsvd"`` (see :class:`~ttdecomp.adapters.TTLoRAConfig`);
        ``None`` leaves the cores uninitialised (loading copies values in next).
    dtype, device
        Where the cores live.

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> ad = TTLoRAAdapter((1, 1, 4, 8), (4, 8, 1, 1), tt_rank=3, alpha=2.0, init="paper")
    >>> ad.delta_weight().shape, sum(p.numel() for p in ad.parameters())
    (torch.Size([32, 32]), 144)
    >>> x = torch.randn(5, 32)
    >>> bool(torch.allclose(ad(x), x @ ad.delta_weight().T, atol=1e-5))
    True
    """

    def __init__(
        self,
        row_shape: Sequence[int],
        col_shape: Sequence[int],
        *,
        tt_rank: int,
        alpha: float,
        dropout: float = 0.0,
        init: str | None = "zero",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        ranks = adapter_ranks(row_shape, col_shape, tt_rank)
        self.alpha = float(alpha)
        self.cores = make_cores(row_shape, col_shape, ranks, dtype=dtype, device=device)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fast = TTForwardCache(self.alpha)
        if self.cores[0].device.type != "meta" and init is not None:
            self.reset_parameters(init)

    @classmethod
    def packed_spec(
        cls,
        row_shape: Sequence[int],
        col_shape: Sequence[int],
        *,
        tt_rank: int,
        alpha: float,
        dropout: float = 0.0,
    ) -> PackedSpec:
        """The :class:`~ttdecomp.adapters.packed.PackedSpec` of this adapter, held packed.

        Its cores (``adapter_ranks`` of the shape, as ``__init__`` makes them) are one flat
        parameter; promoting it builds ``cls(row_shape, col_shape, tt_rank=..., ...)``.
        """
        row, col = tuple(int(v) for v in row_shape), tuple(int(v) for v in col_shape)
        ranks = adapter_ranks(row, col, tt_rank)
        return packed_spec(cls, row, col, int(tt_rank), float(alpha), float(dropout), ranks)

    def reset_parameters(self, init: str) -> None:
        """Initialise the cores with ``init`` (``"paper"``, ``"zero"`` or ``"ttsvd"``)."""
        if init == "ttsvd":
            self._ttsvd_init_()
            return
        paper_init_(self.cores)
        if init == "zero":
            with torch.no_grad():
                self.cores[-1].zero_()

    def _ttsvd_init_(self) -> None:
        from ..decompose import tt_svd

        row_shape = [int(c.shape[1]) for c in self.cores]
        col_shape = [int(c.shape[2]) for c in self.cores]
        ranks = [int(c.shape[3]) for c in self.cores[:-1]]
        dense = torch.empty(math.prod(row_shape), math.prod(col_shape), dtype=torch.float64)
        nn.init.kaiming_uniform_(dense, a=math.sqrt(5))
        ttm = tt_svd(dense, ranks=max(ranks), row_shape=row_shape, col_shape=col_shape)
        with torch.no_grad():
            for core, src in zip(self.cores, ttm.cores):
                # TT-SVD may return smaller ranks than asked (attainable maximum); zero padding
                # keeps the product and the uniform parameter shapes.
                core.zero_()
                core[: src.shape[0], :, :, : src.shape[3]] = src.to(core.dtype)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out × in) in float32."""
        return TTMatrix([c.float() for c in self.cores]).full() * self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha · dropout(x) ΔW_TT^T`` for ``x[..., in]``."""
        # alpha scales the (small) last core, or the cached halves, not the (batch × out) output
        if self.training and self.dropout is not None:  # identity in eval mode: no call
            x = self.dropout(x)
        return self.fast.linear(x, tuple(self.cores._parameters.values()))


def _loretta_cores(
    shape: tuple[tuple[int, ...], tuple[int, ...]],
    tensor_rank: int,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> CoreList:
    """Cores of one LoRETTA TT-matrix ``(row_shape, col_shape)`` with uniform interior rank."""
    return make_cores(*shape, adapter_ranks(*shape, tensor_rank), dtype=dtype, device=device)


def _loretta_gaussian_(*trains: Sequence[torch.Tensor]) -> None:
    """LoRETTA's init: Gaussian cores giving each TT-matrix entry variance 1/(in + out)."""
    for cores in trains:
        rows = math.prod(int(c.shape[1]) for c in cores)
        cols = math.prod(int(c.shape[2]) for c in cores)
        gaussian_tt_cores_(cores, 1.0 / (rows + cols))


class LoRETTARepAdapter(_TTAdapter):
    """LoRETTA-rep: ΔW = (alpha / r) · B A with A (r × in) and B (out × r) TT-matrices.

    Parameters
    ----------
    a_shape, b_shape : tuple
        ``(row_shape, col_shape)`` of A and B (interleaved layout).
    tensor_rank : int
        Interior TT rank of A and B (clipped per bond as in :func:`adapter_ranks`).
    r, alpha : int, float
        Bottleneck and scale numerator (scaling ``alpha / r``).
    dropout : float
        Dropout on the input.
    init : str
        ``"gaussian"`` (entries with variance ``1/(rows + cols)``) or ``"zero"`` (B = 0).

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import LoRETTAConfig, LoRETTARepAdapter, get_tt_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    >>> model = get_tt_model(net, LoRETTAConfig(variant="rep", r=4, target_modules=["0"]))
    >>> [type(m).__name__ for m in model.modules() if isinstance(m, LoRETTARepAdapter)]
    ['LoRETTARepAdapter']
    """

    _first_cores = "a_cores"

    def __init__(
        self,
        a_shape: tuple,
        b_shape: tuple,
        *,
        tensor_rank: int,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "gaussian",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.scaling = float(alpha) / int(r)
        self.a_cores = _loretta_cores(a_shape, tensor_rank, dtype, device)
        self.b_cores = _loretta_cores(b_shape, tensor_rank, dtype, device)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fast_a, self.fast_b = TTForwardCache(), TTForwardCache(self.scaling)
        if self.a_cores[0].device.type != "meta" and init is not None:
            self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        """Gaussian cores; with ``init="zero"`` the last core of B is zero (ΔW = 0)."""
        _loretta_gaussian_(self.a_cores, self.b_cores)
        if init == "zero":
            with torch.no_grad():
                self.b_cores[-1].zero_()

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out × in) in float32."""
        a = TTMatrix([c.float() for c in self.a_cores]).full()
        b = TTMatrix([c.float() for c in self.b_cores]).full()
        return (b @ a) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r) · B(A(dropout(x)))`` without forming ΔW."""
        if self.training and self.dropout is not None:
            x = self.dropout(x)
        h = self.fast_a.linear(x, tuple(self.a_cores._parameters.values()))
        return self.fast_b.linear(h, tuple(self.b_cores._parameters.values()))


class LoRETTAAdpAdapter(_TTAdapter):
    """LoRETTA-adp: a residual bottleneck adapter with TT down/up projections and biases.

    ``y ← y + up(act(down(dropout(y)) + b_down)) + b_up``, applied to the output of the wrapped
    layer. ``down`` is (bottleneck × features), ``up`` is (features × bottleneck).

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import LoRETTAAdpAdapter, LoRETTAConfig, get_tt_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    >>> config = LoRETTAConfig(variant="adp", bottleneck_size=8, target_modules=["0"])
    >>> model = get_tt_model(net, config)
    >>> [type(m).__name__ for m in model.modules() if isinstance(m, LoRETTAAdpAdapter)]
    ['LoRETTAAdpAdapter']
    """

    kind = "sequential"
    _first_cores = "down_cores"

    def __init__(
        self,
        down_shape: tuple,
        up_shape: tuple,
        *,
        tensor_rank: int,
        non_linearity: str = "relu",
        dropout: float = 0.0,
        init: str = "gaussian",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.down_cores = _loretta_cores(down_shape, tensor_rank, dtype, device)
        self.up_cores = _loretta_cores(up_shape, tensor_rank, dtype, device)
        self.down_bias = nn.Parameter(
            torch.zeros(math.prod(down_shape[0]), dtype=dtype, device=device)
        )
        self.up_bias = nn.Parameter(torch.zeros(math.prod(up_shape[0]), dtype=dtype, device=device))
        self.act = _ACTIVATIONS[non_linearity]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fast_down, self.fast_up = TTForwardCache(), TTForwardCache()
        if self.down_cores[0].device.type != "meta" and init is not None:
            self.reset_parameters(init)

    def reset_parameters(self, init: str) -> None:
        """Gaussian cores, zero biases; ``init="zero"`` zeroes the last up core (identity map)."""
        _loretta_gaussian_(self.down_cores, self.up_cores)
        with torch.no_grad():
            self.down_bias.zero_()
            self.up_bias.zero_()
            if init == "zero":
                self.up_cores[-1].zero_()

    def delta_weight(self) -> torch.Tensor:
        """Always raises: the ReLU bottleneck is not a linear map, so there is no ΔW."""
        raise InvalidInputError(
            f"{ADP_CANNOT_MERGE}. Keep it unmerged, or train a LoRETTA-rep / TT-LoRA adapter if "
            "you need merging."
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """The adapter's residual ``up(act(down(y) + b_down)) + b_up`` (added by the caller)."""
        if self.training and self.dropout is not None:
            y = self.dropout(y)
        down = tuple(self.down_cores._parameters.values())
        h = self.act(self.fast_down.linear(y, down, self.down_bias))
        return self.fast_up.linear(h, tuple(self.up_cores._parameters.values()), self.up_bias)


def adapter_ranks(row_shape: Sequence[int], col_shape: Sequence[int], rank: int) -> tuple[int, ...]:
    """Ranks ``[1, rank, ..., rank, 1]`` clipped per bond to what the TT-matrix can carry.

    A bond's rank above ``min(∏ left modes, ∏ right modes)`` (modes ``m_k · n_k``) adds
    parameters and no expressiveness; :func:`~ttdecomp.adapters.inspect_targets` warns
    when it clips.
    """
    return _adapter_ranks(tuple(row_shape), tuple(col_shape), int(rank))


@functools.lru_cache(maxsize=1024)
def _adapter_ranks(row_shape: tuple, col_shape: tuple, rank: int) -> tuple[int, ...]:
    # memoised: a pure function, called for every target of every adapter built or loaded
    return tuple(max_ranks(row_shape, col_shape, max_rank=rank))


class TTAdapterLayer(nn.Module):
    """Wraps a linear layer (``base_layer``) and applies its active TT adapters.

    Parameters
    ----------
    base_layer : nn.Linear or transformers Conv1D
        The frozen layer; kept as is (GPT-2 ``Conv1D`` keeps its (in, out) weight).

    Attributes
    ----------
    tt_adapters : AdapterDict
        The adapters by name (a ``ModuleDict`` that also holds packed adapters; see
        :mod:`ttdecomp.adapters.packed`).
    active_adapters : list of str
        Adapters applied in ``forward`` (in this order).
    merged_adapters : list of str
        Adapters currently folded into ``base_layer.weight``.
    disable_adapters : bool
        When True, ``forward`` is the base layer alone (merged adapters are unmerged first).

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> layer = TTAdapterLayer(nn.Linear(32, 16))
    >>> layer.add(
    ...     "default", TTLoRAAdapter((1, 1, 4, 4), (4, 8, 1, 1), tt_rank=2, alpha=1.0, init="zero")
    ... )
    >>> x = torch.randn(3, 32)
    >>> bool(torch.equal(layer(x), layer.base_layer(x)))
    True
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = is_conv1d(base_layer)
        w = base_layer.weight
        self.in_features, self.out_features = (
            (int(w.shape[0]), int(w.shape[1]))
            if self.fan_in_fan_out
            else (int(w.shape[1]), int(w.shape[0]))
        )
        self.tt_adapters = AdapterDict()
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disable_adapters = False
        #: Set by the model for the duration of a call with ``adapter_names=``.
        self.routing: Routing | None = None
        self._original_weights: dict[str, torch.Tensor] = {}

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (merged adapters included)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias."""
        return self.base_layer.bias

    @property
    def merged(self) -> bool:
        """True when at least one adapter is folded into the base weight."""
        return bool(self.merged_adapters)

    def add(self, adapter_name: str, adapter: _TTAdapter, *, activate: bool = True) -> None:
        """Register ``adapter`` under ``adapter_name`` (and make it active)."""
        self.tt_adapters[adapter_name] = adapter
        if activate and adapter_name not in self.active_adapters:
            self.active_adapters.append(adapter_name)

    def add_packed(self, adapter_name: str, packed: Packed) -> None:
        """Hold a frozen, inactive adapter packed (promoted to its module when activated)."""
        self.tt_adapters.add_packed(adapter_name, packed)

    def remove(self, adapter_name: str) -> None:
        """Drop an adapter (unmerging it first if it is merged)."""
        if adapter_name in self.merged_adapters:
            self.unmerge()
        del self.tt_adapters[adapter_name]
        if adapter_name in self.active_adapters:
            self.active_adapters.remove(adapter_name)

    def set_active(self, adapter_names: Sequence[str]) -> None:
        """Make exactly ``adapter_names`` (those this layer has) active (promoting packed ones)."""
        self.active_adapters = [n for n in adapter_names if n in self.tt_adapters]
        self.tt_adapters.promote_all(self.active_adapters)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW of one adapter in float32, laid out like ``base_layer.weight``.

        That is (out, in) for ``nn.Linear`` and (in, out) for ``Conv1D``.
        """
        delta = self.tt_adapters[adapter_name].delta_weight()
        return delta.T if self.fan_in_fan_out else delta

    def merge(
        self, adapter_names: Sequence[str] | None = None, *, keep_original: bool = True
    ) -> None:
        """Fold adapters into the base weight: ``W ← W + ΔW`` (ΔW in float32, added once).

        Parameters
        ----------
        adapter_names : sequence of str, optional
            Defaults to the active adapters that are not merged yet.
        keep_original : bool
            Keep the pre-merge weight so :meth:`unmerge` restores it bit-for-bit (costs one
            copy of the weight while merged). With False, unmerge subtracts ΔW (rounding
            error about eps·|W|).
        """
        names = [
            n for n in (adapter_names or self.active_adapters) if n not in self.merged_adapters
        ]
        non_linear = [n for n in names if self.tt_adapters[n].kind != "parallel"]
        if non_linear:
            raise InvalidInputError(
                f"adapter(s) {non_linear} add a non-linear bottleneck after the layer "
                "(LoRETTA-adp); there is no weight update to merge. Keep them unmerged."
            )
        weight = self.base_layer.weight
        for n in names:
            delta = self.get_delta_weight(n).to(weight.device)
            with torch.no_grad():
                if keep_original:
                    self._original_weights.setdefault(n, weight.detach().clone())
                weight.data = (weight.data.float() + delta).to(weight.dtype)
            self.merged_adapters.append(n)

    def unmerge(self) -> None:
        """Undo :meth:`merge` for every merged adapter, newest first."""
        weight = self.base_layer.weight
        while self.merged_adapters:
            n = self.merged_adapters.pop()
            with torch.no_grad():
                original = self._original_weights.pop(n, None)
                if original is not None:
                    # The model may have moved or been cast since merging.
                    weight.data = original.to(device=weight.device, dtype=weight.dtype)
                else:
                    delta = self.get_delta_weight(n).to(weight.device)
                    weight.data = (weight.data.float() - delta).to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus every active, unmerged adapter (or, in a mixed batch, each row's)."""
        if self.disable_adapters:
            if self.merged_adapters:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        y = self.base_layer(x, *args, **kwargs)
        if self.routing is not None:
            check_not_merged(self.extra_repr(), self.merged_adapters)
            return route_rows(y, x, self.routing, self.tt_adapters.servable, _run_adapter)
        merged = self.merged_adapters
        if merged and torch.is_grad_enabled():
            merged = [n for n in self.active_adapters if n in merged]
            trainable = [
                p for n in merged for p in self.tt_adapters[n].parameters() if p.requires_grad
            ]
            if trainable:  # backward would give them no gradient: say so when it runs
                y = _MergedBackwardGuard.apply(y, trainable[0], tuple(merged))
        # Adapters compute in their own dtype; under autocast their TT contractions cast
        # like F.linear (ttdecomp.contract.apply), so they run in the autocast dtype.
        for name in self.active_adapters:
            if name in self.merged_adapters:
                continue
            adapter = self.tt_adapters[name]
            y = y + _run_adapter(adapter, x if adapter.kind == "parallel" else y).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        """Feature sizes and adapter names."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"adapters={list(self.tt_adapters)}, active={self.active_adapters}"
        )


class _MergedBackwardGuard(torch.autograd.Function):
    """Identity in forward; in backward, the error that merged adapters cannot train."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, anchor: torch.Tensor, names: tuple) -> torch.Tensor:
        ctx.names = names
        return y.clone()  # not a view: callers may modify the output in place

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        raise InvalidInputError(
            f"backward through merged adapter(s) {list(ctx.names)}: their ΔW is folded into the "
            "base weights, so they would get no gradient. Call unmerge_adapter() before "
            "training; merge only for inference."
        )


def _run_adapter(adapter: Any, source: torch.Tensor) -> torch.Tensor:
    """An adapter's contribution, computed in its own dtype (the caller casts it back)."""
    return adapter(source.to(adapter.compute_dtype))
