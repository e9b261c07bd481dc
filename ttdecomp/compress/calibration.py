"""A model's calibration inputs: its batches, and the Gram ``XᵀX`` of each layer's inputs.

The whitened decomposition these Grams feed (whitening by the Cholesky factor of ``XᵀX``,
TT-SVD, exact un-whitening or rounding plus refinement) lives on the torch floor, in
:mod:`ttdecomp.nn.whitened`, beside :class:`~ttdecomp.nn.TTLinear` which uses it; its names
are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError, ShapeError, TTError
from ..nn.kinds import dense_weight
from ..nn.whitened import (
    WhitenedResult,
    as_tensor,
    check_finite,
    decompose_whitened,
    gram_of,
    output_error,
    whitened_weight,
    whitening,
)

__all__ = [
    "WhitenedResult",
    "batches_of",
    "collect_grams",
    "decompose_whitened",
    "gram_of",
    "output_error",
    "whitened_weight",
    "whitening",
]


def batches_of(calibration: Any) -> list[Any]:
    """The calibration as a list of batches: one tensor/array or mapping, or a sequence of them.

    Examples
    --------
    >>> len(batches_of(torch.zeros(4, 3))), len(batches_of([torch.zeros(2, 3)] * 5))
    (1, 5)
    """
    if isinstance(calibration, (torch.Tensor, np.ndarray, Mapping)):
        return [calibration]
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise InvalidInputError(
            f"calibration must be model inputs: a tensor (model(x)), a mapping of tensors "
            f"(model(**batch), e.g. a tokenizer's output), or a list of those; got "
            f"{type(calibration).__name__}."
        )
    out = list(calibration)
    if not out:
        raise InvalidInputError("calibration is empty; give at least one batch of inputs.")
    for i, b in enumerate(out):
        if not isinstance(b, (torch.Tensor, np.ndarray, Mapping)):
            raise InvalidInputError(
                f"calibration batch {i} is a {type(b).__name__}; each batch must be a tensor "
                "or a mapping of tensors (a tokenizer's output)."
            )
    return out


def _run(model: nn.Module, batch: Any, i: int) -> Any:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(batch, Mapping):
        kwargs = {}
        for key, v in batch.items():
            if isinstance(v, (torch.Tensor, np.ndarray)):
                v = as_tensor(v, f"calibration batch {i}[{key!r}]")
                check_finite(v, f"calibration batch {i}[{key!r}]")
                v = v.to(device)
            kwargs[key] = v
        return model(**kwargs)
    x = as_tensor(batch, f"calibration batch {i}")
    check_finite(x, f"calibration batch {i}")
    return model(x.to(device))


def collect_grams(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    calibration: Any,
    *,
    rows: dict[str, int] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """``XᵀX`` of every layer's inputs over the calibration batches (forward pre-hooks).

    Positions where a mapping batch's ``attention_mask`` is 0 (padding) are left out of the
    layers whose inputs are ``(batch, tokens, features)``.

    Returns the Grams (float64, on the CPU) and the number of batches; ``rows``, a dict when
    given, receives the number of input rows (tokens) each layer saw: a Gram of fewer rows
    than the layer's width is rank-deficient. Inputs of the wrong
    width or holding NaN/Inf are refused with the layer's name; a batch the model cannot run
    raises :class:`~ttdecomp.errors.InvalidInputError` naming it.
    """
    batches = batches_of(calibration)
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {} if rows is None else rows
    state: dict[str, Any] = {"batch": 0, "mask": None, "seen": {}}

    def hook_for(name: str, width: int) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if int(x.shape[-1]) != width:
                raise ShapeError(
                    f"calibration batch {state['batch']}: layer {name!r} expects inputs of "
                    f"width {width} (in_features) but got shape {tuple(x.shape)}; give inputs "
                    "the model accepts."
                )
            check_finite(x, f"the input of layer {name!r} on calibration batch {state['batch']}")
            x = x.detach()
            key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
            seen = state["seen"].get(key)  # q, k and v see one tensor: one product
            if seen is not None and seen[0] is args[0]:
                shared, n = seen[1], seen[2]
                grams[name] = shared if name not in grams else grams[name] + shared
                counts[name] = counts.get(name, 0) + n
                return
            mask = state["mask"]
            if mask is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask.to(x.device).bool()]  # padding positions are not inputs: (n, N)
            rows_x = x.reshape(-1, width).float()  # (n, N)
            g = (rows_x.T @ rows_x).double().cpu()  # float32 products, float64 sums over batches
            # held for the batch: the address stays its own
            state["seen"][key] = (args[0], g, int(rows_x.shape[0]))
            grams[name] = g if name not in grams else grams[name] + g
            counts[name] = counts.get(name, 0) + int(rows_x.shape[0])

        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(name, int(dense_weight(module).shape[1])))
        for name, module in layers.items()
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                state["batch"] = i
                state["seen"] = {}
                mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
                state["mask"] = torch.as_tensor(mask) if mask is not None else None
                try:
                    _run(model, batch, i)
                except TTError:
                    raise
                except (RuntimeError, TypeError, ValueError, IndexError) as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    raise InvalidInputError(
                        f"the model failed on calibration batch {i}: {type(exc).__name__}: "
                        f"{first}. Calibration batches must be inputs the model accepts "
                        "(model(x) for a tensor, model(**batch) for a mapping)."
                    ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in layers if n not in grams]
    if missing:
        raise InvalidInputError(
            f"the calibration never reached the layers {missing[:5]}; they are not used in the "
            "model's forward on these inputs. Leave them out of target_modules."
        )
    return grams, len(batches)
