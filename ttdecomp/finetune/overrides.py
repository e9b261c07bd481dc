"""Per-method options: one value for every method, or a value per method, resolved per method.

``rank``, ``alpha``, ``lr``, ``lr_schedule`` and ``warmup_ratio`` of
:class:`~ttdecomp.finetune.config.FinetuneConfig` take one value for every method that has the
setting or a mapping ``{method: value}`` (``--lr tt-lora=1e-2,lora=1e-3``). The functions here
turn them, with ``tt_shape``, into each method's validated
:class:`~ttdecomp.finetune.methods.MethodSettings` (the Method registry's recommended settings
with the overrides applied) and each run's learning-rate schedule. They read any object with
the attributes of :class:`MethodOptions`, a :class:`FinetuneConfig` among them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..errors import InvalidInputError, InvalidOptionError
from .methods import MethodSettings, default_settings, get_method, method_names

__all__ = [
    "MethodOptions",
    "budget_settings",
    "matched_methods",
    "method_settings",
    "per_method_value",
    "plain",
    "schedule_for",
    "settings_for",
]


class MethodOptions(Protocol):
    """What the per-method options are read from (the fields of ``FinetuneConfig``).

    A structural type: any object with these attributes will do.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> options = SimpleNamespace(
    ...     methods=["lora"], task="classification", rank=None, alpha=None, lr=2e-3,
    ...     tt_shape=None, lr_schedule="constant", warmup_ratio=0.0,
    ... )
    >>> method_settings(options)["lora"].lr
    0.002
    """

    methods: Sequence[str]
    task: str | None
    rank: Any
    alpha: Any
    lr: Any
    tt_shape: Sequence[int] | None
    lr_schedule: Any
    warmup_ratio: Any


def matched_methods(methods: Sequence[str]) -> list[str]:
    """Methods not in ``methods`` whose adapter size a method of ``methods`` derives its rank
    from (``lora-matched`` matches ``tt-lora``'s parameters).

    Examples
    --------
    >>> matched_methods(["lora-matched"])
    ['tt-lora']
    >>> matched_methods(["tt-lora", "lora-matched"])
    []
    """
    out = []
    for method in methods:
        other = get_method(method).matches
        if other is not None and other not in methods and other not in out:
            out.append(other)
    return out


def per_method_value(value: Any, method: str, name: str, methods: Sequence[str]) -> Any:
    """``method``'s value of option ``name``: ``value`` itself, or its entry for ``method`` when
    ``value`` is a per-method mapping (``None`` when it has none).

    A mapping may name only registered methods, and only ``methods`` (the methods run) or the
    methods their ranks are matched to (:func:`matched_methods`).

    Examples
    --------
    >>> per_method_value({"tt-lora": 5e-3}, "tt-lora", "lr", ["tt-lora", "lora"])
    0.005
    >>> per_method_value({"tt-lora": 5e-3}, "lora", "lr", ["tt-lora", "lora"]) is None
    True
    >>> per_method_value(1e-3, "lora", "lr", ["tt-lora", "lora"])
    0.001
    """
    if not isinstance(value, Mapping):
        return value
    known = method_names()
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise InvalidInputError(
            f"{name} names unknown methods {unknown}; expected some of {', '.join(known)}."
        )
    not_run = sorted(set(value) - set(methods) - set(matched_methods(methods)))
    if not_run:
        raise InvalidInputError(
            f"{name} is given for {not_run}, which are not among the methods run "
            f"({', '.join(methods)}); add them to --methods or drop the setting."
        )
    return value.get(method)


def settings_for(options: MethodOptions, method: str) -> MethodSettings:
    """The validated settings of ``method``: its recommended ones with ``options``' ``rank``,
    ``alpha``, ``lr`` and ``tt_shape`` applied where the method has the setting.

    Examples
    --------
    >>> from ttdecomp.finetune.config import FinetuneConfig
    >>> settings_for(FinetuneConfig(rank=6), "lora").rank
    6
    """
    base = default_settings(method, task=options.task)
    overrides: dict[str, Any] = {}
    matches = get_method(method).matches
    if matches is not None and isinstance(options.rank, Mapping) and method in options.rank:
        family = get_method(method).family_name
        raise InvalidOptionError(
            f"{method}'s rank is derived from {matches}'s adapter parameters (the "
            f"smallest rank with at least as many); got rank {options.rank[method]!r} for "
            f"it. For a rank of your choice run {family} instead (--methods {family} "
            f"--rank {family}=N).",
            option="rank",
        )
    for name in ("rank", "alpha", "lr"):
        if name == "rank" and matches is not None:
            continue  # derived when the model is known (resolve_settings)
        given = getattr(options, name)
        value = per_method_value(given, method, name, options.methods)
        if value is None:
            continue
        if getattr(base, name) is None and not isinstance(given, Mapping):
            continue  # one value for all: only the methods that have the setting
        overrides[name] = value
    if options.tt_shape is not None and get_method(method).takes_tt_shape:
        overrides["tt_shape"] = tuple(options.tt_shape)
    return default_settings(method, task=options.task, **overrides)


def method_settings(options: MethodOptions) -> dict[str, MethodSettings]:
    """The validated settings of every method run (:func:`settings_for` of each).

    Examples
    --------
    >>> from ttdecomp.finetune.config import FinetuneConfig
    >>> method_settings(FinetuneConfig(lr={"tt-lora": 1e-2}))["tt-lora"].lr
    0.01
    """
    out = {method: settings_for(options, method) for method in options.methods}
    if options.tt_shape is not None and not any(
        get_method(m).takes_tt_shape for m in [*options.methods, *matched_methods(options.methods)]
    ):
        raise InvalidInputError(
            "--tt-shape is a TT-LoRA setting, but tt-lora is not among the methods run."
        )
    return out


def budget_settings(options: MethodOptions) -> dict[str, MethodSettings]:
    """The settings of the methods a run method's rank is matched to, when they do not run
    themselves (:func:`matched_methods`), with their overrides applied.

    Examples
    --------
    >>> from ttdecomp.finetune.config import FinetuneConfig
    >>> budget_settings(FinetuneConfig(methods=["lora-matched"], rank={"tt-lora": 2}))
    {'tt-lora': MethodSettings(method='tt-lora', lr=0.01, rank=2, alpha=16.0, tt_shape=None)}
    """
    return {method: settings_for(options, method) for method in matched_methods(options.methods)}


def schedule_for(options: MethodOptions, method: str | None) -> dict[str, Any]:
    """``lr_schedule`` and ``warmup_ratio`` of ``method``'s runs: a per-method value is
    ``method``'s (``"constant"`` and ``0.0`` for a method it does not name, or for
    ``method=None``).

    Examples
    --------
    >>> from ttdecomp.finetune.config import FinetuneConfig
    >>> schedule_for(FinetuneConfig(lr_schedule={"tt-lora": "cosine"}), "lora")
    {'lr_schedule': 'constant', 'warmup_ratio': 0.0}
    """
    schedule: dict[str, Any] = {}
    for name, default in (("lr_schedule", "constant"), ("warmup_ratio", 0.0)):
        value = getattr(options, name)
        if isinstance(value, Mapping):
            value = (
                per_method_value(value, method, name, options.methods)
                if method is not None
                else None
            )
        schedule[name] = default if value is None else value
    return schedule


def plain(value: Any) -> Any:
    """A per-method mapping as a plain dict (JSON), other values as they are.

    Examples
    --------
    >>> from types import MappingProxyType
    >>> plain(MappingProxyType({"tt-lora": "cosine"})), plain("constant")
    ({'tt-lora': 'cosine'}, 'constant')
    """
    return dict(value) if isinstance(value, Mapping) else value
