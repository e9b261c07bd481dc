"""Checkpoints saved quantized, and checking that a quantized load quantized something.

Many 4-bit models people fine-tune are published already quantized (``save_pretrained`` of a
bitsandbytes or torchao model writes the packed weights and a ``quantization_config`` into
``config.json``; e.g. the ``*-bnb-4bit`` repositories on the Hub). transformers loads such a
checkpoint as it was saved and silently ignores a ``quantization_config`` passed beside it,
so :func:`ttdecomp.assets.load_pretrained` checks the two against each other with the helpers
here, and refuses a quantization method the adapters cannot wrap before any weight is read.

Kinds, as ``ttdecomp finetune --quantize`` names them: ``"4bit"`` (bitsandbytes
``Linear4bit``, NF4 or FP4), ``"8bit"`` (bitsandbytes ``Linear8bitLt``), ``"int8"`` (torchao
int8 weight-only). Nothing here imports torch, transformers, bitsandbytes or torchao at module
level.

Examples
--------
>>> saved_kind({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
'4bit'
>>> describe_quantization({"quant_method": "bitsandbytes", "load_in_8bit": True})
'bitsandbytes 8-bit'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputError

__all__ = [
    "QUANTIZED_KINDS",
    "apply_compute_dtype_",
    "check_same_quantization",
    "count_quantized_layers",
    "describe_quantization",
    "saved_kind",
]

#: The kinds of quantized base the adapters wrap, and what each is.
QUANTIZED_KINDS = {
    "4bit": "bitsandbytes 4-bit (Linear4bit, NF4 or FP4)",
    "8bit": "bitsandbytes 8-bit (Linear8bitLt)",
    "int8": "torchao int8 weight-only (Int8WeightOnlyConfig)",
}
_SUPPORTED = "; ".join(QUANTIZED_KINDS.values())


def _as_dict(config: Any) -> dict[str, Any]:
    """A quantization config (a transformers config object or its dict) as a dict."""
    if isinstance(config, Mapping):
        out = dict(config)
    elif callable(getattr(config, "to_dict", None)):
        out = dict(config.to_dict())
    else:
        raise InvalidInputError(
            f"a quantization config must be a transformers quantization config or a dict; got "
            f"{type(config).__name__}."
        )
    method = out.get("quant_method")
    out["quant_method"] = getattr(method, "value", method)  # transformers' QuantizationMethod
    return out


def _torchao_type(config: Mapping[str, Any]) -> str:
    """The name of a torchao config's quantization type (``Int8WeightOnlyConfig`` ...)."""
    quant_type = config.get("quant_type")
    if isinstance(quant_type, Mapping):  # serialized: {"default": {"_type": name, ...}}
        inner = quant_type.get("default", quant_type)
        if isinstance(inner, Mapping):
            return str(inner.get("_type", inner))
        return str(inner)
    if isinstance(quant_type, str):
        return quant_type
    return type(quant_type).__name__


def describe_quantization(config: Any) -> str:
    """A short description of a quantization config (dict or transformers object).

    Examples
    --------
    >>> describe_quantization({"quant_method": "bitsandbytes", "load_in_4bit": True,
    ...                        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True})
    'bitsandbytes 4-bit nf4, double quantization'
    >>> describe_quantization({"quant_method": "gptq", "bits": 4})
    'gptq'
    """
    c = _as_dict(config)
    method = str(c.get("quant_method", "unknown"))
    if method == "bitsandbytes":
        if c.get("load_in_4bit"):
            text = f"bitsandbytes 4-bit {c.get('bnb_4bit_quant_type', 'fp4')}"
            return text + (", double quantization" if c.get("bnb_4bit_use_double_quant") else "")
        if c.get("load_in_8bit"):
            return "bitsandbytes 8-bit"
    if method == "torchao":
        return f"torchao {_torchao_type(c)}"
    return method


def saved_kind(config: Any) -> str:
    """The kind (``"4bit"``, ``"8bit"``, ``"int8"``) of a checkpoint's ``quantization_config``.

    Raises
    ------
    InvalidInputError
        A quantization the adapters cannot wrap (GPTQ, AWQ, HQQ, FP8, torchao int4 ...), named,
        with what is supported.

    Examples
    --------
    >>> saved_kind({"quant_method": "torchao", "quant_type": "Int8WeightOnlyConfig"})
    'int8'
    >>> saved_kind({"quant_method": "awq", "bits": 4})
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: the checkpoint is saved quantized with awq, which ttdecomp's adapters cannot wrap; they wrap bitsandbytes 4-bit (Linear4bit, NF4 or FP4); bitsandbytes 8-bit (Linear8bitLt); torchao int8 weight-only (Int8WeightOnlyConfig). Use the model's full-precision checkpoint (with --quantize 4bit, 8bit or int8 to quantize it on load).
    """  # noqa: E501
    c = _as_dict(config)
    method = c.get("quant_method")
    if method == "bitsandbytes":
        if c.get("load_in_4bit"):
            return "4bit"
        if c.get("load_in_8bit"):
            return "8bit"
    if method == "torchao" and _torchao_type(c) == "Int8WeightOnlyConfig":
        return "int8"
    raise InvalidInputError(
        f"the checkpoint is saved quantized with {describe_quantization(c)}, which ttdecomp's "
        f"adapters cannot wrap; they wrap {_SUPPORTED}. Use the model's full-precision "
        "checkpoint (with --quantize 4bit, 8bit or int8 to quantize it on load)."
    )


def _storage(config: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a quantization stores: method, kind and (4-bit) data type and double quantization."""
    kind = saved_kind(config)
    if kind == "4bit":
        return (
            kind,
            config.get("bnb_4bit_quant_type", "fp4"),
            bool(config.get("bnb_4bit_use_double_quant", False)),
        )
    return (kind,)


def check_same_quantization(saved: Any, requested: Any, *, name: str) -> None:
    """Refuse to load a checkpoint saved quantized one way as if it were quantized another way.

    transformers loads a saved-quantized checkpoint as it was saved whatever quantization
    config it is given; ``requested`` must store the weights the same way (method, bits, 4-bit
    data type, double quantization). The compute dtype may differ: it is not stored.

    Examples
    --------
    >>> nf4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    >>> check_same_quantization(nf4, dict(nf4, bnb_4bit_compute_dtype="bfloat16"), name="m")
    >>> check_same_quantization(nf4, {"quant_method": "bitsandbytes", "load_in_8bit": True},
    ...                         name="m")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: 'm' is saved quantized (bitsandbytes 4-bit nf4) and ...
    """
    saved_d, requested_d = _as_dict(saved), _as_dict(requested)
    if _storage(saved_d) != _storage(requested_d):
        raise InvalidInputError(
            f"{name!r} is saved quantized ({describe_quantization(saved_d)}) and loads only as "
            f"saved; it cannot be loaded as {describe_quantization(requested_d)}. Drop the "
            "quantization option (--quantize): the saved quantization is used. To quantize "
            "another way, start from the model's full-precision checkpoint."
        )


def _is_quantized_weight(weight: Any) -> bool:
    import torch

    if type(weight).__name__ in ("Params4bit", "Int8Params"):
        return True
    data = getattr(weight, "data", weight)
    return isinstance(data, torch.Tensor) and type(data) is not torch.Tensor


def count_quantized_layers(model: Any) -> int:
    """How many modules of ``model`` hold a quantized weight (bitsandbytes or a torchao tensor).

    Examples
    --------
    >>> import torch
    >>> count_quantized_layers(torch.nn.Linear(2, 2))
    0
    """
    count = 0
    for module in model.modules():
        weight = module.__dict__.get("_parameters", {}).get("weight")
        if weight is not None and _is_quantized_weight(weight):
            count += 1
    return count


def apply_compute_dtype_(model: Any, dtype: Any) -> int:
    """Set the compute dtype of every bitsandbytes 4-bit layer of ``model``; how many.

    The compute dtype is not part of what a 4-bit checkpoint stores; transformers keeps the
    saved one even when a quantization config asks for another, so it is set here.

    Examples
    --------
    >>> import torch
    >>> apply_compute_dtype_(torch.nn.Linear(2, 2), torch.bfloat16)
    0
    """
    count = 0
    for module in model.modules():
        if type(module).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4"):
            module.compute_dtype = dtype
            module.compute_type_is_set = True
            count += 1
    return count
