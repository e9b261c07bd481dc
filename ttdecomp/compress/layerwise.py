"""Layer-wise healing: refit each TT layer, in forward order, to the original's outputs.

Compressing every layer on the original model's inputs (:mod:`~ttdecomp.compress.calibration`)
makes each layer as good as its ranks allow *on those inputs*, but the compressed model feeds
layer ``ℓ`` the outputs of the already-compressed layers before it, and the errors add up.
The layer-wise pass removes that mismatch: in the order the forward pass calls them, each
:class:`~ttdecomp.compress.TTLinear` of the student is refitted so that, on the inputs the
*student* gives it (``X_s``), it reproduces what the *teacher's* layer of the same name
returns on the teacher's own inputs (``Y = X_t Wᵀ + b``) for the same tokens::

    min over Ŵ (same TT shapes and ranks), b̂:   ‖X_s Ŵᵀ + b̂ − Y‖²_F + λ ‖Ŵ − W‖²_F.

The bias is free, so both sides are centred (``b̂ = ȳ − Ŵ x̄_s``). With the centred Grams
``C = X_sᵀX_s`` and ``K = X_sᵀX_t``, the objective equals ``‖(Ŵ − B) L‖²_F`` up to a
constant, where ``L Lᵀ = C + λI`` and ``B = (W Kᵀ + λ W)(C + λI)⁻¹`` is the ridge regression
(pulled towards the original weight where the data does not reach). That is the whitened
problem :func:`~ttdecomp.compress.decompose_whitened` solves (exactly when the input index
sits on one core, which covers the low-rank layers), with ``B`` in place of ``W``. A refit that
does not lower the layer's (undamped) output error is not applied.

The Grams need only forward passes: per stage (the layers that read the same input tensor,
e.g. q, k and v), both models run on every batch with forward pre-hooks, and stop as soon as
the stage's layers have been seen (unless a layer is called twice in one forward). Positions
where a batch's ``attention_mask`` is 0 are left out, as in the calibration.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from ..nn.kinds import dense_weight
from ..nn.linear import TTLinear
from ..tt_matrix import TTMatrix
from .calibration import batches_of, decompose_whitened

__all__ = ["LayerRefit", "RefitReport", "refit_layers"]


@dataclass
class LayerRefit:
    """One layer of :func:`refit_layers`: relative output errors ``‖Ŷ − Y‖ / ‖Y‖`` on the
    student's inputs before and after, and whether the refit was applied."""

    name: str
    error_before: float
    error_after: float
    applied: bool


@dataclass
class RefitReport:
    """What :func:`refit_layers` did: one :class:`LayerRefit` per layer, in forward order."""

    layers: list[LayerRefit] = field(default_factory=list)
    seconds: float = 0.0
    stages: int = 0


class _Stop(Exception):
    """Raised by a hook once a stage's inputs are collected: the rest of the forward is skipped."""


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return torch.as_tensor(batch).to(device)


def _call(model: nn.Module, batch: Any) -> Any:
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The token rows of a layer input, padding dropped, with a column of ones: ``(n, N + 1)``."""
    x = x.detach()
    if mask is not None and x.ndim == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        x = x[mask.to(x.device).bool()]
    rows = x.reshape(-1, x.shape[-1]).float()
    return torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)], 1)


def _stages(model: nn.Module, layers: dict[str, TTLinear], batch: Any) -> tuple[list, bool]:
    """The layers grouped by the input tensor they read, in call order; and whether every
    layer is called once per forward (so a stage's forward may stop early)."""
    order: list[tuple[str, torch.Tensor]] = []  # holding the inputs keeps their ids unique
    calls: dict[str, int] = {}

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                order.append((name, args[0]))

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            _call(model, batch)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in layers if n not in calls]
    if missing:
        raise InvalidInputError(
            f"the healing data never reached the layers {missing[:5]}; they are not used in "
            "the model's forward on these inputs."
        )
    stages: list[list[str]] = []
    last = None
    for name, key in order:
        if stages and key is last:
            stages[-1].append(name)
        else:
            stages.append([name])
        last = key
    return stages, all(c == 1 for c in calls.values())


def _collect(
    student: nn.Module,
    teacher: nn.Module,
    names: list[str],
    batches: list[Any],
    early_stop: bool,
) -> dict[str, dict[str, torch.Tensor]]:
    """Augmented Grams ``ZsᵀZs``, ``ZsᵀZt``, ``ZtᵀZt`` (``Z = [X, 1]``) of the stage's layers."""
    sums: dict[str, dict[str, torch.Tensor]] = {}
    device = next(student.parameters()).device
    for batch in batches:
        batch = _to(batch, device)
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        taken: dict[str, dict[str, torch.Tensor]] = {"s": {}, "t": {}}
        for side, model in (("s", student), ("t", teacher)):
            got, seen = taken[side], {}

            def hook_for(name: str, got: dict = got, seen: dict = seen, mask: Any = mask) -> Any:
                def hook(module: nn.Module, args: tuple) -> None:
                    if name not in got:  # layers reading one tensor share its rows
                        key = id(args[0])
                        if key not in seen:
                            seen[key] = (args[0], _rows(args[0], mask))
                        got[name] = seen[key][1]
                    if early_stop and len(got) == len(names):
                        raise _Stop

                return hook

            handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
            try:
                with torch.no_grad():
                    _call(model, batch)
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
        shared: dict[int, tuple] = {}
        for n in names:
            zs, zt = taken["s"][n], taken["t"][n]
            key = (id(zs), id(zt))
            if key not in shared:
                shared[key] = tuple(  # float32 products, float64 sums over batches
                    (a.T @ c).double().cpu() for a, c in ((zs, zs), (zs, zt), (zt, zt))
                )
            g = shared[key]
            acc = sums.setdefault(n, {})
            for k, v in zip(("ss", "st", "tt"), g):
                acc[k] = v if k not in acc else acc[k] + v
    return sums


def _error(w_hat: torch.Tensor, w: torch.Tensor, g: dict[str, torch.Tensor]) -> float:
    """``‖Zs Ŵaᵀ − Zt Waᵀ‖ / ‖Zt Waᵀ‖`` for augmented weights ``[W, b]``."""
    num = (
        torch.einsum("ij,jk,ik->", w_hat, g["ss"], w_hat)
        - 2 * torch.einsum("ij,jk,ik->", w_hat, g["st"], w)
        + torch.einsum("ij,jk,ik->", w, g["tt"], w)
    )
    den = float(torch.einsum("ij,jk,ik->", w, g["tt"], w))
    return (max(float(num), 0.0) / den) ** 0.5 if den > 0 else 0.0


def _refit(
    layer: TTLinear, original: nn.Module, g: dict[str, torch.Tensor], damping: float
) -> tuple[float, float, TTMatrix, torch.Tensor | None]:
    w = dense_weight(original).detach().double().cpu()  # (M, N)
    b0 = getattr(original, "bias", None)
    b = b0.detach().double().cpu() if b0 is not None else torch.zeros(w.shape[0]).double()
    wa = torch.cat([w, b[:, None]], 1)  # (M, N + 1)
    current = layer.to_ttmatrix().full().double().cpu()
    cb = layer.bias.detach().double().cpu() if layer.bias is not None else torch.zeros_like(b)
    before = _error(torch.cat([current, cb[:, None]], 1), wa, g)
    n_in = w.shape[1]
    count = float(g["ss"][n_in, n_in])
    xs, xt = g["ss"][:n_in, n_in] / count, g["st"][n_in, :n_in] / count  # means
    if layer.bias is not None:  # centre: the bias absorbs the means
        c = g["ss"][:n_in, :n_in] - count * torch.outer(xs, xs)
        k = g["st"][:n_in, :n_in] - count * torch.outer(xs, xt)
    else:
        c, k = g["ss"][:n_in, :n_in], g["st"][:n_in, :n_in]
    lam = damping * float(torch.trace(c)) / n_in
    eye = torch.eye(n_in, dtype=torch.float64)
    target = torch.linalg.solve(c + lam * eye, (k @ w.T + lam * w.T)).T  # B, (M, N)
    res = decompose_whitened(
        target, c, layer.row_shape, layer.col_shape, layer.ranks, damping=damping
    )
    w_hat = res.ttm.full().double()
    b_hat = (w @ xt + b - w_hat @ xs) if layer.bias is not None else None
    full = torch.cat([w_hat, (b_hat if b_hat is not None else torch.zeros_like(b))[:, None]], 1)
    return before, _error(full, wa, g), res.ttm, b_hat


def refit_layers(
    model: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    damping: float = 0.01,
    max_seconds: float | None = None,
) -> RefitReport:
    """Refit every :class:`TTLinear` of ``model`` to ``teacher``'s layer outputs (module notes).

    Parameters
    ----------
    model : nn.Module
        The compressed model; its TT cores and biases change in place (shapes and ranks
        stay), and only when a layer's output error drops.
    teacher : nn.Module
        The original model; each TT layer's name must name a linear layer in it.
    data : tensor, mapping or list of them
        Batches of inputs, as for ``compress_model``'s calibration.
    damping : float
        Relative ridge ``λ = damping · tr(C) / N`` towards the original weight.
    max_seconds : float, optional
        Stop after the stage running when this much wall time has passed.

    Returns
    -------
    RefitReport

    Examples
    --------
    >>> from ttdecomp.compress import compress_model
    >>> torch.manual_seed(0) is not None
    True
    >>> teacher = torch.nn.Sequential(
    ...     torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 32))
    >>> x = torch.randn(256, 32)
    >>> student, _ = compress_model(teacher, budget=0.3, calibration=x)
    >>> rep = refit_layers(student, teacher, x)
    >>> [r.name for r in rep.layers], rep.layers[1].error_after < rep.layers[1].error_before
    (['0', '2'], True)
    """
    start = time.perf_counter()
    batches = batches_of(data)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, TTLinear)}
    if not layers:
        raise InvalidInputError(
            "the model holds no TTLinear layer to refit; compress it first (compress_model)."
        )
    originals = {}
    for name in layers:
        try:
            originals[name] = teacher.get_submodule(name)
        except AttributeError:
            raise InvalidInputError(
                f"the teacher has no layer {name!r}; give the model that was compressed."
            ) from None
        dense_weight(originals[name])  # a linear layer, or a clear error
    device = next(model.parameters()).device
    was = (model.training, teacher.training)
    model.eval()
    teacher.eval()
    report = RefitReport()
    try:
        stages, early = _stages(model, layers, _to(batches[0], device))
        for names in stages:
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                break
            grams = _collect(model, teacher, names, batches, early)
            for name in names:
                before, after, ttm, b_hat = _refit(
                    layers[name], originals[name], grams[name], damping
                )
                applied = after < before
                if applied:
                    layers[name].assign(ttm, b_hat)
                report.layers.append(LayerRefit(name, before, min(after, before), applied))
            report.stages += 1
    finally:
        model.train(was[0])
        teacher.train(was[1])
    report.seconds = time.perf_counter() - start
    return report
