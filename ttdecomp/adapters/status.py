"""Which layers hold which adapters: ``get_model_status()`` / ``get_layer_status()`` as in PEFT.

:func:`layer_status` reports every adapter layer (its adapters, the active and merged ones,
whether each adapter's parameters require gradients, their devices); :func:`model_status`
folds them into one summary, where a property that differs between layers reads
``"irregular"`` (PEFT's word), e.g. when one layer was merged by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

__all__ = ["TTLayerStatus", "TTModelStatus", "layer_status", "model_status"]

Irregular = Literal["irregular"]


@dataclass
class TTLayerStatus:
    """One adapter layer (PEFT's ``TunerLayerStatus``).

    Attributes
    ----------
    name : str
        The module's name in the base model.
    module_type : str
        ``"TTAdapterLayer"`` with the wrapped layer's class, e.g.
        ``"TTAdapterLayer(Linear)"``.
    enabled : bool
        False inside ``disable_adapter()``.
    active_adapters, merged_adapters, available_adapters : list of str
    requires_grad : dict of str to bool or "irregular"
        Per adapter: whether its parameters train ("irregular" if only some do).
    devices : dict of str to list of str
        Per adapter: the devices its parameters are on.
    """

    name: str
    module_type: str
    enabled: bool
    active_adapters: list[str]
    merged_adapters: list[str]
    requires_grad: dict[str, bool | Irregular]
    available_adapters: list[str]
    devices: dict[str, list[str]]


@dataclass
class TTModelStatus:
    """The whole model (PEFT's ``TunerModelStatus``); ``"irregular"`` where layers differ.

    Attributes
    ----------
    base_model_type : str
        The base model's class name.
    adapter_model_type : str
        ``"TTAdapterModel"``.
    methods : dict of str to str
        Per adapter, its method (``"tt-lora"``, ``"loretta"``; PEFT's ``peft_types``).
    trainable_params, total_params : int
    num_adapter_layers : int
    enabled : bool or "irregular"
    active_adapters, merged_adapters : list of str or "irregular"
    requires_grad : dict of str to bool or "irregular"
    available_adapters : list of str
    devices : dict of str to list of str
    """

    base_model_type: str
    adapter_model_type: str
    methods: dict[str, str]
    trainable_params: int
    total_params: int
    num_adapter_layers: int
    enabled: bool | Irregular
    active_adapters: list[str] | Irregular
    merged_adapters: list[str] | Irregular
    requires_grad: dict[str, bool | Irregular]
    available_adapters: list[str]
    devices: dict[str, list[str]] = field(default_factory=dict)


def _all_or_irregular(values: Iterable[bool]) -> bool | Irregular:
    values = set(values)
    return values.pop() if len(values) == 1 else "irregular"


def layer_status(model: nn.Module, layer_type: type) -> list[TTLayerStatus]:
    """The status of every ``layer_type`` (adapter layer) in ``model``, in module order."""
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, layer_type):
            continue
        ads = m.tt_adapters  # packed adapters are reported without building their modules
        grads = {n: _all_or_irregular(p.requires_grad for p in ads.parameters_of(n)) for n in ads}
        devices = {n: sorted({str(p.device) for p in ads.parameters_of(n)}) for n in ads}
        out.append(
            TTLayerStatus(
                name=name,
                module_type=f"{type(m).__name__}({type(m.base_layer).__name__})",
                enabled=not m.disable_adapters,
                active_adapters=list(m.active_adapters),
                merged_adapters=list(m.merged_adapters),
                requires_grad=grads,
                available_adapters=sorted(m.tt_adapters),
                devices=devices,
            )
        )
    return out


def _same_list(lists: list[list[str]]) -> list[str] | Irregular:
    if not lists:
        return []
    first = sorted(lists[0])
    return first if all(sorted(x) == first for x in lists) else "irregular"


def model_status(model: Any, layers: list[TTLayerStatus], methods: dict[str, str]) -> TTModelStatus:
    """Fold the layer statuses of ``model`` (a TTAdapterModel) into one summary."""
    trainable, total = model.get_nb_trainable_parameters()
    grads: dict[str, set] = {}
    devices: dict[str, set[str]] = {}
    for st in layers:
        for n, g in st.requires_grad.items():
            grads.setdefault(n, set()).add(g)
        for n, d in st.devices.items():
            devices.setdefault(n, set()).update(d)
    return TTModelStatus(
        base_model_type=type(model.base_model).__name__,
        adapter_model_type=type(model).__name__,
        methods=dict(methods),
        trainable_params=trainable,
        total_params=total,
        num_adapter_layers=len(layers),
        enabled=_all_or_irregular(st.enabled for st in layers) if layers else False,
        active_adapters=_same_list([st.active_adapters for st in layers]),
        merged_adapters=_same_list([st.merged_adapters for st in layers]),
        requires_grad={n: g.pop() if len(g) == 1 else "irregular" for n, g in grads.items()},
        available_adapters=sorted(methods),
        devices={n: sorted(d) for n, d in devices.items()},
    )
