"""The quantized base of a fine-tuning run: the ``quantize`` options and their transformers config.

``ttdecomp finetune --quantize 4bit|8bit|int8`` loads the frozen base model quantized
(bitsandbytes 4-bit or 8-bit, torchao int8 weight-only) and every method trains beside it:
TT adapters through :mod:`ttdecomp.adapters`' quantized layers, LoRA through PEFT (QLoRA on a
4-bit base). :class:`~ttdecomp.finetune.FinetuneConfig` holds the options; this module checks
them together and builds the ``quantization_config`` transformers loads the model with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidOptionError

__all__ = [
    "BNB_4BIT_COMPUTE_DTYPES",
    "BNB_4BIT_TYPES",
    "QUANTIZE",
    "check_quantize",
    "quantization_config",
]

#: ``quantize``: the frozen base model's storage ("none": full precision), and what each loads
#: the base model as (every method trains beside it).
QUANTIZE = {
    "none": "full precision (no quantization)",
    "4bit": "bitsandbytes 4-bit (QLoRA's base): BitsAndBytesConfig(load_in_4bit=True)",
    "8bit": "bitsandbytes 8-bit: BitsAndBytesConfig(load_in_8bit=True)",
    "int8": "torchao int8 weight-only: TorchAoConfig(Int8WeightOnlyConfig())",
}
#: ``bnb_4bit_quant_type``: bitsandbytes' 4-bit data types.
BNB_4BIT_TYPES = ("nf4", "fp4")
#: ``bnb_4bit_compute_dtype``: the dtype of the 4-bit matmuls, as transformers names it.
BNB_4BIT_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
#: the 4-bit options' defaults (set to anything else, they need ``quantize="4bit"``)
_4BIT_DEFAULTS = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float32"}


def check_quantize(
    quantize: str,
    methods: Sequence[str],
    *,
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_compute_dtype: str = "float32",
) -> None:
    """Refuse 4-bit options on another base, and a method that cannot train a quantized model.

    Examples
    --------
    >>> check_quantize("4bit", ["tt-lora", "lora"], bnb_4bit_quant_type="fp4")
    >>> check_quantize("8bit", ["tt-lora"], bnb_4bit_quant_type="fp4")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidOptionError: bnb_4bit_quant_type set the 4-bit quantization, but the base is 8bit (quantize='8bit'); add quantize='4bit' or drop them.
    """  # noqa: E501
    given = {"bnb_4bit_quant_type": bnb_4bit_quant_type,
             "bnb_4bit_compute_dtype": bnb_4bit_compute_dtype}  # fmt: skip
    set_4bit = [name for name, value in given.items() if value != _4BIT_DEFAULTS[name]]
    if set_4bit and quantize != "4bit":
        base = "not quantized" if quantize == "none" else quantize
        raise InvalidOptionError(
            f"{' and '.join(set_4bit)} set the 4-bit quantization, but the base is {base} "
            f"(quantize={quantize!r}); add quantize='4bit' or drop them.",
            option=set_4bit[0],
        )
    if quantize != "none" and "head-only" in methods:
        raise InvalidOptionError(
            "head-only has no adapter, and transformers' Trainer refuses to train a quantized "
            "model without one; drop head-only from methods or the quantize option.",
            option="methods",
        )


def quantization_config(
    quantize: str,
    *,
    task: str | None = "classification",
    bnb_4bit_quant_type: str = "nf4",
    bnb_4bit_compute_dtype: str = "float32",
) -> Any:
    """The transformers quantization config of ``quantize`` (None for a full-precision base).

    A classifier's new head (``classifier`` / ``score``) stays in full precision: it is
    trained in full by every method; a causal LM keeps transformers' own exclusions (the
    output head).

    Examples
    --------
    >>> quantization_config("none") is None
    True
    >>> quantization_config("8bit").load_in_8bit
    True
    """
    if quantize == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig, TorchAoConfig

    heads = ["classifier", "score"] if task == "classification" else None
    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=getattr(torch, bnb_4bit_compute_dtype),
            llm_int8_skip_modules=heads,
        )
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=heads)
    from torchao.quantization import Int8WeightOnlyConfig

    return TorchAoConfig(quant_type=Int8WeightOnlyConfig(), modules_to_not_convert=heads)
