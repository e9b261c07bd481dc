"""Choosing the modules to adapt, and the TT shapes and ranks each one gets.

Everything here is a dry run: it reads the model and the config and mutates nothing, so every
error (a pattern that matches nothing, a module of the wrong kind, a shape that does not fit)
is raised before any layer is replaced. :func:`inspect_targets` exposes it to users.

Matching rules (as PEFT's, but strict): a list entry matches a module whose name equals it, ends
with ``"." + entry``, or fully matches it as a regular expression; a plain string is a regular
expression against full module names; ``"all-linear"`` is every ``nn.Linear`` / ``Conv1D`` except
the output head, quantized linears included (:mod:`ttdecomp.adapters.quantized`; a quantized kind
that is not supported is an error naming it, never skipped).
**Every list entry, exclusion, per-module shape key and layer index must select
at least one module**, otherwise :class:`~ttdecomp.adapters.TargetModulesError` is raised.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..counts import tt_matrix_n_params
from ..errors import RankClippedWarning, ShapeError, TTWarning
from ..nn.kinds import in_out_features, is_conv1d, is_linear
from ..nn.quantized import unsupported_quantized
from ..nn.selection import entry_matches, match_modules, select_modules
from ..shapes import tensorize
from .config import LoRETTAConfig, TargetModulesError, TTAdapterConfig, TTLoRAConfig
from .config_checks import resolve_shape_spec
from .layers import ModulesToSaveWrapper, TTAdapterLayer, adapter_ranks

__all__ = [
    "TargetInfo",
    "adapter_wrappers",
    "inspect_targets",
    "logical_modules",
    "module_tree",
    "select_modules_to_save",
]

_HEAD_NAMES = ("classifier", "score")


@dataclass(frozen=True)
class TargetInfo:
    """One module an adapter will be attached to, with its TT shapes and parameter count.

    Attributes
    ----------
    name : str
        Full module name in the model.
    module_type : str
        ``"Linear"`` or ``"Conv1D"``.
    out_features, in_features : int
        The layer's output and input sizes.
    tt_matrices : dict
        For every TT-matrix of the adapter (``"cores"`` for TT-LoRA; ``"a_cores"``,
        ``"b_cores"`` for LoRETTA-rep; ``"down_cores"``, ``"up_cores"`` for LoRETTA-adp):
        ``{"row_shape": ..., "col_shape": ..., "ranks": ...}``.
    n_params : int
        Trainable parameters of the adapter on this module (cores plus adp biases).

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import TTLoRAConfig, inspect_targets
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    >>> info = inspect_targets(net, TTLoRAConfig(tt_rank=4, target_modules=["0"]))[0]
    >>> info.name, info.out_features, info.in_features, info.n_params > 0
    ('0', 64, 64, True)
    """

    name: str
    module_type: str
    out_features: int
    in_features: int
    tt_matrices: dict[str, dict[str, tuple[int, ...]]]
    n_params: int


def module_tree(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` in ``named_modules`` order, the wrappers standing for themselves and
    not entered.

    One walk of the model that :func:`logical_modules`, :func:`adapter_wrappers`,
    :func:`inspect_targets` and :func:`select_modules_to_save` accept as ``modules=`` so that
    a caller doing all of them (loading an adapter) walks the model once. Its cost does not
    grow with the number of adapters loaded (``named_modules`` would visit every adapter).
    """
    tree: dict[str, nn.Module] = {}
    _walk_below("", model, {id(model)}, tree)
    return tree


def logical_modules(
    model: nn.Module, modules: Mapping[str, nn.Module] | None = None
) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` pairs as the user sees them: wrappers stand for what they wrap.

    A :class:`TTAdapterLayer` yields its ``base_layer`` and a :class:`ModulesToSaveWrapper` its
    ``original_module`` under the wrapper's name; their internals are not yielded.
    ``modules``: the model's :func:`module_tree`, if the caller has it.
    """
    tree = module_tree(model) if modules is None else modules
    for name, module in tree.items():
        if isinstance(module, TTAdapterLayer):
            yield name, module.base_layer
        elif isinstance(module, ModulesToSaveWrapper):
            yield name, module.original_module
        else:
            yield name, module


def adapter_wrappers(
    model: nn.Module, modules: Mapping[str, nn.Module] | None = None
) -> Iterator[tuple[str, nn.Module]]:
    """``(name, wrapper)`` of every :class:`TTAdapterLayer` and :class:`ModulesToSaveWrapper`.

    Like filtering ``named_modules``, but without visiting the adapters inside the wrappers,
    so it costs the same with one adapter loaded or a thousand. ``modules``: as in
    :func:`logical_modules`.
    """
    tree = module_tree(model) if modules is None else modules
    for name, module in tree.items():
        if isinstance(module, (TTAdapterLayer, ModulesToSaveWrapper)):
            yield name, module


def _walk_below(prefix: str, parent: nn.Module, seen: set[int], out: dict) -> None:
    """Depth first in registration order, each module once, as ``named_modules``, into
    ``out``; wrappers are entered as themselves and not walked into."""
    for child_name, module in parent._modules.items():
        if module is None or id(module) in seen:
            continue
        seen.add(id(module))
        name = prefix + child_name
        out[name] = module
        if not isinstance(module, (TTAdapterLayer, ModulesToSaveWrapper)):
            _walk_below(name + ".", module, seen, out)


@functools.lru_cache(maxsize=256)
def _tensorize(out_f: int, in_f: int, n_cores: int | None, layout: str) -> tuple:
    """:func:`~ttdecomp.shapes.tensorize`, memoised: a pure function of its arguments, called
    for every target of every adapter loaded."""
    return tensorize(out_f, in_f, n_cores=n_cores, layout=layout)


@functools.lru_cache(maxsize=1024)
def _n_params(row_shape: tuple, col_shape: tuple, ranks: tuple) -> int:
    """:func:`~ttdecomp.counts.tt_matrix_n_params`, memoised (pure, validates its input)."""
    return tt_matrix_n_params(row_shape, col_shape, ranks)


def _layer_index(name: str, layers_pattern: str | Sequence[str] | None) -> int | None:
    if layers_pattern is None:
        m = re.search(r"(?:^|\.)(\d+)(?:\.|$)", name)
        return int(m.group(1)) if m else None
    pats = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern)
    for p in pats:
        m = re.search(rf"(?:^|\.){re.escape(p)}\.(\d+)(?:\.|$)", name)
        if m:
            return int(m.group(1))
    return None


def select_modules_to_save(
    model: nn.Module, config: TTAdapterConfig, *, modules: Mapping[str, nn.Module] | None = None
) -> list[str]:
    """Names of the modules trained in full and saved with the adapter.

    These are ``config.modules_to_save`` (each entry must match) plus, for LoRETTA, every
    LayerNorm/RMSNorm (``train_norms``) and the ``classifier`` / ``score`` head (``train_head``).
    Nested matches are reduced to the outermost module. ``modules``: the model's
    :func:`module_tree`, if the caller has it.
    """
    loretta = isinstance(config, LoRETTAConfig) and (config.train_norms or config.train_head)
    if not config.modules_to_save and not loretta:
        return []
    modules = dict(logical_modules(model, modules))
    names = list(modules)
    chosen: set[str] = set()
    if config.modules_to_save:
        chosen |= match_modules(config.modules_to_save, names, "modules_to_save")
    if isinstance(config, LoRETTAConfig):
        if config.train_norms:
            chosen |= {n for n, m in modules.items() if _is_norm(m)}
        if config.train_head:
            chosen |= {n for n in names if n.rsplit(".", 1)[-1] in _HEAD_NAMES}
    outer = sorted(chosen, key=len)
    kept: list[str] = []
    for n in outer:
        if not any(n.startswith(k + ".") for k in kept):
            kept.append(n)
    return sorted(kept)


def _is_norm(module: nn.Module) -> bool:
    cls = type(module).__name__
    has_weight = isinstance(getattr(module, "weight", None), nn.Parameter)
    return has_weight and (isinstance(module, nn.LayerNorm) or cls.endswith(("Norm", "RMSNorm")))


def _is_linear_or_quantized(module: nn.Module) -> bool:
    return is_linear(module) or unsupported_quantized(module) is not None


def _select_targets(
    model: nn.Module, config: TTAdapterConfig, tree: Mapping[str, nn.Module]
) -> list[tuple[str, nn.Module]]:
    modules = dict(logical_modules(model, tree))
    names = list(modules)
    saved = select_modules_to_save(model, config, modules=tree)

    def inside_saved(n: str) -> bool:
        return any(n == s or n.startswith(s + ".") for s in saved)

    targets = config.target_modules
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        targets = list(config.default_targets(model_type))
    chosen = set(
        select_modules(
            model,
            targets,
            exclude_modules=config.exclude_modules,
            modules=modules,
            # quantized layers of unsupported kinds are selected to be named in the error below
            kind=_is_linear_or_quantized,
            kind_name="nn.Linear or transformers Conv1D (what TT adapters wrap)",
        )
    )
    quantized = sorted(n for n in chosen if unsupported_quantized(modules[n]))
    if quantized:
        raise TargetModulesError(
            f"target_modules={targets!r} selects {quantized[:5]}: "
            f"{unsupported_quantized(modules[quantized[0]])}"
        )
    chosen = {n for n in chosen if not inside_saved(n)}
    if config.layers_to_transform is not None:
        index = {n: _layer_index(n, config.layers_pattern) for n in chosen}
        missing = sorted(set(config.layers_to_transform) - set(index.values()))
        if missing:
            found = sorted({i for i in index.values() if i is not None})
            raise TargetModulesError(
                f"layers_to_transform has indices {missing} that no targeted module is in "
                f"(layer indices found: {found}, layers_pattern={config.layers_pattern!r})."
            )
        chosen = {n for n in chosen if index[n] in set(config.layers_to_transform)}
    if not chosen:
        raise TargetModulesError(
            f"After exclude_modules / layers_to_transform / modules_to_save, no module is left to "
            f"adapt (target_modules={targets!r}). Loosen the exclusions."
        )
    return [(n, modules[n]) for n in names if n in chosen]


def _features(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)``."""
    n_in, n_out = in_out_features(module)
    return n_out, n_in


def _interleaved(rows: int, cols: int, n_cores: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    try:
        return tensorize(rows, cols, n_cores=n_cores, layout="interleaved")
    except ShapeError as exc:
        raise ShapeError(
            f"cannot factor a {rows} x {cols} TT-matrix into {n_cores} cores: {exc} Change "
            "n_cores (or r / bottleneck_size), or exclude this module."
        ) from None


def _matrix_info(
    row_shape: Sequence[int], col_shape: Sequence[int], rank: int, what: str
) -> dict[str, tuple[int, ...]]:
    """Shapes and ranks of one TT-matrix; ranks above what a bond can carry are clipped."""
    d = len(row_shape)
    ranks = adapter_ranks(row_shape, col_shape, rank)
    if ranks != (1,) + (int(rank),) * (d - 1) + (1,):
        warnings.warn(
            f"{what}={rank} exceeds what the TT-matrix {list(row_shape)} x {list(col_shape)} "
            f"can carry on some bonds; ranks clipped per bond to {list(ranks)} (larger ranks add "
            "parameters and nothing else).",
            RankClippedWarning,
            stacklevel=5,
        )
    return {"row_shape": tuple(row_shape), "col_shape": tuple(col_shape), "ranks": ranks}


def _ttlora_shape(
    config: TTLoRAConfig, name: str, out_f: int, in_f: int, used_keys: set[str]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    spec: Any = config.tt_shape
    if isinstance(spec, Mapping):
        keys = [k for k in spec if entry_matches(k, name)]
        if len(keys) > 1:
            raise TargetModulesError(
                f"module {name!r} matches several tt_shape keys {keys}; make the keys specific "
                "enough that each module matches at most one."
            )
        spec = spec[keys[0]] if keys else None
        used_keys.update(keys)
    if spec is None:
        return _tensorize(out_f, in_f, config.n_cores, config.layout)
    return resolve_shape_spec(spec, out_f, in_f)


def inspect_targets(
    model: nn.Module, config: TTAdapterConfig, *, modules: Mapping[str, nn.Module] | None = None
) -> list[TargetInfo]:
    """Dry run: the modules ``config`` would adapt, with shapes, TT shapes and parameter counts.

    Nothing in ``model`` changes. Raises the same errors injection would, so it is also a
    validator.

    Parameters
    ----------
    model : nn.Module
        Usually a Hugging Face ``PreTrainedModel`` (``model.config.model_type`` picks default
        targets when ``config.target_modules`` is None).
    config : TTLoRAConfig or LoRETTAConfig
    modules : dict, optional
        The model's :func:`module_tree`, if the caller has it (saves walking the model).

    Returns
    -------
    list of TargetInfo

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import TTLoRAConfig
    >>> net = torch.nn.Sequential(torch.nn.Linear(768, 768), torch.nn.ReLU())
    >>> cfg = TTLoRAConfig(tt_rank=4, tt_shape=[64, 4, 3, 3, 4, 64], target_modules=["0"])
    >>> info = inspect_targets(net, cfg)[0]
    >>> info.name, info.tt_matrices["cores"]["col_shape"], info.n_params
    ('0', (64, 4, 3, 1, 1, 1), 736)
    """
    if not isinstance(config, TTAdapterConfig):
        raise TypeError(
            f"config must be a TTLoRAConfig or LoRETTAConfig; got {type(config).__name__}. "
            "PEFT configs are not accepted: build the ttdecomp equivalent."
        )
    tree = module_tree(model) if modules is None else modules
    selected = _select_targets(model, config, tree)
    used_keys: set[str] = set()
    out: list[TargetInfo] = []
    for name, module in selected:
        out_f, in_f = _features(module)
        try:
            mats, extra = _adapter_matrices(config, name, out_f, in_f, used_keys)
        except ShapeError as exc:
            raise ShapeError(f"module {name!r} ({out_f} x {in_f}): {exc}") from None
        out.append(
            TargetInfo(
                name=name,
                module_type="Conv1D" if is_conv1d(module) else "Linear",
                out_features=out_f,
                in_features=in_f,
                tt_matrices=mats,
                n_params=sum(
                    _n_params(i["row_shape"], i["col_shape"], i["ranks"]) for i in mats.values()
                )
                + extra,
            )
        )
    for info in out:
        dense = info.out_features * info.in_features
        is_update = isinstance(config, TTLoRAConfig) or config.variant == "rep"
        if is_update and info.n_params > dense:
            warnings.warn(
                f"module {info.name!r}: the adapter has {info.n_params:,} parameters, more "
                f"than the dense {info.out_features} x {info.in_features} update ({dense:,}) it "
                "stands for; lower the rank (a TT adapter this large saves nothing).",
                TTWarning,
                stacklevel=2,
            )
    if isinstance(config, TTLoRAConfig) and isinstance(config.tt_shape, Mapping):
        unused = sorted(set(config.tt_shape) - used_keys)
        if unused:
            raise TargetModulesError(
                f"tt_shape keys {unused} match none of the targeted modules "
                f"{[t.name for t in out][:6]}...; fix or remove them."
            )
    return out


def _adapter_matrices(
    config: TTAdapterConfig, name: str, out_f: int, in_f: int, used_keys: set[str]
) -> tuple[dict[str, dict[str, tuple[int, ...]]], int]:
    """The TT-matrices of one adapter, and its count of non-core parameters (adp biases)."""
    if isinstance(config, TTLoRAConfig):
        rows, cols = _ttlora_shape(config, name, out_f, in_f, used_keys)
        return {"cores": _matrix_info(rows, cols, config.tt_rank, f"{name}: tt_rank")}, 0
    if config.variant == "rep":
        a = _interleaved(config.r, in_f, config.n_cores)
        b = _interleaved(out_f, config.r, config.n_cores)
        return {
            "a_cores": _matrix_info(*a, config.tensor_rank, f"{name} (A): tensor_rank"),
            "b_cores": _matrix_info(*b, config.tensor_rank, f"{name} (B): tensor_rank"),
        }, 0
    size = config.bottleneck_size
    down = _interleaved(size, out_f, config.n_cores)
    up = _interleaved(out_f, size, config.n_cores)
    return {
        "down_cores": _matrix_info(*down, config.tensor_rank, f"{name} (down): tensor_rank"),
        "up_cores": _matrix_info(*up, config.tensor_rank, f"{name} (up): tensor_rank"),
    }, size + out_f
