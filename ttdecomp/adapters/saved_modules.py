"""PEFT's ``modules_to_save``: a frozen original module and a trainable copy per adapter.

:class:`ModulesToSaveWrapper` stands where the module was (a classification head, a norm): the
active adapter's copy runs, or the original when adapters are disabled or the active adapter has
no copy; in a mixed-adapter batch each row runs its adapter's copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from .routing import BASE_ADAPTER, Routing

__all__ = ["ModulesToSaveWrapper"]


class ModulesToSaveWrapper(nn.Module):
    """Keeps ``original_module`` frozen and a trainable copy per adapter (PEFT's modules_to_save).

    ``forward`` runs the active adapter's copy, or the original when adapters are disabled or the
    active adapter has no copy.

    Examples
    --------
    >>> head = nn.Linear(4, 2)
    >>> w = ModulesToSaveWrapper(head)
    >>> w.add("default")
    >>> w.modules_to_save["default"].weight.requires_grad, w.original_module.weight.requires_grad
    (True, False)
    """

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disable_adapters = False
        #: Set by the model for the duration of a call with ``adapter_names=``.
        self.routing: Routing | None = None
        original_module.requires_grad_(False)

    def add(self, adapter_name: str, *, activate: bool = True) -> None:
        """Make a trainable copy of the original module for ``adapter_name``."""
        clone = copy.deepcopy(self.original_module)
        clone.requires_grad_(True)
        self.modules_to_save[adapter_name] = clone
        if activate:
            self.active_adapter = adapter_name

    def remove(self, adapter_name: str) -> None:
        """Drop the copy of ``adapter_name``."""
        del self.modules_to_save[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def set_active(self, adapter_names: Sequence[str]) -> None:
        """Activate the first of ``adapter_names`` that has a copy here."""
        self.active_adapter = next((n for n in adapter_names if n in self.modules_to_save), None)

    def _current(self) -> nn.Module:
        if self.disable_adapters or self.active_adapter not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The active copy's forward (or the original's); in a mixed batch, each row's copy."""
        if self.routing is None or self.disable_adapters:
            return self._current()(*args, **kwargs)
        x = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise InvalidInputError(
                "adapter_names needs the modules-to-save copies to take a batch tensor as "
                f"first input; {type(self.original_module).__name__} got {type(x).__name__}."
            )
        out = self.original_module(*args, **kwargs)
        for name, idx in self.routing.groups(int(x.shape[0]), x.device):
            if name == BASE_ADAPTER or name not in self.modules_to_save:
                continue
            copy_ = self.modules_to_save[name]
            if idx is None:
                out = copy_(*args, **kwargs)
                continue
            rows = int(x.shape[0])
            pick = [
                a.index_select(0, idx)
                if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == rows
                else a
                for a in args
            ]
            picked = {
                k: v.index_select(0, idx)
                if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows
                else v
                for k, v in kwargs.items()
            }
            out = out.index_copy(0, idx, copy_(*pick, **picked))
        return out

    def __getattr__(self, name: str) -> Any:
        """Attributes the model reads off the wrapped module (``weight``, ``eps``, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or "_modules" not in self.__dict__:
                raise
            return getattr(self._current(), name)
