"""TT adapters over quantized base layers (QLoRA's setting), dispatched on the base layer's type.

The base layer stays frozen and quantized (see :mod:`ttdecomp.nn.quantized` for the supported
kinds: bitsandbytes 4-bit and 8-bit, torchao int8 weight-only); the adapter runs beside it in the
layer's compute dtype (float32 when that is float16/bfloat16, as PEFT keeps LoRA weights), so
only the TT cores receive gradients. :func:`wrap_layer` picks the wrapper:
:class:`~ttdecomp.adapters.layers.TTAdapterLayer` for plain layers,
:class:`QuantizedTTAdapterLayer` for quantized ones, and an error naming the layer type for
quantized layers of other kinds.

Merging is what PEFT does for LoRA on these layers: dequantize W, add ΔW (float32), quantize
W + ΔW again. The re-quantization rounds, so the merged layer is not exactly base + adapter:
each merge records, per adapter, ``rounding_error = ‖Q(W + ΔW) − (W + ΔW)‖_F`` beside the
adapter's own ``‖ΔW‖_F`` (:class:`MergeRounding`) and warns with
:class:`QuantizedMergeWarning` when the rounding error is the larger of the two (the merge then
loses more than the adapter adds). Unmerging restores the quantized weight kept at merge time
(``keep_original=True``, bit for bit); after a merge without it (``merge_and_unload``) there is
nothing exact to return to, and :meth:`QuantizedTTAdapterLayer.unmerge` refuses.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, TTWarning
from ..nn.quantized import (
    compute_dtype,
    cpu_packable,
    dequantized_weight,
    in_out_features,
    quantization_note,
    quantized_kind,
    remember_4bit_state_,
    requantize_,
    unpack_cpu_4bit_,
    unsupported_quantized,
)
from .layers import TTAdapterLayer

__all__ = [
    "MergeRounding",
    "QuantizedMergeWarning",
    "QuantizedTTAdapterLayer",
    "base_quantization",
    "guard_4bit_backward",
    "prepare_model_for_kbit_training",
    "reference_weight",
    "wrap_layer",
]


class QuantizedMergeWarning(TTWarning):
    """Re-quantizing a merged weight lost more than the adapter contributes.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", QuantizedMergeWarning)  # make it an error
    >>> issubclass(QuantizedMergeWarning, TTWarning)
    True
    """


@dataclass(frozen=True)
class MergeRounding:
    """What merging one adapter into a quantized layer cost.

    Attributes
    ----------
    rounding_error : float
        ``‖Q(W + ΔW) − (W + ΔW)‖_F``: what re-quantizing the merged weight changed.
    delta_norm : float
        ``‖ΔW‖_F``: the adapter's own contribution.

    Examples
    --------
    >>> MergeRounding(rounding_error=0.2, delta_norm=1.0).relative
    0.2
    """

    rounding_error: float
    delta_norm: float

    @property
    def relative(self) -> float:
        """``rounding_error / delta_norm`` (inf when ΔW = 0 and the rounding is not)."""
        if self.delta_norm > 0:
            return self.rounding_error / self.delta_norm
        return 0.0 if self.rounding_error == 0 else float("inf")


class QuantizedTTAdapterLayer(TTAdapterLayer):
    """A :class:`~ttdecomp.adapters.layers.TTAdapterLayer` around a quantized linear layer.

    ``forward`` is the quantized base's output plus each active adapter computed in the adapter
    dtype; the base's parameters stay quantized and frozen. :meth:`merge` dequantizes, adds
    ΔW and re-quantizes, recording :attr:`merge_rounding`.

    Attributes
    ----------
    quant_kind : str
        ``"bnb_4bit"``, ``"bnb_8bit"`` or ``"torchao_int8"``.
    merge_rounding : dict of str to MergeRounding
        The cost of each merge, by adapter name (kept after unmerging, for the record).

    Examples
    --------
    >>> import torch
    >>> from torchao.quantization import Int8WeightOnlyConfig, quantize_
    >>> from ttdecomp.adapters import TTLoRAAdapter
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(32, 16))
    >>> quantize_(net, Int8WeightOnlyConfig())
    >>> layer = QuantizedTTAdapterLayer(net[0])
    >>> layer.quant_kind, layer.in_features, layer.out_features
    ('torchao_int8', 32, 16)
    >>> layer.add("default", TTLoRAAdapter((1, 1, 4, 4), (4, 8, 1, 1), tt_rank=2, alpha=1.0))
    >>> x = torch.randn(3, 32)
    >>> bool(torch.equal(layer(x), net[0](x)))  # a zero-initialised adapter adds nothing
    True
    """

    def __init__(self, base_layer: nn.Module) -> None:
        kind = quantized_kind(base_layer)
        if kind is None:
            raise InvalidInputError(
                unsupported_quantized(base_layer)
                or f"{type(base_layer).__name__} is not quantized; wrap it in TTAdapterLayer."
            )
        super().__init__(base_layer)
        self.quant_kind = kind
        self.fan_in_fan_out = False
        self.in_features, self.out_features = in_out_features(base_layer)
        self.merge_rounding: dict[str, MergeRounding] = {}
        self._lossy_merges: list[str] = []

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the quantized base computes in."""
        return compute_dtype(self.base_layer)

    def merge(
        self, adapter_names: Sequence[str] | None = None, *, keep_original: bool = True
    ) -> None:
        """Fold adapters in: dequantize W, add ΔW (float32), quantize again.

        Parameters
        ----------
        adapter_names : sequence of str, optional
            Defaults to the active adapters that are not merged yet.
        keep_original : bool
            Keep the quantized weight from before the merge (its quantized size, not a dense
            copy) so :meth:`unmerge` restores it exactly. Without it, unmerging is refused.

        Warns
        -----
        QuantizedMergeWarning
            When re-quantizing changed the merged weight by more than ‖ΔW‖_F.
        """
        names = [
            n for n in (adapter_names or self.active_adapters) if n not in self.merged_adapters
        ]
        non_linear = [n for n in names if self.tt_adapters[n].kind != "parallel"]
        if non_linear:
            raise InvalidInputError(
                f"adapter(s) {non_linear} add a non-linear bottleneck after the layer "
                "(LoRETTA-adp); there is no weight update to merge into the quantized base. "
                "Keep them unmerged."
            )
        base = self.base_layer
        for n in names:
            before = _snapshot(base, self.quant_kind) if keep_original else None
            with torch.no_grad():
                weight = dequantized_weight(base)
                delta = self.get_delta_weight(n).to(weight.device)
                target = weight + delta
                requantize_(base, target)
                error = float(torch.linalg.vector_norm(dequantized_weight(base) - target))
            rounding = MergeRounding(error, float(torch.linalg.vector_norm(delta)))
            self.merge_rounding[n] = rounding
            if rounding.rounding_error > rounding.delta_norm:
                warnings.warn(
                    f"merging adapter {n!r} into a {quantization_note(base)} layer "
                    f"({self.out_features} x {self.in_features}): re-quantizing W + ΔW changed it "
                    f"by {rounding.rounding_error:.4g} (Frobenius), more than the adapter's own "
                    f"ΔW ({rounding.delta_norm:.4g}); the merged model may lose what the adapter "
                    "learned. Keep the adapter unmerged on a quantized base, or merge into the "
                    "full-precision base.",
                    QuantizedMergeWarning,
                    stacklevel=3,
                )
            if before is not None:
                self._original_weights[n] = before
            else:
                self._lossy_merges.append(n)
            self.merged_adapters.append(n)

    def unmerge(self) -> None:
        """Restore the quantized weights kept at merge time, newest first.

        Raises :class:`~ttdecomp.errors.InvalidInputError` (before changing anything) when an
        adapter was merged without ``keep_original``: W + ΔW was re-quantized, and subtracting
        ΔW again would round a second time, leaving neither the base nor the merged model.
        """
        lossy = [n for n in self.merged_adapters if n in self._lossy_merges]
        if lossy:
            raise InvalidInputError(
                f"cannot unmerge adapter(s) {lossy} from a {quantization_note(self.base_layer)} "
                "layer: they were merged without keep_original, so W + ΔW was re-quantized and "
                "the quantized W is gone (subtracting ΔW would round again). Reload the base "
                "model, or merge with keep_original=True (merge_adapter's default)."
            )
        while self.merged_adapters:
            n = self.merged_adapters.pop()
            _restore(self.base_layer, self.quant_kind, self._original_weights.pop(n))

    def extra_repr(self) -> str:
        """Feature sizes, the base's quantization and adapter names."""
        return f"{super().extra_repr()}, base={quantization_note(self.base_layer)!r}"


def _snapshot(module: nn.Module, kind: str) -> Any:
    """What restores the layer's quantized weight exactly (its parameter, 8-bit scales too)."""
    weight = module._parameters["weight"]
    if kind == "bnb_4bit":
        # a copy: dequantizing a weight that the CPU kernel repacked unpacks it in place,
        # re-quantizing its double-quantized absmax (not bit-exact)
        return copy.deepcopy(weight)
    if kind == "bnb_8bit":
        scb = weight.SCB if weight.SCB is not None else module.state.SCB
        return weight, scb
    return weight


def _restore(module: nn.Module, kind: str, snapshot: Any) -> None:
    if kind == "bnb_8bit":
        weight, scb = snapshot
        module.weight = weight
        module.state.reset_grads()
        module.state.CB, module.state.SCB = weight.data, scb
        weight.CB = weight.SCB = None
        return
    if kind == "torchao_int8":
        del module.weight
    module.weight = snapshot


def wrap_layer(module: nn.Module) -> TTAdapterLayer:
    """The adapter wrapper for ``module``, dispatched on its type (an existing wrapper as is).

    Raises :class:`~ttdecomp.errors.InvalidInputError` for quantized layers of unsupported
    kinds, naming the type and what is supported.

    Examples
    --------
    >>> import torch
    >>> type(wrap_layer(torch.nn.Linear(4, 4))).__name__
    'TTAdapterLayer'
    """
    if isinstance(module, TTAdapterLayer):
        return module
    if quantized_kind(module) is not None:
        return QuantizedTTAdapterLayer(module)
    problem = unsupported_quantized(module)
    if problem is not None:
        raise InvalidInputError(problem)
    return TTAdapterLayer(module)


def reference_weight(module: nn.Module) -> torch.Tensor:
    """A tensor whose dtype and device an adapter on ``module`` is built from.

    The base weight for plain layers; for quantized ones an empty tensor of the layer's compute
    dtype on its device (the stored weight is uint8 / int8). ``module`` may be a wrapper.
    """
    base = module.base_layer if isinstance(module, TTAdapterLayer) else module
    if quantized_kind(base) is not None:
        weight = base._parameters["weight"]
        return torch.empty(0, dtype=compute_dtype(base), device=weight.device)
    return module.weight


def base_quantization(module: nn.Module) -> str:
    """The quantization of the layer under ``module`` (a wrapper or a layer), or ``"none"``."""
    base = module.base_layer if isinstance(module, TTAdapterLayer) else module
    return quantization_note(base)


def _unpack_for_backward(module: nn.Module, args: Any) -> None:
    if torch.is_grad_enabled():
        unpack_cpu_4bit_(module)
    if not module.training:  # bitsandbytes repacks in eval mode only: keep what it would round
        remember_4bit_state_(module)


def guard_4bit_backward(model: nn.Module) -> int:
    """Make every bitsandbytes 4-bit layer of ``model`` pass gradients after an inference call.

    bitsandbytes 0.50 repacks a 4-bit weight for its CPU kernel on the first inference forward
    (CPUs with AVX512-BF16), and the repacked matmul has no backward: training after any
    evaluation then silently gives no gradient through that layer (see
    :func:`ttdecomp.nn.quantized.unpack_cpu_4bit_`). A forward pre-hook on each layer unpacks
    the weight when gradients are enabled; inference under ``torch.no_grad()`` keeps the fast
    kernel. The hook also keeps the layer's quantization state before a repack
    (:func:`~ttdecomp.nn.quantized.remember_4bit_state_`) and unpacking restores it exactly:
    the base trained beside is the base that was loaded, however many evaluations came
    between (bitsandbytes' own inverse rounds the block scales to bfloat16 and re-quantizes
    double-quantized ones, a drift on every evaluate-then-train cycle). A layer whose shape
    that repacking cannot take (:func:`~ttdecomp.nn.quantized.cpu_packable`: fewer than 64
    inputs, say) is switched to bitsandbytes' plain path, where inference would fail.
    Idempotent;
    :func:`~ttdecomp.adapters.get_tt_model` calls it. Returns the number of
    layers guarded now.

    Examples
    --------
    >>> import torch
    >>> guard_4bit_backward(torch.nn.Sequential(torch.nn.Linear(4, 4)))  # no 4-bit layer
    0
    """
    count = 0
    for module in model.modules():
        if quantized_kind(module) == "bnb_4bit" and not getattr(module, _GUARD, False):
            module.register_forward_pre_hook(_unpack_for_backward)
            setattr(module, _GUARD, True)
            if not cpu_packable(module) and hasattr(module, "support_avx512bf16_for_cpu"):
                # bitsandbytes' CPU repacking fails on this shape: its plain path instead
                module.support_avx512bf16_for_cpu = False
            count += 1
    return count


_GUARD = "_ttdecomp_backward_guard"


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")


def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Get a quantized (or half-precision) Hugging Face model ready for adapter training.

    PEFT's function of the same name, for TT adapters (PEFT's own also works: it is tested).
    In place, before :func:`~ttdecomp.adapters.get_tt_model`:

    1. every parameter is frozen;
    2. the normalisation layers' float16/bfloat16 parameters (LayerNorm, RMSNorm, ...) become
       float32, so the statistics they compute do not round in half precision (PEFT casts every
       half-precision parameter, embeddings and head included; only the norms are cast here,
       which keeps the memory the quantization saved);
    3. bitsandbytes 4-bit layers pass gradients after an inference call
       (:func:`guard_4bit_backward`);
    4. with ``use_gradient_checkpointing``, activation checkpointing is turned on
       (``use_reentrant=False`` unless ``gradient_checkpointing_kwargs`` says otherwise) and, for
       the re-entrant variant, the input embeddings' output is made to require gradients so
       that the checkpointed blocks pass gradients to the adapters inside them.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Loaded with a quantization config (or in float16/bfloat16).
    use_gradient_checkpointing : bool
    gradient_checkpointing_kwargs : dict, optional
        Passed to ``model.activation_checkpointing_enable`` (transformers 5) or
        ``model.gradient_checkpointing_enable``.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters.testing import tiny_model
    >>> model = prepare_model_for_kbit_training(tiny_model("llama", dtype=torch.bfloat16))
    >>> model.model.norm.weight.dtype, model.model.embed_tokens.weight.dtype
    (torch.float32, torch.bfloat16)
    >>> any(p.requires_grad for p in model.parameters())
    False
    """
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5's name
    if not callable(enable):
        enable = getattr(model, "gradient_checkpointing_enable", None)
    if use_gradient_checkpointing and not callable(enable):
        raise InvalidInputError(
            f"use_gradient_checkpointing=True but {type(model).__name__} has no "
            "gradient_checkpointing_enable(); pass a transformers PreTrainedModel, or "
            "use_gradient_checkpointing=False."
        )
    kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
    guard_4bit_backward(model)
    for param in model.parameters():
        param.requires_grad_(False)
    for module in model.modules():
        if _is_norm(module):
            for param in module.parameters(recurse=False):
                if param.dtype in (torch.float16, torch.bfloat16):
                    param.data = param.data.float()
    if use_gradient_checkpointing:
        if kwargs["use_reentrant"]:
            model.enable_input_require_grads()
        enable(kwargs)  # the checkpointing kwargs: the first parameter under either name
    return model
