"""Module kinds: which layers the TT layers replace or wrap, their weights and their sizes.

One place answers, for every layer kind ttdecomp supports (``nn.Linear`` and its quantized
subclasses, transformers' GPT-2 ``Conv1D`` whose weight is stored ``(in, out)``), the
questions the adapters and the compression both ask: is it a linear layer
(:func:`is_linear`, :func:`is_conv1d`), what is its ``(out, in)`` weight
(:func:`dense_weight`), what are its input and output sizes (:func:`in_out_features`, as
PEFT's ``_get_in_out_features``), and which module is the model's output head
(:func:`output_head`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, TTWarning

__all__ = [
    "check_weight_dtype",
    "dense_weight",
    "in_out_features",
    "is_conv1d",
    "is_linear",
    "output_head",
]


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' GPT-2 style ``Conv1D`` (weight stored as ``(in, out)``).

    Examples
    --------
    >>> is_conv1d(torch.nn.Linear(2, 3))
    False
    """
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` (quantized subclasses included) or a transformers ``Conv1D``.

    Examples
    --------
    >>> is_linear(torch.nn.Linear(2, 3)), is_linear(torch.nn.LayerNorm(3))
    (True, False)
    """
    return isinstance(module, nn.Linear) or is_conv1d(module)


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The ``(out_features, in_features)`` weight of an ``nn.Linear`` or ``Conv1D`` (a view).

    Examples
    --------
    >>> dense_weight(torch.nn.Linear(3, 5)).shape
    torch.Size([5, 3])
    """
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.T  # Conv1D stores (in, out)
    raise InvalidInputError(
        f"expected an nn.Linear or a transformers Conv1D, got {type(module).__name__}; "
        "only linear layers have a dense (out_features, in_features) weight here."
    )


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a supported layer, whatever its weight's storage.

    ``Conv1D`` stores its weight ``(in, out)``; quantized linear layers (bitsandbytes'
    4-bit layers pack theirs) keep ``in_features`` / ``out_features`` as attributes, which
    are read first.

    Examples
    --------
    >>> in_out_features(torch.nn.Linear(3, 5))
    (3, 5)
    """
    if is_conv1d(module):
        w = module.weight  # (in, out)
        return int(w.shape[0]), int(w.shape[1])
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if isinstance(n_in, int) and isinstance(n_out, int) and is_linear(module):
        return n_in, n_out
    raise InvalidInputError(
        f"expected an nn.Linear (or a quantized subclass) or a transformers Conv1D, got "
        f"{type(module).__name__}; name linear layers only."
    )


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output layer (``get_output_embeddings()``), unwrapped, or ``None``.

    A wrapper holding the head as ``base_layer`` (an adapter layer) stands for the head.

    Examples
    --------
    >>> output_head(torch.nn.Linear(2, 2)) is None
    True
    """
    getter = getattr(model, "get_output_embeddings", None)
    head: Any = getter() if callable(getter) else None
    base = getattr(head, "base_layer", None)
    if isinstance(base, nn.Module):
        head = base
    return head if isinstance(head, nn.Module) else None


def check_weight_dtype(weight: torch.Tensor, what: str) -> torch.Tensor:
    """The weight, detached, as a floating tensor to decompose in (float16/bfloat16 upcast to
    float32 with a warning).

    Examples
    --------
    >>> check_weight_dtype(torch.ones(2, 2), "w").dtype
    torch.float32
    """
    if not weight.is_floating_point():
        raise InvalidInputError(f"{what} has dtype {weight.dtype}; expected a floating weight.")
    if weight.dtype in (torch.float16, torch.bfloat16):
        warnings.warn(
            f"{what} is in {weight.dtype}: decomposing in float32 (TT-SVD in half precision "
            f"loses too much) and storing the cores in {weight.dtype}.",
            TTWarning,
            stacklevel=3,
        )
        return weight.detach().float()
    return weight.detach()
