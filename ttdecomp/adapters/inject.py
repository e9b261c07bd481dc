"""Injecting adapters into any ``nn.Module``, in place, and their state dicts.

:func:`inject_adapter_in_model` wraps every target layer (validated first, so an error leaves
the model unchanged) and adds one adapter; :func:`mark_only_adapters_as_trainable` freezes the
rest; :func:`get_adapter_state_dict` / :func:`set_adapter_state_dict` read and write one
adapter's tensors under keys without the adapter name. This is the functional layer under
:class:`~ttdecomp.adapters.TTAdapterModel` (:mod:`ttdecomp.adapters.model`) and what
:mod:`ttdecomp.adapters.serialization` loads into.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, ShapeError
from .config import TTAdapterConfig, TTLoRAConfig
from .layers import (
    LoRETTAAdpAdapter,
    LoRETTARepAdapter,
    ModulesToSaveWrapper,
    Packed,
    TTAdapterLayer,
    TTLoRAAdapter,
    adapter_dtype,
)
from .quantized import guard_4bit_backward, reference_weight, wrap_layer
from .routing import BASE_ADAPTER
from .targets import (
    TargetInfo,
    adapter_wrappers,
    inspect_targets,
    module_tree,
    select_modules_to_save,
)

__all__ = [
    "adapter_names_in",
    "build_adapter",
    "build_packed",
    "check_adapter_name",
    "get_adapter_state_dict",
    "inject_adapter_in_model",
    "mark_only_adapters_as_trainable",
    "set_adapter_state_dict",
    "set_submodule",
]


def check_adapter_name(adapter_name: Any) -> None:
    if not isinstance(adapter_name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", adapter_name):
        raise InvalidInputError(
            f"adapter_name must be a non-empty string of letters, digits, '_' and '-'; got "
            f"{adapter_name!r}. Dots would break parameter names and slashes folder names; use "
            "e.g. 'default' or 'task_a'."
        )
    if adapter_name == BASE_ADAPTER:
        raise InvalidInputError(
            f"adapter_name {BASE_ADAPTER!r} is reserved: in adapter_names= it routes a row to the "
            "base model with no adapter, so an adapter of that name could never be used. Pick "
            "another name, e.g. 'base' or 'default'."
        )


def build_adapter(
    config: TTAdapterConfig, info: TargetInfo, weight: torch.Tensor, *, init: str | None = "config"
) -> nn.Module:
    """The adapter module for one target.

    ``init`` overrides the config's; ``None`` leaves the parameters uninitialised (loading
    copies the values in next).
    """
    init = config.init if init == "config" else init
    kwargs = {"dtype": adapter_dtype(weight), "device": weight.device}
    mats = info.tt_matrices

    def shape(key: str) -> tuple:
        return (mats[key]["row_shape"], mats[key]["col_shape"])

    if isinstance(config, TTLoRAConfig):
        return TTLoRAAdapter(
            *shape("cores"),
            tt_rank=config.tt_rank,
            alpha=config.alpha,
            dropout=config.dropout,
            init=init,
            **kwargs,
        )
    if config.variant == "rep":
        return LoRETTARepAdapter(
            shape("a_cores"),
            shape("b_cores"),
            tensor_rank=config.tensor_rank,
            r=config.r,
            alpha=config.alpha,
            dropout=config.dropout,
            init=init,
            **kwargs,
        )
    return LoRETTAAdpAdapter(
        shape("down_cores"),
        shape("up_cores"),
        tensor_rank=config.tensor_rank,
        non_linearity=config.non_linearity,
        dropout=config.dropout,
        init=init,
        **kwargs,
    )


def build_packed(config: TTAdapterConfig, info: TargetInfo, weight: torch.Tensor) -> Packed | None:
    """A frozen TT-LoRA adapter for one target held packed, its values uninitialised.

    ``None`` for the methods that are not packed (LoRETTA): they load as modules. See
    :mod:`ttdecomp.adapters.packed`.
    """
    if not isinstance(config, TTLoRAConfig):
        return None
    mat = info.tt_matrices["cores"]
    spec = TTLoRAAdapter.packed_spec(
        mat["row_shape"],
        mat["col_shape"],
        tt_rank=config.tt_rank,
        alpha=config.alpha,
        dropout=config.dropout,
    )
    flat = torch.empty(spec.n_params, dtype=adapter_dtype(weight), device=weight.device)
    return Packed(spec, flat)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def has_adapter(
    model: nn.Module, adapter_name: str, modules: Mapping[str, nn.Module] | None = None
) -> bool:
    """Whether any layer of ``model`` holds an adapter named ``adapter_name``.

    ``modules``: the model's :func:`~ttdecomp.adapters.targets.module_tree`, if the caller
    has it.
    """
    for _, m in adapter_wrappers(model, modules):
        if isinstance(m, TTAdapterLayer) and adapter_name in m.tt_adapters:
            return True
        if isinstance(m, ModulesToSaveWrapper) and adapter_name in m.modules_to_save:
            return True
    return False


def adapter_names_in(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for _, m in adapter_wrappers(model):
        if isinstance(m, TTAdapterLayer):
            names |= set(m.tt_adapters)
        elif isinstance(m, ModulesToSaveWrapper):
            names |= set(m.modules_to_save)
    return names


def inject_adapter_in_model(
    config: TTAdapterConfig,
    model: nn.Module,
    adapter_name: str = "default",
    *,
    _init: str | None = "config",
    _activate: bool = True,
    _prebuilt: tuple[list[TargetInfo], dict[str, nn.Module | Packed]] | None = None,
    _modules: Mapping[str, nn.Module] | None = None,
) -> nn.Module:
    """Add adapter ``adapter_name`` described by ``config`` to ``model``, in place.

    Every target is validated first (see :func:`~ttdecomp.adapters.inspect_targets`); only then
    are layers wrapped, so an error leaves the model unchanged. Already wrapped layers get one
    more adapter. Afterwards only the new adapter's parameters (and its modules-to-save copies)
    require gradients, and it is the active adapter of the layers it touches.

    (Internal: ``_init`` overrides the config's init, ``None`` leaving the cores uninitialised
    for values copied in next; ``_activate=False`` adds the adapter frozen and inactive and
    leaves every other parameter as it was, which is what loading many adapters needs;
    ``_prebuilt`` is ``(targets, adapters by target)`` already validated, as loading makes;
    with ``_activate=False`` an adapter there may be :class:`~ttdecomp.adapters.packed.Packed`;
    ``_modules`` is the model's :func:`~ttdecomp.adapters.targets.module_tree`, if the caller
    has it.)

    Parameters
    ----------
    config : TTLoRAConfig or LoRETTAConfig
    model : nn.Module
    adapter_name : str

    Returns
    -------
    nn.Module
        ``model`` itself.

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import TTLoRAConfig
    >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())
    >>> net = inject_adapter_in_model(TTLoRAConfig(tt_rank=2, target_modules=["0"]), net)
    >>> type(net[0]).__name__, [n for n, p in net.named_parameters() if p.requires_grad]
    ('TTAdapterLayer', ['0.tt_adapters.default.cores.0', '0.tt_adapters.default.cores.1'])
    """
    check_adapter_name(adapter_name)
    tree = module_tree(model) if _modules is None else _modules
    if has_adapter(model, adapter_name, tree):
        raise InvalidInputError(
            f"the model already has an adapter named {adapter_name!r}; pick another name or "
            "delete_adapter() it first."
        )
    infos = inspect_targets(model, config, modules=tree) if _prebuilt is None else _prebuilt[0]
    saved = select_modules_to_save(model, config, modules=tree)
    init = config.init if _init == "config" else _init
    for info in infos:
        current = tree[info.name]
        layer = wrap_layer(current)  # quantized bases get their own wrapper (adapters.quantized)
        if _prebuilt is None:
            adapter = build_adapter(config, info, reference_weight(layer), init=init)
        else:
            adapter = _prebuilt[1][info.name]
        if isinstance(adapter, Packed):
            if _activate:
                raise InvalidInputError("a packed adapter is added frozen and inactive only")
            layer.add_packed(adapter_name, adapter)
        else:
            layer.add(adapter_name, adapter, activate=_activate)
            if _activate:
                layer.set_active([adapter_name])
            else:
                adapter.requires_grad_(False)
        if layer is not current:
            set_submodule(model, info.name, layer)
    for name in saved:
        current = tree[name]
        wrapper = (
            current if isinstance(current, ModulesToSaveWrapper) else ModulesToSaveWrapper(current)
        )
        wrapper.add(adapter_name, activate=_activate)
        if not _activate:
            wrapper.modules_to_save[adapter_name].requires_grad_(False)
        if wrapper is not current:
            set_submodule(model, name, wrapper)
    guard_4bit_backward(model)  # bitsandbytes' CPU inference kernel has no backward
    if _activate:
        mark_only_adapters_as_trainable(model, [adapter_name])
    return model


def mark_only_adapters_as_trainable(
    model: nn.Module, adapter_names: Sequence[str] | None = None
) -> None:
    """Freeze everything except the named adapters and their modules-to-save copies.

    ``adapter_names=None`` keeps every adapter in the model trainable.

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import (TTLoRAConfig, inject_adapter_in_model,
    ...                                mark_only_adapters_as_trainable)
    >>> net = inject_adapter_in_model(
    ...     TTLoRAConfig(target_modules=["0"]), torch.nn.Sequential(torch.nn.Linear(16, 16)))
    >>> mark_only_adapters_as_trainable(net)
    >>> any(p.requires_grad for p in net[0].base_layer.parameters())  # the base is frozen
    False
    >>> sum(p.numel() for p in net.parameters() if p.requires_grad) > 0
    True
    """
    names = set(adapter_names_in(model) if adapter_names is None else adapter_names)
    for p in model.parameters():
        p.requires_grad_(False)
    for _, m in adapter_wrappers(model):
        if isinstance(m, TTAdapterLayer):
            for n in names:  # packed adapters that are to train become modules
                if n in m.tt_adapters:
                    m.tt_adapters[n].requires_grad_(True)
        else:
            for n in names:
                if n in m.modules_to_save:
                    m.modules_to_save[n].requires_grad_(True)


def _adapter_tensors(model: nn.Module, adapter_name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` of one adapter; keys are ``<module name>.<parameter path>``."""
    for name, m in adapter_wrappers(model):
        if isinstance(m, TTAdapterLayer) and adapter_name in m.tt_adapters:
            for pname, p in m.tt_adapters.named_tensors(adapter_name):
                yield f"{name}.{pname}", p
        elif isinstance(m, ModulesToSaveWrapper) and adapter_name in m.modules_to_save:
            for pname, p in m.modules_to_save[adapter_name].named_parameters():
                yield f"{name}.{pname}", p
            for bname, b in m.modules_to_save[adapter_name].named_buffers():
                yield f"{name}.{bname}", b


def get_adapter_state_dict(
    model: nn.Module, adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """The tensors of one adapter (TT cores, adp biases, modules-to-save copies), detached.

    Keys are ``<module name>.<parameter path>`` without the adapter name, e.g.
    ``model.layers.0.self_attn.q_proj.cores.0`` or ``classifier.weight``, so a state dict moves
    between adapter names.

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import TTLoRAConfig
    >>> net = inject_adapter_in_model(TTLoRAConfig(target_modules=["0"]), torch.nn.Sequential(
    ...     torch.nn.Linear(16, 16)))
    >>> sorted(get_adapter_state_dict(net))
    ['0.cores.0', '0.cores.1']
    """
    if adapter_name not in adapter_names_in(model):
        raise InvalidInputError(
            f"no adapter named {adapter_name!r}; the model has {sorted(adapter_names_in(model))}."
        )
    return {k: v.detach() for k, v in _adapter_tensors(model, adapter_name)}


def set_adapter_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], adapter_name: str = "default"
) -> None:
    """Copy ``state_dict`` (keys as from :func:`get_adapter_state_dict`) into an adapter.

    Names, shapes and dtypes are all checked before anything is copied; a mismatch raises
    :class:`~ttdecomp.errors.ShapeError` / :class:`~ttdecomp.errors.InvalidInputError` and leaves
    the model as it was.

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import (TTLoRAConfig, get_adapter_state_dict, get_tt_model,
    ...                                set_adapter_state_dict)
    >>> def fresh():
    ...     return torch.nn.Sequential(torch.nn.Linear(16, 16))
    >>> config = TTLoRAConfig(target_modules=["0"])
    >>> a, b = get_tt_model(fresh(), config), get_tt_model(fresh(), config)
    >>> def same():
    ...     sa, sb = get_adapter_state_dict(a.base_model), get_adapter_state_dict(b.base_model)
    ...     return all(torch.equal(sa[k], sb[k]) for k in sa)
    >>> same()  # two random initialisations
    False
    >>> set_adapter_state_dict(b.base_model, get_adapter_state_dict(a.base_model))
    >>> same()
    True
    """
    own = dict(_adapter_tensors(model, adapter_name))
    if not own:
        raise InvalidInputError(
            f"no adapter named {adapter_name!r}; the model has {sorted(adapter_names_in(model))}."
        )
    merged = sorted(
        name
        for name, m in adapter_wrappers(model)
        if isinstance(m, TTAdapterLayer) and adapter_name in m.merged_adapters
    )
    if merged:
        raise InvalidInputError(
            f"adapter {adapter_name!r} is merged into {len(merged)} layer(s) ({merged[0]!r}, ...): "
            "new tensors would leave its old ΔW in the weights, and unmerging would then subtract "
            "the new one. Call unmerge_adapter() first, set the tensors, then merge again."
        )
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        raise InvalidInputError(
            f"adapter state dict does not fit adapter {adapter_name!r}: missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. Was it saved from a model "
            "with the same architecture and adapter config?"
        )
    for key, target in own.items():
        src = state_dict[key]
        if tuple(src.shape) != tuple(target.shape):
            raise ShapeError(
                f"tensor {key!r} has shape {tuple(src.shape)} but the adapter expects "
                f"{tuple(target.shape)}; the adapter was saved with different TT shapes or ranks."
            )
        if src.dtype != target.dtype:
            raise InvalidInputError(
                f"tensor {key!r} has dtype {src.dtype} but the adapter expects {target.dtype}; "
                "load into a base model of the dtype it was trained with, or cast the file."
            )
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state_dict[key])
