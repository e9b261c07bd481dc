"""Frozen adapters kept packed: one flat parameter per adapter and layer, no modules.

A TT-LoRA adapter r=4 on a 384-wide layer has about 1.8 KB of cores, but as a module it costs
about 11 KB of resident memory (measured: an ``nn.Module`` 2.1 KB, every small parameter about
0.8 KB, and an adapter is two modules and six cores), so a thousand adapters loaded to serve a
few at a time would take six times their parameter bytes. :class:`AdapterDict`, the
``tt_adapters`` of every adapter layer, therefore holds two kinds of entries:

* modules (what :meth:`~ttdecomp.adapters.TTAdapterModel.add_adapter` and training use);
* *packed* adapters: frozen TT-LoRA adapters loaded inactive
  (:meth:`~ttdecomp.adapters.TTAdapterModel.load_adapter`), whose cores are one flat frozen
  parameter registered on the dict under the adapter's name (so ``.to()``, dtype casts,
  ``parameters()`` and parameter counts see it) with a :class:`PackedSpec` of shapes and scale
  shared by every adapter of that shape (about 2.4 KB per adapter and layer in all).

How each operation treats a packed adapter:

* ``name in d``, ``len(d)``, iteration (modules first, then packed adapters), ``del d[name]``
  and :meth:`AdapterDict.named_tensors` work on both kinds and change neither;
* :meth:`AdapterDict.servable` returns a light runner over views of the flat parameter: a
  mixed batch serving 100 of 1,000 packed adapters builds no module;
* ``d[name]``, ``items()`` and ``values()`` *promote* it: its module is built (frozen, in the
  dict's train/eval mode) with the same values and replaces it for good. Activating an adapter
  (``set_adapter``) promotes it, so training, merging and exports see ordinary modules;
* state dicts: a packed adapter is written and read under the keys its module has
  (``<name>.cores.<k>``), so ``model.state_dict()`` and the saved files are unchanged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.fast import TTForwardCache, split_bond, split_halves

__all__ = ["AdapterDict", "Packed", "PackedRunner", "PackedSpec", "packed_spec"]


class PackedSpec(NamedTuple):
    """What a packed adapter needs besides its values: shapes, scale, how to build its module.

    ``factory(row_shape, col_shape, tt_rank=, alpha=, dropout=, init=None, dtype=, device=)``
    builds the module whose cores, flattened in order, are the flat parameter.
    """

    factory: Any
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    tt_rank: int
    alpha: float
    dropout: float
    core_shapes: tuple[tuple[int, ...], ...]
    n_params: int
    #: The bond between input and output cores of a split layout (``m_k = 1`` before it,
    #: ``n_k = 1`` after), or None (see :func:`~ttdecomp.nn.fast.split_bond`).
    split: int | None


class Packed(NamedTuple):
    """A packed adapter: its spec and its flat parameter (``spec.n_params`` values)."""

    spec: PackedSpec
    flat: torch.Tensor


@functools.lru_cache(maxsize=1024)
def packed_spec(
    factory: Any,
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
    tt_rank: int,
    alpha: float,
    dropout: float,
    ranks: tuple[int, ...],
) -> PackedSpec:
    """The one :class:`PackedSpec` for these arguments (interned: a thousand adapters of one
    shape share it). ``ranks`` are the TT ranks ``[1, r_1, ..., 1]`` of the cores.

    Examples
    --------
    >>> s = packed_spec(None, (1, 4), (8, 1), 2, 1.0, 0.0, (1, 2, 1))
    >>> s.core_shapes, s.n_params, s is packed_spec(None, (1, 4), (8, 1), 2, 1.0, 0.0, (1, 2, 1))
    (((1, 1, 8, 2), (2, 4, 1, 1)), 24, True)
    """
    shapes = tuple(
        (int(ranks[k]), int(m), int(n), int(ranks[k + 1]))
        for k, (m, n) in enumerate(zip(row_shape, col_shape))
    )
    split = split_bond([torch.empty(s, device="meta") for s in shapes])
    return PackedSpec(
        factory,
        tuple(row_shape),
        tuple(col_shape),
        int(tt_rank),
        float(alpha),
        float(dropout),
        shapes,
        sum(math.prod(s) for s in shapes),
        split,
    )


def core_views(spec: PackedSpec, flat: torch.Tensor) -> list[torch.Tensor]:
    """The cores of a packed adapter as views of ``flat`` (writing into them writes it)."""
    sizes = [math.prod(shape) for shape in spec.core_shapes]
    return [part.view(shape) for part, shape in zip(flat.split(sizes), spec.core_shapes)]


class PackedRunner:
    """A packed TT-LoRA adapter as :func:`~ttdecomp.adapters.routing.route_rows` runs it.

    Called like the adapter module: ``alpha · dropout(x) ΔWᵀ``. In inference a split layout is
    two GEMMs on the halves ``A`` (N × r) and ``B`` (r × M) merged for the call (what LoRA of
    rank r costs, plus forming the halves: a few GEMMs of r-sized blocks); anything else
    (gradients, autocast, another layout, an input that does not fit) goes through a
    :class:`~ttdecomp.nn.fast.TTForwardCache` of its own, with its checks.
    """

    __slots__ = ("cores", "spec", "training")

    kind = "parallel"

    def __init__(self, spec: PackedSpec, flat: torch.Tensor, training: bool) -> None:
        self.spec, self.training = spec, training
        self.cores = core_views(spec, flat)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the cores."""
        return self.cores[0].dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        spec, cores = self.spec, self.cores
        if self.training and spec.dropout > 0:
            x = F.dropout(x, spec.dropout, training=True)
        core = cores[0]
        if (
            spec.split is None
            or torch.is_grad_enabled()
            or x.dtype != core.dtype
            or x.device != core.device
            or x.shape[-1] != int(core.shape[2]) * math.prod(int(c.shape[2]) for c in cores[1:])
            or torch.is_autocast_enabled(x.device.type)
        ):
            return TTForwardCache(spec.alpha).linear(x, cores)
        a, b = split_halves(cores, spec.split)  # (N, r), (r, M)
        y2 = (x.reshape(-1, int(a.shape[0])) @ a) @ (b * spec.alpha)  # (B, M)
        return y2.reshape(*x.shape[:-1], int(b.shape[1]))


class AdapterDict(nn.ModuleDict):
    """The adapters of one layer by name: modules and packed adapters (see the module docstring).

    Examples
    --------
    >>> from ttdecomp.adapters.layers import TTLoRAAdapter
    >>> spec = TTLoRAAdapter.packed_spec((1, 4), (8, 1), tt_rank=2, alpha=1.0)
    >>> d = AdapterDict()
    >>> d.add_packed("a", Packed(spec, torch.ones(spec.n_params)))
    >>> "a" in d, d.is_packed("a"), sorted(d.state_dict())
    (True, True, ['a.cores.0', 'a.cores.1'])
    >>> type(d["a"]).__name__, d.is_packed("a")  # indexing promotes it to its module
    ('TTLoRAAdapter', False)
    """

    def __init__(self) -> None:
        super().__init__()
        self._packed: dict[str, PackedSpec] = {}

    # ------------------------------------------------------------------ both kinds
    def __contains__(self, key: object) -> bool:
        return key in self._modules or key in self._packed

    def __len__(self) -> int:
        return len(self._modules) + len(self._packed)

    def __iter__(self) -> Iterator[str]:
        return iter([*self._modules, *self._packed])

    def keys(self) -> Any:
        """The names, modules first, then packed adapters."""
        return dict.fromkeys(self).keys()

    def __delitem__(self, key: str) -> None:
        if key in self._packed:
            del self._packed[key]
            del self._parameters[key]
        else:
            del self._modules[key]

    def clear(self) -> None:
        """Remove every adapter, packed ones included."""
        for name in list(self._packed):
            del self[name]
        self._modules.clear()

    def __getitem__(self, key: str) -> nn.Module:
        if key in self._packed:
            return self.promote(key)
        return self._modules[key]

    def items(self) -> Any:
        """``(name, module)`` pairs; packed adapters are promoted first."""
        for name in list(self._packed):
            self.promote(name)
        return self._modules.items()

    def values(self) -> Any:
        """The modules; packed adapters are promoted first."""
        return dict(self.items()).values()

    def named_tensors(self, name: str) -> list[tuple[str, torch.Tensor]]:
        """``(parameter path, tensor)`` of one adapter (views of the flat one when packed)."""
        spec = self._packed.get(name)
        if spec is None:
            return list(self._modules[name].named_parameters())
        return [(f"cores.{k}", v) for k, v in enumerate(core_views(spec, self._parameters[name]))]

    def parameters_of(self, name: str) -> list[torch.Tensor]:
        """The parameters holding one adapter (its flat parameter when packed)."""
        if name in self._packed:
            return [self._parameters[name]]
        return list(self._modules[name].parameters())

    def servable(self, name: str) -> Any:
        """What runs adapter ``name`` on a batch: its module, a :class:`PackedRunner`, or None."""
        spec = self._packed.get(name)
        if spec is None:
            return self._modules.get(name)
        return PackedRunner(spec, self._parameters[name], self.training)

    # ------------------------------------------------------------------ packed adapters
    def is_packed(self, name: str) -> bool:
        """Whether ``name`` is held packed (no module yet)."""
        return name in self._packed

    @property
    def n_packed(self) -> int:
        """How many adapters are held packed."""
        return len(self._packed)

    def add_packed(self, name: str, packed: Packed) -> None:
        """Hold a frozen adapter packed under ``name`` (its flat parameter is frozen)."""
        if name in self:
            raise KeyError(f"adapter {name!r} is already in this layer")
        spec, flat = packed
        if flat.ndim != 1 or flat.numel() != spec.n_params:
            raise ValueError(
                f"packed adapter {name!r} needs a flat tensor of {spec.n_params} values; got "
                f"shape {tuple(flat.shape)}"
            )
        self._parameters[name] = nn.Parameter(flat, requires_grad=False)
        self._packed[name] = spec

    def promote(self, name: str) -> nn.Module:
        """Replace packed adapter ``name`` by its module (same values, same ``requires_grad``)."""
        spec, flat = self._packed[name], self._parameters[name]
        module = spec.factory(
            spec.row_shape,
            spec.col_shape,
            tt_rank=spec.tt_rank,
            alpha=spec.alpha,
            dropout=spec.dropout,
            init=None,
            dtype=flat.dtype,
            device=flat.device,
        )
        with torch.no_grad():
            for (_, core), view in zip(module.named_parameters(), core_views(spec, flat)):
                core.copy_(view)
        module.requires_grad_(flat.requires_grad)
        module.train(self.training)
        del self[name]
        self._modules[name] = module
        return module

    def promote_all(self, names: Sequence[str] | None = None) -> None:
        """Promote ``names`` (all packed adapters by default) that are packed."""
        for name in list(self._packed) if names is None else names:
            if name in self._packed:
                self.promote(name)

    # ------------------------------------------------------------------ state dicts
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for name, p in self._parameters.items():
            if p is None:
                continue
            value = p if keep_vars else p.detach()
            spec = self._packed.get(name)
            if spec is None:
                destination[prefix + name] = value
                continue
            for k, view in enumerate(core_views(spec, value)):
                destination[f"{prefix}{name}.cores.{k}"] = view
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = b if keep_vars else b.detach()

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name, spec in self._packed.items():
            for k, view in enumerate(core_views(spec, self._parameters[name].detach())):
                key = f"{prefix}{name}.cores.{k}"
                if key not in state_dict:
                    missing_keys.append(key)
                    continue
                src = state_dict[key]
                if tuple(src.shape) != tuple(view.shape):
                    error_msgs.append(
                        f"size mismatch for {key}: copying a param with shape "
                        f"{tuple(src.shape)} from checkpoint, the shape in current model is "
                        f"{tuple(view.shape)}."
                    )
                    continue
                with torch.no_grad():
                    view.copy_(src)
        if strict:
            for key in state_dict:
                if not key.startswith(prefix):
                    continue
                first, _, rest = key[len(prefix) :].partition(".")
                spec = self._packed.get(first)
                if spec is not None:
                    if rest not in {f"cores.{k}" for k in range(len(spec.core_shapes))}:
                        unexpected_keys.append(key)
                elif first not in self._modules:
                    unexpected_keys.append(key)

    def extra_repr(self) -> str:
        """How many adapters are packed, and the first names."""
        if not self._packed:
            return ""
        names = list(self._packed)
        more = f", ... ({len(names)} in all)" if len(names) > 3 else ""
        return f"packed: {', '.join(names[:3])}{more}"
