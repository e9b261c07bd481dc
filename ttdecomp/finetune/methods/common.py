"""What every method shares: applying one to a model, counting, saving and loading.

:func:`apply_method` freezes the model, asks the registered :class:`~.registry.Method` to
make it trainable and counts what it trains, split into the **adapter** (what the method
adds: TT cores, LoRA factors) and the **extras** every method shares or keeps beside it (the
classification head; LoRETTA's norm layers). The head is trained in every method and counted
apart, so "fraction of LoRA's" compares adapters with adapters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..._files import replace_folder
from ...errors import InvalidInputError
from .registry import Method, MethodSettings, default_settings, get_method, methods_for

__all__ = [
    "METHOD_FILE",
    "AdaptedModel",
    "apply_method",
    "dry_run",
    "guarded",
    "head_modules",
    "load_adapted",
    "resolve_settings",
    "save_adapted",
]

#: The file beside every saved adapter naming its method and settings.
METHOD_FILE = "ttdecomp_method.json"


def head_modules(model: nn.Module) -> list[str]:
    """Names of the classification head(s) of a Hugging Face model (``classifier``, ``score``).

    Examples
    --------
    >>> import torch
    >>> head_modules(torch.nn.Module())
    []
    """
    return [name for name in ("classifier", "score") if hasattr(model, name)]


@dataclass
class AdaptedModel:
    """A model made trainable by one method, with its parameter counts.

    Attributes
    ----------
    model : nn.Module
        What to train: a :class:`~ttdecomp.adapters.TTAdapterModel`, a ``peft.PeftModel`` or
        the base model with only its head trainable.
    settings : MethodSettings
    kind : str
        The method's :attr:`~.registry.Method.kind` (``"tt"``, ``"peft"``, ``"head"``).
    adapter_params : int
        Trainable parameters the method adds.
    extra_params : int
        Other trainable parameters (the head, LoRETTA's norms), counted apart.
    """

    model: nn.Module
    settings: MethodSettings
    kind: str
    adapter_params: int
    extra_params: int

    @property
    def method(self) -> Method:
        """The registered method that made it."""
        return get_method(self.settings.method)

    @property
    def trainer_class(self) -> type:
        """The method's ``Trainer`` class (``TTAdapterTrainer`` for TT adapters)."""
        return self.method.trainer_class()


def _task(task: Any) -> Any:
    """A task name or object → the task object (its ``trains_head`` and ``peft_task_type``)."""
    if not isinstance(task, str):
        return task
    from ..tasks.registry import get_task

    return get_task(task)


def guarded(model: nn.Module) -> nn.Module:
    """``model`` with its bitsandbytes 4-bit layers guarded, in place (a no-op without any).

    :func:`~ttdecomp.adapters.guard_4bit_backward`: bitsandbytes 0.50's CPU inference kernel
    has no backward, rounds the layer's block scales, and fails on some shapes; every method
    trains beside the guarded base, and the base is evaluated guarded.

    Examples
    --------
    >>> from torch import nn
    >>> layer = nn.Linear(2, 2)
    >>> guarded(layer) is layer
    True
    """
    from ...adapters.quantized import guard_4bit_backward

    guard_4bit_backward(model)
    return model


def apply_method(
    model: nn.Module,
    settings: MethodSettings,
    *,
    targets: Sequence[str],
    task: Any = "classification",
) -> AdaptedModel:
    """Make ``model`` trainable with ``settings.method`` (in place) and count what it trains.

    Parameters
    ----------
    model : nn.Module
        A freshly loaded Hugging Face model; its weights are frozen.
    settings : MethodSettings
    targets : sequence of str
        Module names (suffixes) the adapter wraps, e.g. ``["query", "value"]``; every entry
        must match a layer. LoRETTA-adp is placed after these layers.
    task : str or Task
        A registered task (:func:`~ttdecomp.finetune.tasks.task_names`): classification
        trains and saves the head in every method; a causal LM has no separate head.

    Returns
    -------
    AdaptedModel

    Examples
    --------
    >>> from ttdecomp.adapters.testing import tiny_model
    >>> from ttdecomp.finetune.methods import default_settings
    >>> adapted = apply_method(tiny_model("bert"), default_settings("tt-lora", rank=2),
    ...                        targets=["query", "value"])
    >>> adapted.kind, adapted.adapter_params > 0, adapted.extra_params > 0
    ('tt', True, True)
    """
    task = _task(task)
    method = get_method(settings.method)
    if not method.supports(task.name):
        raise InvalidInputError(
            f"{method.why_not(task.name)}; choose among {', '.join(methods_for(task.name))} "
            "(--methods)."
        )
    heads = head_modules(model) if task.trains_head else []
    if task.trains_head and not heads:
        raise InvalidInputError(
            f"{type(model).__name__} has no classification head ('classifier' or 'score'); "
            "load it with AutoModelForSequenceClassification."
        )
    for p in model.parameters():
        p.requires_grad_(False)
    model = method.apply(
        model, settings, targets=list(targets), heads=heads, peft_task_type=task.peft_task_type
    )
    guarded(model)  # every method on a 4-bit base, PEFT's LoRA too
    adapter = extra = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if method.is_adapter_parameter(name):
                adapter += p.numel()
            else:
                extra += p.numel()
    return AdaptedModel(model, settings, method.kind, adapter, extra)


def dry_run(
    model_config: Any,
    settings: Mapping[str, MethodSettings],
    *,
    targets: Sequence[str],
    task: Any = "classification",
) -> dict[str, dict[str, int]]:
    """Check every method's targets and shapes on a weightless copy of the model (no weights read).

    Each method is applied to a fresh ``meta``-device model built from ``model_config`` (the
    task's model class), so a target that matches nothing or a ``tt_shape`` that does not fit
    fails before any training, with the method named in the message. Returns each method's
    trainable parameters: ``{method: {"adapter": n, "extra": m}}`` (``extra``: the head and other
    trained modules).
    """
    import torch

    task = _task(task)
    auto = task.auto_model_class()
    counts = {}
    for method, method_settings in settings.items():
        with torch.device("meta"):
            skeleton = auto.from_config(model_config)
        try:
            adapted = apply_method(skeleton, method_settings, targets=targets, task=task)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{method}: {exc}") from None
        counts[method] = {"adapter": adapted.adapter_params, "extra": adapted.extra_params}
    return counts


#: the largest rank :func:`resolve_settings` tries before giving up
MAX_MATCHED_RANK = 256


def _adapter_count(model_config: Any, settings: MethodSettings, targets, task) -> int:
    return dry_run(model_config, {settings.method: settings}, targets=targets, task=task)[
        settings.method
    ]["adapter"]


def resolve_settings(
    model_config: Any,
    settings: Mapping[str, MethodSettings],
    *,
    targets: Sequence[str],
    task: Any = "classification",
    budget: Mapping[str, MethodSettings] | None = None,
) -> dict[str, MethodSettings]:
    """``settings`` with the rank of every matching method derived (no weights read).

    A method that declares ``matches`` (``lora-matched`` matches ``tt-lora``) gets the
    smallest rank whose adapter has at least as many parameters as the matched method's on
    the same targets: the matched method's settings in ``settings`` when it runs too, else in
    ``budget`` (:meth:`FinetuneConfig.budget_settings
    <ttdecomp.finetune.FinetuneConfig.budget_settings>`), else its recommended settings.
    Counting is :func:`dry_run`'s (a weightless copy of the model). Other methods' settings
    are returned as they are.

    Examples
    --------
    >>> from ttdecomp.adapters.testing import tiny_model
    >>> from ttdecomp.finetune.methods import default_settings
    >>> config = tiny_model("bert").config
    >>> settings = {m: default_settings(m) for m in ("tt-lora", "lora-matched")}
    >>> out = resolve_settings(config, settings, targets=["query", "value"])
    >>> counts = dry_run(config, out, targets=["query", "value"])
    >>> out["lora-matched"].rank, counts["tt-lora"]["adapter"], counts["lora-matched"]["adapter"]
    (4, 896, 1024)
    """
    task_name = _task(task).name
    out = dict(settings)
    for name, mine in settings.items():
        other = get_method(name).matches
        if other is None:
            continue
        theirs = settings.get(other) or (budget or {}).get(other)
        theirs = theirs or default_settings(other, task=task_name)
        budget = _adapter_count(model_config, theirs, targets, task)
        fields = mine.to_dict()
        fields.pop("method")
        counts: dict[int, int] = {}  # rank -> adapter parameters, each counted once

        def count(r: int, fields: dict = fields, name: str = name, counts: dict = counts) -> int:
            if r not in counts:
                settings_r = default_settings(name, **{**fields, "rank": r})
                counts[r] = _adapter_count(model_config, settings_r, targets, task)
            return counts[r]

        rank = max(1, -(-budget // count(1)))  # a rank-linear guess, then checked by counting
        while rank <= MAX_MATCHED_RANK and count(rank) < budget:
            rank += 1
        while rank > 1 and count(rank - 1) >= budget:
            rank -= 1
        if rank > MAX_MATCHED_RANK:
            raise InvalidInputError(
                f"{name}: no rank up to {MAX_MATCHED_RANK} reaches {other}'s {budget:,} adapter "
                f"parameters on {list(targets)}; run --methods {get_method(name).family_name} "
                "with a --rank of your choice instead."
            )
        out[name] = default_settings(name, **{**fields, "rank": rank})
    return out


def save_adapted(adapted: AdaptedModel, folder: str | Path) -> None:
    """Save what ``adapted`` trained into ``folder`` (replaced as a whole, atomically).

    The method's own format (TT adapters with
    :meth:`~ttdecomp.adapters.TTAdapterModel.save_pretrained`, LoRA in PEFT's format,
    ``head-only`` as ``head.safetensors``), the head included, and ``ttdecomp_method.json``
    naming the method and its settings. :func:`load_adapted` reads it back.
    """
    method = adapted.method

    def write(tmp: Path) -> None:
        method.save(adapted.model, tmp)
        (tmp / METHOD_FILE).write_text(json.dumps(adapted.settings.to_dict(), indent=2))

    replace_folder(Path(folder), write)


def load_adapted(model: nn.Module, folder: str | Path) -> nn.Module:
    """Put the adapter saved by :func:`save_adapted` in ``folder`` onto a fresh ``model``.

    Returns the model to predict with, in eval mode (a ``TTAdapterModel``, a ``PeftModel`` or
    ``model`` with its head replaced).
    """
    folder = Path(folder)
    meta = folder / METHOD_FILE
    if not meta.is_file():
        raise InvalidInputError(
            f"{folder} holds no {METHOD_FILE}; expected a folder written by "
            "ttdecomp finetune (runs/<method>-seed<k>/adapter)."
        )
    try:
        settings = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{meta} is not valid JSON ({exc}).") from None
    if not isinstance(settings, dict):
        raise InvalidInputError(f"{meta} must hold a JSON object naming the method.")
    out = get_method(settings.get("method")).load(model, folder)
    out.eval()
    return out
