"""Healing: a short distillation of the original model's outputs into the compressed one.

Only the TT cores train (every other parameter is frozen); the teacher is the original
model, run without gradients on the same batches. The loss compares what the model
returns:

* ``.logits`` (a language model or a classifier): the KL divergence of the student's
  distribution from the teacher's, per position (``temperature`` 1 by default);
* ``.last_hidden_state`` (an encoder): the mean squared error of the hidden states,
  divided by the teacher's mean square, so 1.0 means "no better than zeros";
* a plain tensor: the same normalised mean squared error.

Positions where the batch's ``attention_mask`` is 0 are left out. AdamW, a short
warm-up then a constant or (``schedule="cosine"``) decaying learning rate, dropout off
(the student is fitted to its eval-mode outputs), and a wall-clock limit (``max_seconds``,
checked after every step) that stops training even when ``steps`` is not reached.

Two options make the same minutes go further:

* ``layerwise=True`` first refits every TT layer, in forward order, to the teacher's layer
  outputs on the inputs the compressed model actually gives it
  (:func:`~ttdecomp.compress.refit_layers`: closed form, forward passes only), on
  the first ``refit_batches`` batches; the distillation then trains from there with the
  time that is left.
* ``hidden="all"`` (models that return ``hidden_states`` when called with
  ``output_hidden_states=True``, e.g. transformers encoders) adds the normalised mean squared
  error of every layer's hidden states to the loss (intermediate-layer distillation, as in
  TinyBERT): each block gets a direct signal instead of one through all the blocks above it.

The teacher's outputs are computed once per batch and kept (``cache_teacher``, when they
fit in ``cache_bytes``), so a step costs one student forward and backward.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from ..nn.linear import TTLinear
from .calibration import batches_of
from .layerwise import RefitReport, refit_layers

__all__ = ["HealReport", "heal"]


@dataclass
class HealReport:
    """What :func:`heal` did.

    Attributes
    ----------
    steps : int
        Optimiser steps taken.
    seconds : float
        Wall time.
    loss_first, loss_last : float
        Mean loss over the first and the last ``min(10, steps)`` steps.
    trained_params : int
        Parameters trained (the TT cores).
    refit : RefitReport or None
        The layer-wise refit (``layerwise=True``), else None.
    lr_last : float
        The learning rate of the last step (``schedule="cosine"`` ends near 0).
    """

    steps: int
    seconds: float
    loss_first: float
    loss_last: float
    trained_params: int
    refit: RefitReport | None = None
    lr_last: float = 0.0


def _unpack(out: Any) -> tuple[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return "hidden", out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return "logits", logits
    hidden = getattr(out, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return "hidden", hidden
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return "hidden", out[0]
    raise InvalidInputError(
        f"heal cannot read the model's output ({type(out).__name__}); it needs a tensor, "
        "or an output with .logits or .last_hidden_state."
    )


def _call(model: nn.Module, batch: Any, hidden: bool = False) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch, output_hidden_states=True) if hidden else model(**batch)
    return model(batch)


def _levels(out: Any) -> list[torch.Tensor]:
    """Every layer's hidden states but the embeddings' (``out.hidden_states[1:]``)."""
    states = getattr(out, "hidden_states", None)
    if not states or not all(isinstance(h, torch.Tensor) for h in states):
        raise InvalidInputError(
            "hidden='all' needs a model that returns hidden_states when called with "
            "output_hidden_states=True (a transformers model); use hidden='last'."
        )
    return list(states[1:])


def _slim(out: Any, hidden: bool) -> Any:
    """What the loss needs from a teacher output, detached (kept across steps)."""
    kind, t = _unpack(out)
    return {
        "kind": kind,
        "out": t.detach(),
        "levels": [h.detach() for h in _levels(out)] if hidden else None,
    }


def _nmse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    s, t = s.float(), t.float()
    if mask is not None and s.ndim >= 3 and tuple(mask.shape) == tuple(s.shape[:2]):
        keep = mask.bool()
        s, t = s[keep], t[keep]
    return (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)


def distill_loss(
    student_out: Any, teacher_out: Any, mask: torch.Tensor | None, temperature: float = 1.0
) -> torch.Tensor:
    """The healing loss between two outputs (module notes); ``mask`` is ``(B, T)`` or None."""
    _, t = _unpack(teacher_out)
    return _distill(student_out, {"kind": None, "out": t}, mask, temperature)


def _distill(
    student_out: Any, target: dict[str, Any], mask: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    kind, s = _unpack(student_out)
    t = target["out"]
    s, t = s.float(), t.float()
    if mask is not None and s.ndim >= 3 and tuple(mask.shape) == tuple(s.shape[:2]):
        keep = mask.bool()
        s, t = s[keep], t[keep]  # (n, features)
    if kind == "logits":
        log_p = torch.log_softmax(s / temperature, dim=-1)
        log_q = torch.log_softmax(t / temperature, dim=-1)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)
        return kl.mean() * temperature**2
    scale = t.pow(2).mean().clamp_min(1e-12)
    return (s - t).pow(2).mean() / scale


def _rate(step: int, warmup: int, schedule: str, progress: float) -> float:
    """The learning-rate factor at optimiser step ``step`` (0-based), ``progress`` in [0, 1]."""
    ramp = min(1.0, (step + 1) / (warmup + 1))
    if schedule == "cosine":
        return ramp * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return ramp


def heal(
    model: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    steps: int = 1000,
    max_seconds: float = 300.0,
    lr: float = 1e-4,
    temperature: float = 1.0,
    seed: int = 0,
    layerwise: bool = False,
    refit_batches: int = 4,
    hidden: str = "last",
    warmup: int = 20,
    schedule: str = "constant",
    cache_teacher: bool = True,
    cache_bytes: int = 2**30,
) -> HealReport:
    """Train the TT cores of ``model`` to reproduce ``teacher``'s outputs on ``data``.

    Parameters
    ----------
    model : nn.Module
        The compressed model (holding :class:`TTLinear` layers); trained in place, left in
        eval mode.
    teacher : nn.Module
        The original model (not modified).
    data : tensor, mapping or list of them
        Training batches, as for ``compress_model``'s calibration (cycled).
    steps : int
        At most this many optimiser steps.
    max_seconds : float
        Stop after this much wall time (default 5 minutes).
    lr : float
        AdamW learning rate (after ``warmup`` linear warm-up steps).
    temperature : float
        Of the KL loss on logits.
    seed : int
        Seeds the batch order.
    layerwise : bool
        Refit every TT layer to the teacher's layer outputs first (module notes); its time
        counts against ``max_seconds``.
    refit_batches : int
        Batches of ``data`` the layer-wise refit uses (spread evenly over the list).
    hidden : {"last", "all"}
        Distil the model's output only, or every layer's hidden states too (module notes).
    warmup : int
        Linear warm-up steps of the learning rate.
    schedule : {"constant", "cosine"}
        After the warm-up: keep ``lr``, or decay it to 0 along a half cosine over the run,
        whose progress is the larger of ``step / steps`` and ``elapsed / max_seconds`` (so a
        run stopped by the clock still ends at a low rate).
    cache_teacher : bool
        Compute the teacher's outputs once per batch and keep them while they fit in
        ``cache_bytes`` (later batches are recomputed at every step).

    Returns
    -------
    HealReport

    Examples
    --------
    >>> from ttdecomp.compress import compress_model
    >>> torch.manual_seed(0) is not None
    True
    >>> teacher = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh())
    >>> x = torch.randn(64, 32)
    >>> student, _ = compress_model(teacher, budget=0.3)
    >>> rep = heal(student, teacher, [x[:32], x[32:]], steps=50, lr=1e-2)
    >>> rep.loss_last < rep.loss_first
    True
    >>> rep = heal(student, teacher, [x[:32], x[32:]], steps=20, lr=1e-2, layerwise=True)
    >>> rep.refit.stages
    1
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps must be a positive int, got {steps!r}.")
    if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise InvalidInputError(f"max_seconds must be a positive number, got {max_seconds!r}.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidInputError(f"lr must be a positive number, got {lr!r}.")
    if schedule not in ("constant", "cosine"):
        raise InvalidInputError(f"schedule must be 'constant' or 'cosine', got {schedule!r}.")
    if hidden not in ("last", "all"):
        raise InvalidInputError(f"hidden must be 'last' or 'all', got {hidden!r}.")
    for flag, value in (("refit_batches", refit_batches), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError(f"{flag} must be an int >= 0, got {value!r}.")
    batches = batches_of(data)
    cores = [p for m in model.modules() if isinstance(m, TTLinear) for p in m.cores]
    if not cores:
        raise InvalidInputError(
            "the model holds no TTLinear layer to heal; compress it first (compress_model)."
        )
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in cores:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(cores, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    teacher.eval()
    model.eval()  # dropout off: the student is fitted to the outputs it will give in use
    losses: list[float] = []
    start = time.perf_counter()
    device = cores[0].device
    done = False
    refit = None
    all_levels = hidden == "all"
    cache: dict[int, dict[str, Any]] = {}
    cached = 0
    progress = lr_now = 0.0
    try:
        if layerwise and refit_batches > 0:
            every = max(1, len(batches) // refit_batches)  # spread over the data
            refit = refit_layers(
                model, teacher, batches[::every][:refit_batches], max_seconds=max_seconds
            )
            done = time.perf_counter() - start >= max_seconds
        while not done:
            for i in torch.randperm(len(batches), generator=gen).tolist():
                batch = batches[i]
                if isinstance(batch, Mapping):
                    batch = {
                        k: v.to(device) if isinstance(v, torch.Tensor) else v
                        for k, v in batch.items()
                    }
                    mask = batch.get("attention_mask")
                else:
                    batch = torch.as_tensor(batch).to(device)
                    mask = None
                target = cache.get(i)
                if target is None:
                    with torch.no_grad():
                        target = _slim(_call(teacher, batch, all_levels), all_levels)
                    size = sum(
                        t.numel() * t.element_size()
                        for t in [target["out"], *(target["levels"] or [])]
                    )
                    if cache_teacher and cached + size <= cache_bytes:
                        cache[i], cached = target, cached + size
                out = _call(model, batch, all_levels)
                loss = _distill(out, target, mask, temperature)
                if all_levels:
                    for s_h, t_h in zip(_levels(out), target["levels"]):
                        loss = loss + _nmse(s_h, t_h, mask)
                if not torch.isfinite(loss):
                    raise InvalidInputError(
                        f"the healing loss became {float(loss.detach())} at step "
                        f"{len(losses)}; lower lr (now {lr})."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                lr_now = lr * _rate(len(losses), warmup, schedule, progress)
                for group in opt.param_groups:
                    group["lr"] = lr_now
                opt.step()
                losses.append(float(loss.detach()))
                progress = max(len(losses) / steps, (time.perf_counter() - start) / max_seconds)
                done = progress >= 1.0
                if done:
                    break
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
        model.eval()
    k = max(1, min(10, len(losses)))
    losses = losses or [float("nan")]
    return HealReport(
        steps=len(losses),
        seconds=time.perf_counter() - start,
        loss_first=sum(losses[:k]) / k,
        loss_last=sum(losses[-k:]) / k,
        trained_params=sum(p.numel() for p in cores),
        refit=refit,
        lr_last=lr_now,
    )
