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

from ..assets.quantized import check_same_quantization, describe_quantization, saved_kind
from ..errors import InvalidOptionError

__all__ = [
    "BNB_4BIT_COMPUTE_DTYPES",
    "BNB_4BIT_TYPES",
    "QUANTIZE",
    "base_description",
    "check_job_base",
    "check_quantize",
    "check_saved_quantization",
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


def check_saved_quantization(
    model_config: Any,
    quantize: str,
    methods: Sequence[str],
    *,
    model: str = "the model",
    requested: Any = None,
) -> str | None:
    """The kind (``"4bit"``, ``"8bit"``, ``"int8"``) of a model saved quantized; None if not.

    A checkpoint saved quantized (``config.json`` holds a ``quantization_config``, as
    ``save_pretrained`` of a bitsandbytes or torchao model writes, and the Hub's ``*-bnb-4bit``
    repositories have) is fine-tuned as the frozen quantized base it is, with or without
    ``quantize``; every method trains beside it (LoRA through PEFT: QLoRA on a 4-bit one).
    ``requested`` (the quantization config of the options, if any) must store the weights as
    the checkpoint does (:func:`ttdecomp.assets.quantized.check_same_quantization`).

    Raises
    ------
    InvalidOptionError
        ``quantize`` asks for another kind (transformers would load the checkpoint as saved
        and ignore it), or ``head-only`` is among the methods (``Trainer`` refuses to train a
        quantized model without an adapter).
    InvalidInputError
        The checkpoint's quantization is one the adapters cannot wrap (GPTQ, AWQ, HQQ ...).

    Examples
    --------
    >>> class Config:
    ...     quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True,
    ...                            "bnb_4bit_quant_type": "nf4"}
    >>> check_saved_quantization(Config(), "none", ["tt-lora", "lora"])
    '4bit'
    >>> check_saved_quantization(Config(), "8bit", ["tt-lora"], model="org/m-bnb-4bit")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidOptionError: quantize='8bit' asks for an 8bit base, but 'org/m-bnb-4bit' is saved quantized as 4bit (bitsandbytes 4-bit nf4) and loads only as saved; drop quantize (the saved 4bit base is used), or start from the model's full-precision checkpoint to quantize it another way.
    """  # noqa: E501
    saved = getattr(model_config, "quantization_config", None)
    if saved is None:
        return None
    kind = saved_kind(saved)
    what = f"{kind} ({describe_quantization(saved)})"
    if quantize not in ("none", kind):
        raise InvalidOptionError(
            f"quantize={quantize!r} asks for an {quantize} base, but {model!r} is saved "
            f"quantized as {what} and loads only as saved; drop quantize (the saved {kind} base "
            "is used), or start from the model's full-precision checkpoint to quantize it "
            "another way.",
            option="quantize",
        )
    if "head-only" in methods:
        raise InvalidOptionError(
            f"head-only has no adapter, and {model!r} is saved quantized as {what}: "
            "transformers' Trainer refuses to train a quantized model without one; drop "
            "head-only from methods, or use the model's full-precision checkpoint.",
            option="methods",
        )
    if requested is not None:
        check_same_quantization(saved, requested, name=model)
    return kind


def base_description(model_config: Any, quantization: Any) -> str | None:
    """How the frozen base is stored, for the start banner; None for full precision.

    Examples
    --------
    >>> base_description(object(), quantization_config("8bit"))
    'bitsandbytes 8-bit, quantized on load'
    >>> class Config:
    ...     quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True,
    ...                            "bnb_4bit_quant_type": "nf4"}
    >>> base_description(Config(), None)
    'bitsandbytes 4-bit nf4, saved quantized'
    """
    saved = getattr(model_config, "quantization_config", None)
    if saved is not None:
        return f"{describe_quantization(saved)}, saved quantized"
    if quantization is not None:
        return f"{describe_quantization(quantization)}, quantized on load"
    return None


def check_job_base(config: Any, model_config: Any) -> str | None:
    """:func:`check_saved_quantization` of a fine-tuning run's options (a ``FinetuneConfig``).

    Examples
    --------
    >>> from ttdecomp.finetune import FinetuneConfig
    >>> check_job_base(FinetuneConfig(), object()) is None  # not saved quantized
    True
    """
    return check_saved_quantization(
        model_config,
        config.quantize,
        config.methods,
        model=config.model,
        requested=config.quantization_config(),
    )
