"""Quantized linear layers: which kinds there are, their dense weight, and re-quantizing them.

The layer kinds a TT adapter can wrap while the base stays quantized (as PEFT's LoRA does):

* ``"bnb_4bit"``: bitsandbytes ``Linear4bit`` (NF4 or FP4, with or without double
  quantization), what ``BitsAndBytesConfig(load_in_4bit=True)`` puts in a model;
* ``"bnb_8bit"``: bitsandbytes ``Linear8bitLt`` with int8 weights
  (``BitsAndBytesConfig(load_in_8bit=True)``);
* ``"torchao_int8"``: an ``nn.Linear`` whose weight torchao's ``Int8WeightOnlyConfig`` made an
  int8 tensor (``quantize_(model, Int8WeightOnlyConfig())`` or transformers' ``TorchAoConfig``).

Every function dispatches on the layer's type; nothing here imports bitsandbytes or torchao
unless the layer is one of theirs. Other quantized layers (HQQ, GPTQ, AWQ, EETQ, quanto, torchao
int4 / float8 / dynamic-activation weights ...) are recognised by :func:`unsupported_quantized`
so that callers can refuse them with an error naming the type instead of treating them as plain
linears (or skipping them).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError

__all__ = [
    "SUPPORTED_QUANTIZED",
    "compute_dtype",
    "cpu_packable",
    "dequantized_weight",
    "in_out_features",
    "quantization_note",
    "quantized_kind",
    "remember_4bit_state_",
    "requantize_",
    "unpack_cpu_4bit_",
    "unsupported_quantized",
]

#: The supported kinds and what they are, for error messages and docs.
SUPPORTED_QUANTIZED = {
    "bnb_4bit": "bitsandbytes Linear4bit (NF4/FP4, with or without double quantization)",
    "bnb_8bit": "bitsandbytes Linear8bitLt (int8 weights)",
    "torchao_int8": "torchao int8 weight-only (Int8WeightOnlyConfig) nn.Linear",
}

# Class names of quantized linear layers from other libraries (what each library calls them).
_OTHER_QUANTIZED_CLASSES = {
    "HQQLinear": "HQQ",
    "HQQLinearLoRA": "HQQ",
    "QuantLinear": "GPTQ (auto-gptq / gptqmodel)",
    "TritonV2QuantLinear": "GPTQ (gptqmodel)",
    "ExllamaQuantLinear": "GPTQ (exllama)",
    "ExllamaV2QuantLinear": "GPTQ (exllama v2)",
    "MarlinQuantLinear": "GPTQ (marlin)",
    "WQLinear_GEMM": "AWQ",
    "WQLinear_GEMV": "AWQ",
    "WQLinear_Exllama": "AWQ",
    "WQLinear_ExllamaV2": "AWQ",
    "WQLinear_IPEX": "AWQ",
    "EetqLinear": "EETQ",
    "QLinear": "optimum-quanto",
    "FP8Linear": "FP8 (fbgemm / finegrained)",
    "FbgemmFp8Linear": "FP8 (fbgemm)",
    "AqlmLinear": "AQLM",
    "QuantizedLinear": "AQLM / HIGGS",
    "BitLinear": "BitNet",
}

_SUPPORTED_LIST = "; ".join(SUPPORTED_QUANTIZED.values())


def _weight(module: nn.Module) -> Any:
    return module.__dict__.get("_parameters", {}).get("weight")


def _is_torchao_int8_weight_only(weight: Any) -> bool:
    cls = type(weight)
    return (
        cls.__module__.startswith("torchao")
        and cls.__name__ == "Int8Tensor"
        and getattr(weight, "act_quant_kwargs", None) is None
    )


def quantized_kind(module: nn.Module) -> str | None:
    """The supported quantized kind of ``module``, or None (a plain or unsupported layer).

    Returns ``"bnb_4bit"``, ``"bnb_8bit"``, ``"torchao_int8"`` (see :data:`SUPPORTED_QUANTIZED`)
    or None. Use :func:`unsupported_quantized` to tell an unsupported quantized layer from a
    plain one.

    Examples
    --------
    >>> import torch
    >>> quantized_kind(torch.nn.Linear(4, 4)) is None
    True
    """
    cls = type(module).__name__
    weight = _weight(module)
    if cls == "Linear4bit" and type(weight).__name__ == "Params4bit":
        return "bnb_4bit"
    if cls == "Linear8bitLt" and weight is not None and weight.dtype == torch.int8:
        return "bnb_8bit"
    if isinstance(module, nn.Linear) and _is_torchao_int8_weight_only(weight):
        return "torchao_int8"
    return None


def unsupported_quantized(module: nn.Module) -> str | None:
    """A sentence naming ``module``'s quantization when it is quantized but not supported.

    None for plain layers and for the supported kinds (:func:`quantized_kind`).

    Examples
    --------
    >>> import torch
    >>> class HQQLinear(torch.nn.Module):
    ...     pass
    >>> print(unsupported_quantized(HQQLinear()))  # doctest: +ELLIPSIS
    HQQLinear (HQQ) is a quantized layer TT adapters cannot wrap; supported: bitsandbytes ...
    >>> unsupported_quantized(torch.nn.Linear(4, 4)) is None
    True
    """
    if quantized_kind(module) is not None:
        return None
    cls = type(module).__name__
    weight = _weight(module)
    what = None
    if cls in _OTHER_QUANTIZED_CLASSES:
        what = _OTHER_QUANTIZED_CLASSES[cls]
    elif weight is not None and type(weight).__module__.startswith("torchao"):
        what = f"torchao {type(weight).__name__} weight, not int8 weight-only"
    elif cls == "Linear4bit":
        what = "bitsandbytes 4-bit, not quantized yet (move it to a device first)"
    if what is None:
        return None
    return (
        f"{cls} ({what}) is a quantized layer TT adapters cannot wrap; supported: "
        f"{_SUPPORTED_LIST}. Load the model with BitsAndBytesConfig(load_in_4bit=True) or "
        "(load_in_8bit=True), or torchao's Int8WeightOnlyConfig, or exclude this module."
    )


def _kind_or_raise(module: nn.Module) -> str:
    kind = quantized_kind(module)
    if kind is None:
        raise InvalidInputError(
            unsupported_quantized(module)
            or f"{type(module).__name__} is not a quantized layer; supported: {_SUPPORTED_LIST}."
        )
    return kind


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a supported quantized linear layer (PEFT's order).

    A bitsandbytes 4-bit weight is stored packed, (out · in / 2, 1), so its shape says nothing;
    the layer's own sizes (or the quantization state's shape) do.

    Examples
    --------
    >>> import torch
    >>> from torchao.quantization import Int8WeightOnlyConfig, quantize_
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32))
    >>> quantize_(net, Int8WeightOnlyConfig())
    >>> in_out_features(net[0])
    (64, 32)
    """
    kind = _kind_or_raise(module)
    weight = _weight(module)
    if kind == "bnb_4bit":
        state = getattr(weight, "quant_state", None)
        if state is not None:
            out_f, in_f = state.shape
            return int(in_f), int(out_f)
        return int(module.in_features), int(module.out_features)
    return int(weight.shape[1]), int(weight.shape[0])


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype a supported quantized layer computes in (the dtype of its output).

    bitsandbytes 4-bit: its ``compute_dtype`` (or the bias dtype when unset, else float32);
    8-bit: the bias dtype, else float32 (it computes in its input's dtype); torchao: the weight's
    logical dtype.
    """
    kind = _kind_or_raise(module)
    if kind == "torchao_int8":
        return _weight(module).dtype
    if kind == "bnb_4bit" and getattr(module, "compute_dtype", None) is not None:
        return module.compute_dtype
    bias = getattr(module, "bias", None)
    return bias.dtype if bias is not None and bias.dtype.is_floating_point else torch.float32


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight dequantized to a dense float32 (out, in) tensor (a new tensor).

    A bitsandbytes 4-bit weight that its CPU kernel repacked is first unpacked in place, as
    ``Linear4bit`` does before saving (same values; the next inference call repacks it).

    Examples
    --------
    >>> import torch
    >>> from torchao.quantization import Int8WeightOnlyConfig, quantize_
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32))
    >>> w = net[0].weight.detach().clone()
    >>> quantize_(net, Int8WeightOnlyConfig())
    >>> d = dequantized_weight(net[0])
    >>> d.dtype, bool((d - w).abs().max() < 0.01)
    (torch.float32, True)
    """
    kind = _kind_or_raise(module)
    weight = _weight(module)
    with torch.no_grad():
        if kind == "torchao_int8":
            return weight.dequantize().float()
        import bitsandbytes as bnb

        if kind == "bnb_4bit":
            unpack_cpu_4bit_(module)
            weight = _weight(module)
            return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
        scb = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
        return bnb.functional.int8_vectorwise_dequant(weight.data, scb.to(weight.device)).float()


def _bnb_4bit(module: nn.Module) -> tuple[Any, Any] | None:
    """``(weight, quant_state)`` of a bitsandbytes 4-bit layer; None for any other layer."""
    if quantized_kind(module) != "bnb_4bit":
        return None
    weight = _weight(module)
    return weight, weight.quant_state


def unpack_cpu_4bit_(module: nn.Module) -> bool:
    """Undo bitsandbytes' CPU repacking of a 4-bit weight, in place, as bitsandbytes does itself.

    On CPUs with AVX512-BF16, ``Linear4bit.forward`` in inference (eval mode, an input that
    does not require grad) repacks the weight for its CPU kernel (absmax rounded to bfloat16)
    and marks ``quant_state.packing_format_for_cpu``. In that format ``dequantize_4bit`` reads
    garbage, and the matmul has no backward: no gradient reaches the layer's input, silently
    (bitsandbytes 0.50). ``Linear4bit._save_to_state_dict`` converts back with the same
    function before saving, which leaves the block scales scrambled unless they were
    double-quantized; this also puts them back in order. The values are the packed ones (block
    scales rounded to bfloat16 by the packing); the next inference forward repacks. Returns
    whether it unpacked. A no-op for any other layer. Where :func:`remember_4bit_state_` kept
    the state from before the packing, that state comes back instead, exactly.
    """
    found = _bnb_4bit(module)
    if found is None:
        return False
    weight, state = found
    if getattr(state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        nested = state.original_nested
        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        kept = getattr(weight, _KEPT_STATE, None)
        if kept is not None and tuple(kept.shape) == tuple(weight.quant_state.shape):
            # the 4-bit codes come back exactly; the scales as they were before the packing
            # (remember_4bit_state_), not rounded to bfloat16 (nor re-quantized: double
            # quantization drifted on every evaluate-then-train cycle)
            weight.quant_state = copy.copy(kept)
            return True
        if not nested:
            # bitsandbytes 0.50's inverse restores the block scales' order only when they were
            # double-quantized; otherwise they stay as packing left them, (blocks per row, out)
            # in bfloat16: back to one scale per block in row-major order
            state = weight.quant_state
            state.absmax = state.absmax.T.contiguous().reshape(-1).float()
        return True
    return False


def cpu_packable(module: nn.Module) -> bool:
    """Whether bitsandbytes' CPU inference repacking can take this 4-bit layer's shape.

    bitsandbytes 0.50 repacks a 4-bit weight in blocks of 32 output rows and one scale per
    quantization block of a row; a layer with ``out_features`` not a multiple of 32 or
    ``in_features`` not a multiple of the block size (64) makes its first inference forward
    fail (``shape '[96, 0]' is invalid``) on CPUs with AVX512-BF16. False for such a layer and
    for any layer that is not a bitsandbytes 4-bit one.

    Examples
    --------
    >>> cpu_packable(nn.Linear(64, 64))
    False
    """
    found = _bnb_4bit(module)
    if found is None:
        return False
    _, state = found
    rows, cols = (int(n) for n in state.shape)
    return rows % 32 == 0 and cols % int(state.blocksize) == 0


#: where :func:`remember_4bit_state_` keeps a 4-bit weight's state (on the weight itself, so
#: a weight replaced by :func:`requantize_` starts without one)
_KEPT_STATE = "_ttdecomp_unpacked_quant_state"


def remember_4bit_state_(module: nn.Module) -> bool:
    """Keep a bitsandbytes 4-bit layer's quantization state, so that unpacking is exact.

    bitsandbytes 0.50's CPU repacking (:func:`unpack_cpu_4bit_`) rounds the block scales to
    bfloat16, and its inverse re-quantizes double-quantized scales: a layer evaluated, then
    trained, would no longer be the layer that was loaded, and would drift further on every
    evaluation. Called while the layer is unpacked (before an inference forward repacks it),
    this keeps the state as it is (a shallow copy: packing rebinds the state's fields, it does
    not write into its tensors), and :func:`unpack_cpu_4bit_` puts it back. A no-op (False) on
    any other layer or on a packed one.

    Examples
    --------
    >>> remember_4bit_state_(nn.Linear(2, 2))
    False
    """
    found = _bnb_4bit(module)
    if found is None or found[1] is None or getattr(found[1], "packing_format_for_cpu", False):
        return False
    weight, state = found
    setattr(weight, _KEPT_STATE, copy.copy(state))
    return True


def requantize_(module: nn.Module, weight: torch.Tensor) -> None:
    """Replace the layer's weight by ``weight`` (dense, (out, in)) quantized the same way.

    The quantization settings (4-bit type, block size, double quantization, storage dtype; the
    8-bit flags; torchao's block size) are the layer's own. The old weight is dropped.
    """
    kind = _kind_or_raise(module)
    old = _weight(module)
    device = old.device
    if kind == "torchao_int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        dtype = old.dtype
        del module.weight
        module.weight = nn.Parameter(weight.to(device=device, dtype=dtype), requires_grad=False)
        quantize_(module, Int8WeightOnlyConfig())
        return
    import bitsandbytes as bnb

    if kind == "bnb_4bit":
        unpack_cpu_4bit_(module)
        old = _weight(module)
        kwargs = {
            "blocksize": old.blocksize,
            "compress_statistics": old.compress_statistics,
            "quant_type": old.quant_type,
            "quant_storage": old.quant_storage,
            "module": module,
        }
        dense = weight.to(old.quant_state.dtype).to("cpu")
        module.weight = bnb.nn.Params4bit(dense, requires_grad=False, **kwargs).to(device)
        return
    dense = weight.to(torch.float32).to("cpu")
    module.weight = bnb.nn.Int8Params(dense, requires_grad=False, has_fp16_weights=False).to(device)
    module.state.reset_grads()
    module.state.CB = module.state.SCB = None


def quantization_note(module: nn.Module) -> str:
    """A short description of the layer's quantization, e.g. ``"bitsandbytes 4-bit nf4"``.

    ``"none"`` for a layer that is not a supported quantized kind.
    """
    kind = quantized_kind(module)
    if kind is None:
        return "none"
    if kind == "bnb_4bit":
        weight = _weight(module)
        double = " with double quantization" if weight.compress_statistics else ""
        return f"bitsandbytes 4-bit {weight.quant_type}{double}"
    if kind == "bnb_8bit":
        return "bitsandbytes 8-bit"
    return "torchao int8 weight-only"
