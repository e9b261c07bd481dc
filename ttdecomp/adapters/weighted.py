"""Weighted combinations of TT-LoRA adapters: exact by block-diagonal cores, or TT-rounded.

For TT-LoRA adapters ``ΔW_i = alpha_i · W_i`` (``W_i`` TT-matrices of one shape), the weighted
sum ``Σ w_i ΔW_i`` is again a TT-matrix of that shape whose ranks are the sums of the ranks:
the first core concatenates the terms' first cores along the rank, the interior cores are
block-diagonal, the last concatenates along the left rank (:meth:`ttdecomp.TTMatrix.__add__`).
So the combination is exact, with no SVD of any ΔW, which no LoRA library can offer as
cleanly (LoRA's ``B A`` sums only by concatenating, PEFT's "cat", or approximately by SVD of
the dense ΔW, PEFT's "svd").

* ``combination_type="exact"`` (alias ``"cat"``): the block-diagonal sum. A bond whose summed
  rank exceeds what the TT-matrix can carry there is rounded to that maximum, which loses
  nothing in exact arithmetic (the reported bound is at round-off level).
* ``combination_type="rounded"`` (alias ``"svd"``): the sum rounded with
  :func:`ttdecomp.round` to ``tt_rank`` and/or relative accuracy ``eps``; the TT-SVD
  guarantee ``‖ΔW − ΔW̃‖_F ≤ bound · ‖ΔW‖_F`` holds per layer with the bound reported.

The arithmetic is done in float64 and cast to the adapters' dtype at the end.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, ShapeError
from ..rounding import round as tt_round
from ..tt_matrix import TTMatrix
from .config import ADP_CANNOT_MERGE, LoRETTAConfig, TTAdapterConfig, TTLoRAConfig
from .inject import check_adapter_name, inject_adapter_in_model
from .layers import ModulesToSaveWrapper, TTAdapterLayer, TTLoRAAdapter, adapter_ranks
from .targets import inspect_targets

__all__ = [
    "COMBINATION_TYPES",
    "add_weighted_adapter",
    "check_combination",
    "check_representable",
    "combine_layer",
    "uniform_cores",
]

#: Accepted ``combination_type`` values and what they mean (PEFT's names as aliases).
COMBINATION_TYPES = {"exact": "exact", "cat": "exact", "rounded": "rounded", "svd": "rounded"}


def check_combination(
    configs: dict[str, TTAdapterConfig],
    adapters: Sequence[str],
    weights: Sequence[float],
    combination_type: str,
    tt_rank: int | None,
    eps: float | None,
) -> str:
    """Validate the arguments of ``add_weighted_adapter``; returns the canonical type."""
    if isinstance(adapters, str) or not isinstance(adapters, Sequence) or not adapters:
        raise InvalidInputError(
            f"adapters must be a non-empty list of adapter names; got {adapters!r}."
        )
    unknown = [a for a in adapters if a not in configs]
    if unknown:
        raise InvalidInputError(f"unknown adapter(s) {unknown}; this model has {sorted(configs)}.")
    if isinstance(weights, (str, numbers.Number)) or not isinstance(weights, Sequence):
        raise InvalidInputError(
            f"weights must be a list of numbers, one per adapter; got {weights!r}."
        )
    if len(weights) != len(adapters):
        raise InvalidInputError(
            f"weights has {len(weights)} entries but adapters has {len(adapters)} "
            f"({list(adapters)}); give one weight per adapter."
        )
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise InvalidInputError(f"weights must be finite real numbers; got {list(weights)}.")
    for a in adapters:
        cfg = configs[a]
        if isinstance(cfg, LoRETTAConfig) and cfg.variant == "adp":
            raise InvalidInputError(
                f"adapter {a!r} is LoRETTA-adp: {ADP_CANNOT_MERGE}, so a weighted combination "
                "of it is not a weighted sum of outputs either. Combine TT-LoRA adapters only."
            )
    methods = {a: configs[a].method for a in adapters}
    if set(methods.values()) != {TTLoRAConfig.method}:
        raise InvalidInputError(
            f"add_weighted_adapter combines TT-LoRA adapters (their weighted sum is exactly a "
            f"TT-LoRA adapter of summed rank); got methods {methods}. A LoRETTA-rep update "
            "B·A sums only with a larger bottleneck of another shape: export the adapters "
            "with export_peft_lora and combine the LoRA checkpoints instead."
        )
    if combination_type not in COMBINATION_TYPES:
        raise InvalidInputError(
            f"combination_type must be one of {sorted(COMBINATION_TYPES)}; got "
            f"{combination_type!r}. 'exact' (PEFT's 'cat') sums exactly with the ranks added; "
            "'rounded' (PEFT's 'svd') rounds the sum to tt_rank and/or eps."
        )
    kind = COMBINATION_TYPES[combination_type]
    if kind == "exact" and (tt_rank is not None or eps is not None):
        raise InvalidInputError(
            "tt_rank and eps set the rounding of combination_type='rounded'; the exact sum "
            "has the sum of the ranks. Pass combination_type='rounded' to round."
        )
    if kind == "rounded":
        if tt_rank is None and eps is None:
            raise InvalidInputError(
                "combination_type='rounded' needs tt_rank= (a rank cap) and/or eps= (relative "
                "Frobenius accuracy, e.g. 1e-3)."
            )
        if tt_rank is not None and (
            isinstance(tt_rank, bool) or not isinstance(tt_rank, int) or tt_rank < 1
        ):
            raise InvalidInputError(f"tt_rank must be a positive int; got {tt_rank!r}.")
        if eps is not None and (
            isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < 1
        ):
            raise InvalidInputError(f"eps must be a float in (0, 1); got {eps!r}.")
    return kind


def combine_layer(
    name: str,
    layer_adapters: Sequence[TTLoRAAdapter],
    weights: Sequence[float],
    kind: str,
    tt_rank: int | None,
    eps: float | None,
) -> tuple[TTMatrix, float]:
    """``Σ w_i alpha_i W_i`` for one layer as a float64 TTMatrix, and its error bound.

    The bound is relative to the exact sum's Frobenius norm (0 when nothing was rounded).
    """
    shapes = {
        (tuple(int(c.shape[1]) for c in ad.cores), tuple(int(c.shape[2]) for c in ad.cores))
        for ad in layer_adapters
    }
    if len(shapes) > 1:
        raise ShapeError(
            f"module {name!r}: the adapters have different TT shapes {sorted(shapes)}; a "
            "weighted sum needs one (row_shape, col_shape). Train them with the same tt_shape."
        )
    total = None
    for ad, w in zip(layer_adapters, weights):
        term = TTMatrix([c.detach().to(torch.float64) for c in ad.cores]) * (float(w) * ad.alpha)
        total = term if total is None else total + term
    row_shape, col_shape = next(iter(shapes))
    summed = max(total.ranks)
    caps = adapter_ranks(row_shape, col_shape, summed)
    if kind == "exact":
        if all(r <= c for r, c in zip(total.ranks, caps)):
            return total, 0.0
        rounded = tt_round(total, list(caps))
    else:
        rounded = tt_round(total, tt_rank, eps=eps)
    return rounded, float(rounded.error_bound or 0.0)


def uniform_cores(ttm: TTMatrix, rank: int, dtype: torch.dtype, device: Any) -> list[torch.Tensor]:
    """The cores of ``ttm`` zero-padded to the ranks ``adapter_ranks(shape, rank)``.

    Zero padding keeps the product, so every layer's adapter has the parameter shapes that
    one config with ``tt_rank=rank`` implies.
    """
    ranks = adapter_ranks(ttm.row_shape, ttm.col_shape, rank)
    out = []
    for k, core in enumerate(ttm.cores):
        r0, m, n, r1 = (int(v) for v in core.shape)
        padded = torch.zeros(ranks[k], m, n, ranks[k + 1], dtype=torch.float64)
        padded[:r0, :, :, :r1] = core
        out.append(padded.to(dtype=dtype, device=device))
    return out


def check_representable(name: str, cores: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
    """Refuse combined cores that overflowed when cast to the adapters' dtype.

    Checked before anything is added to the model: every core entry must be finite after the
    cast, and so must ``ΔW``'s Frobenius norm (computed in float64 from the cast cores) in that
    dtype, or the adapter's output would overflow on the first forward.
    """
    dtype = cores[0].dtype
    top = torch.finfo(dtype).max
    norm = None
    if all(bool(torch.isfinite(c).all()) for c in cores):
        norm = float(TTMatrix([c.to(torch.float64) for c in cores]).norm())
    if norm is None or not math.isfinite(norm) or norm > top:
        found = "non-finite core entries" if norm is None else f"‖ΔW‖_F = {norm:.3g}"
        raise InvalidInputError(
            f"module {name!r}: the weighted combination with weights {list(weights)} does not "
            f"fit the adapters' dtype {dtype} ({found}; the largest {dtype} is {top:.3g}). "
            "Use smaller weights, or adapters in float32/float64."
        )


def add_weighted_adapter(
    model: nn.Module,
    configs: dict[str, TTAdapterConfig],
    adapters: Sequence[str],
    weights: Sequence[float],
    adapter_name: str,
    combination_type: str = "exact",
    *,
    tt_rank: int | None = None,
    eps: float | None = None,
) -> tuple[TTAdapterConfig, dict[str, float]]:
    """Inject ``adapter_name`` into ``model`` holding the weighted combination of ``adapters``.

    ``configs`` are the adapters' configs by name (``TTAdapterModel.tt_config``). The new
    adapter is added frozen and inactive. Returns its config and, per module, the error bound
    (see ``TTAdapterModel.add_weighted_adapter``).
    """
    kind = check_combination(configs, adapters, weights, combination_type, tt_rank, eps)
    check_adapter_name(adapter_name)
    if adapter_name in configs:
        raise InvalidInputError(
            f"the model already has an adapter named {adapter_name!r}; pick a new name for the "
            "combination."
        )
    layers = {n: m for n, m in model.named_modules() if isinstance(m, TTAdapterLayer)}
    per_layer = {
        n: [m.tt_adapters[a] if a in m.tt_adapters else None for a in adapters]
        for n, m in layers.items()
    }
    for n, ads in per_layer.items():
        missing = [a for a, ad in zip(adapters, ads) if ad is None]
        if missing and len(missing) < len(ads):
            raise ShapeError(
                f"module {n!r} holds some of the adapters but not {missing}; a weighted "
                "combination needs adapters on the same target modules."
            )
    saved = _modules_to_save_of(model, adapters)
    combined, bounds = {}, {}
    for n, ads in per_layer.items():
        if all(ad is not None for ad in ads):
            combined[n], bounds[n] = combine_layer(n, ads, weights, kind, tt_rank, eps)
    rank = max(max(t.ranks) for t in combined.values())
    cast = {
        n: uniform_cores(ttm, rank, per_layer[n][0].cores[0].dtype, "cpu")
        for n, ttm in combined.items()
    }
    for n, cores in cast.items():
        check_representable(n, cores, weights)
    config = _combined_config(model, configs[adapters[0]], combined, rank, saved)
    inject_adapter_in_model(config, model, adapter_name, _init=None, _activate=False)
    with torch.no_grad():
        for n, cores in cast.items():
            ad = layers[n].tt_adapters[adapter_name]
            for core, new in zip(ad.cores, cores):
                core.copy_(new)
        for module_name, source in saved.items():
            wrapper = model.get_submodule(module_name)
            wrapper.modules_to_save[adapter_name].load_state_dict(
                wrapper.modules_to_save[source].state_dict()
            )
    return config, bounds


def _modules_to_save_of(model: nn.Module, adapters: Sequence[str]) -> dict[str, str]:
    """``{module: adapter}`` of the modules-to-save copies the new adapter takes over."""
    out: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, ModulesToSaveWrapper):
            holders = sorted({a for a in adapters if a in m.modules_to_save})
            if len(holders) > 1:
                raise InvalidInputError(
                    f"adapters {holders} each train their own copy of {name!r} "
                    "(modules_to_save); those full copies have no exact weighted sum. Combine "
                    "adapters of which at most one has modules_to_save."
                )
            if holders:
                out[name] = holders[0]
    return out


def _combined_config(
    model: nn.Module,
    first: TTAdapterConfig,
    combined: dict[str, TTMatrix],
    rank: int,
    saved: dict[str, str],
) -> TTAdapterConfig:
    """The first adapter's config with ``tt_rank=rank``, ``alpha=1`` (the weights are in the
    cores) and the modules-to-save taken over; when the planner would choose other TT shapes at
    the new rank, every module's shape is written out in ``tt_shape``."""
    fields = {k: v for k, v in first.to_dict().items() if k != "method"}
    fields.update(tt_rank=rank, alpha=1.0, init="zero")
    fields["modules_to_save"] = sorted(saved) or None
    config = type(first)(**fields)
    want = {n: (t.row_shape, t.col_shape) for n, t in combined.items()}
    got = {
        i.name: (
            tuple(i.tt_matrices["cores"]["row_shape"]),
            tuple(i.tt_matrices["cores"]["col_shape"]),
        )
        for i in inspect_targets(model, config)
    }
    if got != want:
        fields["tt_shape"] = {n: [list(r), list(c)] for n, (r, c) in want.items()}
        fields["target_modules"] = sorted(want)
        config = type(first)(**fields)
    return config
