""":class:`TTAdapterModel`, the PEFT-shaped wrapper, and :func:`get_tt_model`.

The functional layer under it (works on any ``nn.Module``, mutates it in place) is
:mod:`ttdecomp.adapters.inject`: :func:`inject_adapter_in_model`,
:func:`mark_only_adapters_as_trainable`, :func:`get_adapter_state_dict`,
:func:`set_adapter_state_dict` (re-exported here).

Wrapper: :func:`get_tt_model` returns a :class:`TTAdapterModel` with PEFT's names —
``print_trainable_parameters``, ``merge_adapter``, ``merge_and_unload``, ``set_adapter``,
``add_adapter``, ``disable_adapter``, ``save_pretrained``, ``from_pretrained``,
``export_peft_lora``, ``add_weighted_adapter``, ``get_model_status`` ... — whose ``forward``
is the base model's (same signature, so ``transformers.Trainer`` keeps the dataset columns) plus
``adapter_names=`` for mixed-adapter batches (:mod:`ttdecomp.adapters.routing`).

Only the attributes in :data:`FORWARDED_ATTRIBUTES` are read from the base model; anything
else is an ``AttributeError`` that says so. PEFT forwards every unknown attribute, so there
``model.push_to_hub`` or ``model.num_parameters`` silently resolve to the base model's and
would upload or count the full model; here they are the wrapper's own.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import InvalidInputError
from .config import ADP_CANNOT_MERGE, LoRETTAConfig, TTAdapterConfig
from .inject import (
    get_adapter_state_dict,
    inject_adapter_in_model,
    mark_only_adapters_as_trainable,
    set_adapter_state_dict,
    set_submodule,
)
from .layers import ModulesToSaveWrapper, TTAdapterLayer
from .quantized import MergeRounding, QuantizedTTAdapterLayer
from .serialization import load_adapter, remove_stale_adapters, save_adapters
from .serving import FORWARDED_ATTRIBUTES, ServingMixin, batch_rows

__all__ = [
    "FORWARDED_ATTRIBUTES",
    "TTAdapterModel",
    "get_adapter_state_dict",
    "get_tt_model",
    "inject_adapter_in_model",
    "mark_only_adapters_as_trainable",
    "set_adapter_state_dict",
]


def _unmerged(layer: TTAdapterLayer, names: Sequence[str]) -> list[str]:
    """The adapters of ``names`` this layer holds and has not merged yet."""
    return [n for n in names if n in layer.tt_adapters and n not in layer.merged_adapters]


class TTAdapterModel(ServingMixin, nn.Module):
    """A model with tensor-train adapters, shaped like ``peft.PeftModel``.

    Build it with :func:`get_tt_model` or :meth:`from_pretrained`. ``forward`` is the base
    model's, with the same signature; unknown attributes are read from the base model.

    Attributes
    ----------
    base_model : nn.Module
        The model, with its target layers wrapped in place.
    tt_config : dict of str to config
        The config of every adapter, by name (PEFT's ``peft_config``).
    active_adapters : list of str
        The adapters in use.
    inference_mode : bool
        True after ``from_pretrained(..., is_trainable=False)``: no parameter requires
        gradients, also after :meth:`set_adapter` or :meth:`load_adapter`.

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import TTLoRAConfig, get_tt_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU())
    >>> model = get_tt_model(net, TTLoRAConfig(tt_rank=2, target_modules=["0"]))
    >>> model.get_nb_trainable_parameters()
    (64, 336)
    >>> model.targeted_module_names
    ['0']
    """

    def __init__(
        self, model: nn.Module, config: TTAdapterConfig, adapter_name: str = "default"
    ) -> None:
        _check_not_wrapped(model)
        inject_adapter_in_model(config, model, adapter_name)
        self._wrap(model, adapter_name, _with_base_name(config, model), inference_mode=False)

    def _wrap(
        self, model: nn.Module, adapter_name: str, config: TTAdapterConfig, *, inference_mode: bool
    ) -> None:
        """Make ``self`` the wrapper of ``model``, whose adapter ``adapter_name`` is in place.

        The one place a wrapper is built: by ``__init__`` after injecting, by
        :meth:`from_pretrained` after loading.
        """
        nn.Module.__init__(self)
        self.base_model = model
        self.tt_config: dict[str, TTAdapterConfig] = {adapter_name: config}
        self.active_adapters: list[str] = [adapter_name]
        self.inference_mode = inference_mode
        self.merge_rounding: dict[str, dict[str, MergeRounding]] = {}
        self.forward = functools.wraps(model.forward)(functools.partial(_call_base, self))

    def __getattr__(self, name: str) -> Any:
        """Read :data:`FORWARDED_ATTRIBUTES` (``config``, ``device``...) from the base model."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_model", "_modules") or "_modules" not in self.__dict__:
                raise
            if name in FORWARDED_ATTRIBUTES:
                return getattr(self.base_model, name)
            if hasattr(self.base_model, name):
                raise AttributeError(
                    f"TTAdapterModel does not forward {name!r} to the base model (only "
                    "ttdecomp.adapters.model.FORWARDED_ATTRIBUTES are, so that nothing acts on "
                    f"the full model by accident); use model.base_model.{name} if you mean "
                    "the base model's."
                ) from None
            raise

    # ------------------------------------------------------------------ introspection
    @property
    def active_adapter(self) -> str:
        """The first active adapter (PEFT's single-adapter name)."""
        return self.active_adapters[0]

    @property
    def targeted_module_names(self) -> list[str]:
        """Names of the layers wrapped by any adapter."""
        return [n for n, m in self.base_model.named_modules() if isinstance(m, TTAdapterLayer)]

    def get_base_model(self) -> nn.Module:
        """The wrapped model (with adapter layers inside; see :meth:`unload` to remove them)."""
        return self.base_model

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable parameters, all parameters)``, adapters included in both."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print PEFT's line: ``trainable params: ... || all params: ... || trainable%: ...``."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}"
        )

    def _layers(self) -> Iterator[TTAdapterLayer | ModulesToSaveWrapper]:
        for m in self.base_model.modules():
            if isinstance(m, (TTAdapterLayer, ModulesToSaveWrapper)):
                yield m

    def _check_known(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self.tt_config]
        if unknown:
            raise InvalidInputError(
                f"unknown adapter(s) {unknown}; this model has {sorted(self.tt_config)}."
            )

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: TTAdapterConfig) -> None:
        """Add another adapter. It is injected but not activated; use :meth:`set_adapter`."""
        previous = list(self.active_adapters)
        inject_adapter_in_model(config, self.base_model, adapter_name)
        self.tt_config[adapter_name] = _with_base_name(config, self.base_model)
        self.set_adapter(previous)

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:
        """Make ``adapter_name`` (or a list of names) the active, trainable adapter(s)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        if not names:
            raise InvalidInputError("set_adapter needs at least one adapter name.")
        self._check_known(names)
        for layer in self._layers():
            if isinstance(layer, TTAdapterLayer) and layer.merged_adapters:
                layer.unmerge()
            layer.set_active(names)
        self.active_adapters = names
        mark_only_adapters_as_trainable(self.base_model, [] if self.inference_mode else names)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter everywhere (unwrapping layers left without adapters)."""
        self._check_known([adapter_name])
        if adapter_name in self.active_adapters and len(self.active_adapters) == 1:
            rest = [n for n in self.tt_config if n != adapter_name]
            if not rest:
                raise InvalidInputError(
                    f"{adapter_name!r} is the only adapter; use unload() to remove all adapters."
                )
            self.set_adapter(rest[0])
        for name, layer in list(self.base_model.named_modules()):
            if isinstance(layer, TTAdapterLayer) and adapter_name in layer.tt_adapters:
                layer.remove(adapter_name)
                if not layer.tt_adapters:
                    set_submodule(self.base_model, name, layer.base_layer)
            elif isinstance(layer, ModulesToSaveWrapper) and adapter_name in layer.modules_to_save:
                layer.remove(adapter_name)
                if not layer.modules_to_save:
                    set_submodule(self.base_model, name, layer.original_module)
        del self.tt_config[adapter_name]
        self.active_adapters = [n for n in self.active_adapters if n != adapter_name]

    def _set_disabled(self, disabled: bool) -> None:
        for layer in self._layers():
            layer.disable_adapters = disabled

    def enable_adapter_layers(self) -> None:
        """Turn the adapters back on after :meth:`disable_adapter_layers`."""
        self._set_disabled(False)

    def disable_adapter_layers(self) -> None:
        """Run the base model alone (merged adapters are unmerged on the next forward)."""
        self._set_disabled(True)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Context manager in which the model behaves as the base model."""
        self.disable_adapter_layers()
        try:
            yield
        finally:
            self.enable_adapter_layers()

    # ------------------------------------------------------------------ merging
    def _check_mergeable(self, names: Sequence[str]) -> None:
        for n in names:
            cfg = self.tt_config[n]
            if isinstance(cfg, LoRETTAConfig) and cfg.variant == "adp":
                raise InvalidInputError(
                    f"adapter {n!r} ({cfg.non_linearity}): {ADP_CANNOT_MERGE}. Keep it "
                    "unmerged, or use LoRETTA-rep / TT-LoRA if you need merging."
                )

    def merge_adapter(
        self, adapter_names: Sequence[str] | None = None, *, keep_original: bool = True
    ) -> dict[str, dict[str, MergeRounding]]:
        """Fold adapters (default: the active ones) into the base weights.

        ΔW is formed in float32 and added once. With ``keep_original`` the pre-merge weights are
        kept so :meth:`unmerge_adapter` restores them bit-for-bit. Merged and unmerged outputs
        agree to about ``1e-5`` relative in float32 and ``1e-2`` in bfloat16 (bf16 rounds the
        merged weight once).

        On a quantized base (:mod:`ttdecomp.adapters.quantized`) W is dequantized, ΔW added and
        the sum quantized again: the rounding that adds is recorded per layer in
        :attr:`merge_rounding` (``{module name: {adapter: MergeRounding}}``) and a
        :class:`~ttdecomp.adapters.quantized.QuantizedMergeWarning` is raised where it exceeds
        ‖ΔW‖.

        Returns
        -------
        dict of str to dict of str to MergeRounding
            The rounding this call introduced, ``{module name: {adapter: MergeRounding}}``, for
            the quantized layers it merged into; empty on a full-precision base, whose merge
            adds no rounding beyond float round-off.
        """
        names = list(adapter_names or self.active_adapters)
        self._check_known(names)
        self._check_mergeable(names)
        added: dict[str, dict[str, MergeRounding]] = {}
        for name, layer in list(self.base_model.named_modules()):
            if isinstance(layer, TTAdapterLayer):
                todo = _unmerged(layer, names)
                if todo:  # an empty list would mean "the active adapters" to the layer
                    layer.merge(todo, keep_original=keep_original)
                    self._record_rounding(name, layer, todo, added)
        return added

    def _record_rounding(
        self,
        name: str,
        layer: TTAdapterLayer,
        merged: Sequence[str],
        added: dict[str, dict[str, MergeRounding]],
    ) -> None:
        if isinstance(layer, QuantizedTTAdapterLayer) and layer.merge_rounding:
            self.merge_rounding[name] = dict(layer.merge_rounding)
            now = {n: layer.merge_rounding[n] for n in merged if n in layer.merge_rounding}
            if now:
                added[name] = now

    def unmerge_adapter(self) -> None:
        """Undo :meth:`merge_adapter` everywhere."""
        for layer in self._layers():
            if isinstance(layer, TTAdapterLayer):
                layer.unmerge()

    def _unwrap(self, merge: bool, adapter_names: Sequence[str] | None) -> nn.Module:
        names = list(adapter_names or self.active_adapters)
        if merge:
            self._check_known(names)
            self._check_mergeable(names)
        added: dict[str, dict[str, MergeRounding]] = {}
        for name, layer in list(self.base_model.named_modules()):
            if isinstance(layer, TTAdapterLayer):
                if merge:
                    todo = _unmerged(layer, names)
                    if todo:
                        layer.merge(todo, keep_original=False)
                        self._record_rounding(name, layer, todo, added)
                else:
                    layer.unmerge()
                set_submodule(self.base_model, name, layer.base_layer)
            elif isinstance(layer, ModulesToSaveWrapper):
                keep = layer._current() if merge else layer.original_module
                keep.requires_grad_(False)
                set_submodule(self.base_model, name, keep)
        if merge and added:
            # the merged model carries what its merge cost (the wrapper may be dropped)
            self.base_model.merge_rounding = added
        return self.base_model

    def merge_and_unload(self, adapter_names: Sequence[str] | None = None) -> nn.Module:
        """Merge adapters into the weights and return the plain base model (no wrappers).

        Modules-to-save are replaced by the active adapter's trained copy. On a quantized base
        the merged weights are quantized again; the rounding each layer took is recorded in
        :attr:`merge_rounding` (see :meth:`merge_adapter`) and also set as the returned model's
        ``merge_rounding`` attribute, ``{module name: {adapter: MergeRounding}}``, so it stays
        with the merged model once the wrapper is gone (not set on a full-precision base).
        """
        return self._unwrap(True, adapter_names)

    def unload(self) -> nn.Module:
        """Remove every adapter without merging and return the plain base model."""
        return self._unwrap(False, None)

    # ------------------------------------------------------------------ training helpers
    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Turn on the base model's activation (gradient) checkpointing; adapters still train.

        The frozen embeddings produce inputs that do not require grad; with re-entrant
        checkpointing the adapters inside would then get none, so input gradients are enabled.
        Uses ``activation_checkpointing_enable`` where transformers has it (the older name is
        deprecated there), else ``gradient_checkpointing_enable``. ``transformers.Trainer``
        calls this for ``gradient_checkpointing=True``.
        """
        base = self.base_model
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(
                activation_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs
            )
        else:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs
            )
        base.enable_input_require_grads()

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """transformers 5's name for :meth:`gradient_checkpointing_enable`."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(
        self,
        save_directory: str | Path,
        adapter_names: Sequence[str] | None = None,
        *,
        selected_adapters: Sequence[str] | None = None,
    ) -> None:
        """Save adapters: ``default`` in ``save_directory``, others in sub-folders by name.

        ``selected_adapters`` (PEFT's name) is the same as ``adapter_names``: the adapters to
        save, all by default. Each folder holds ``ttdecomp_config.json`` and
        ``ttdecomp_adapter.safetensors``. The save is one transaction: every file is written
        to a temporary next to its target and renamed into place only when all are written,
        so a failed save leaves the previous one loadable and byte-identical. Nothing is
        written through a symbolic link (:class:`~ttdecomp.adapters.AdapterFileError`). A full
        save (no selection) removes the sub-folders an earlier save wrote for adapters this
        model no longer has.
        """
        if selected_adapters is not None and adapter_names is not None:
            if list(selected_adapters) != list(adapter_names):
                raise InvalidInputError(
                    f"save_pretrained got adapter_names={list(adapter_names)} and "
                    f"selected_adapters={list(selected_adapters)}; they are the same option "
                    "(PEFT's name and ours): give one."
                )
        chosen = adapter_names if adapter_names is not None else selected_adapters
        if isinstance(chosen, str):
            chosen = [chosen]
        names = list(chosen) if chosen is not None else list(self.tt_config)
        if chosen is not None and not names:
            raise InvalidInputError("save_pretrained got an empty list of adapters to save.")
        self._check_known(names)
        root = Path(save_directory)
        save_adapters(
            self.base_model,
            {n: (self.tt_config[n], root if n == "default" else root / n) for n in names},
        )
        if chosen is None:
            remove_stale_adapters(root, keep=names)

    def load_adapter(
        self, path: str | Path, adapter_name: str, *, is_trainable: bool = False
    ) -> None:
        """Load a saved adapter under ``adapter_name`` (validated fully before any change).

        The active adapters stay active (use :meth:`set_adapter` to switch); the new adapter
        is frozen until it is activated. ``is_trainable=True`` also ends inference mode (see
        :meth:`from_pretrained`), so the adapter trains once activated. Loading touches only
        the new adapter's layers, so loading many adapters costs time in proportion to their
        number (1,000 TT-LoRA adapters on MiniLM: see ``benchmarks/bench_adapters.py``).

        A TT-LoRA adapter is held *packed* until it is activated: one flat frozen parameter per
        layer, no modules (see :mod:`ttdecomp.adapters.packed`), which is what lets a thousand
        adapters fit in 1.4 times their parameter bytes (MiniLM, r=4). Mixed batches
        (``adapter_names=``) run packed adapters as they are; :meth:`set_adapter` (and
        indexing ``layer.tt_adapters[name]``) turns one into its module. Its state-dict keys
        and saved files are those of the module; in ``named_parameters()`` it is one tensor,
        ``...tt_adapters.<name>``, per layer.
        """
        if adapter_name in self.tt_config:
            raise InvalidInputError(
                f"the model already has an adapter named {adapter_name!r}; pick another name or "
                "delete_adapter() it first."
            )
        config = load_adapter(self.base_model, path, adapter_name, activate=False)
        self.tt_config[adapter_name] = config
        if is_trainable:
            self.inference_mode = False

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        path: str | Path,
        adapter_name: str = "default",
        *,
        is_trainable: bool = False,
    ) -> TTAdapterModel:
        """Wrap ``model`` with the adapter saved in ``path``.

        Every tensor's name, shape and dtype is checked against ``model`` and the file is read
        completely before the model is touched; a mismatch or a corrupted/truncated file raises
        :class:`~ttdecomp.adapters.AdapterFileError` (or a shape error) and leaves ``model``
        unchanged. With ``is_trainable=False`` (default) nothing requires gradients.
        """
        _check_not_wrapped(model)
        config = load_adapter(model, path, adapter_name)
        self = cls.__new__(cls)
        self._wrap(model, adapter_name, config, inference_mode=not is_trainable)
        mark_only_adapters_as_trainable(model, [adapter_name] if is_trainable else [])
        return self

    def export_peft_lora(
        self, save_directory: str | Path, rank: int, adapter_name: str | None = None
    ) -> dict[str, float]:
        """Write ΔW as a standard PEFT LoRA checkpoint by truncated SVD (see
        :func:`ttdecomp.adapters.export.export_peft_lora`)."""
        from .export import export_peft_lora

        name = adapter_name or self.active_adapter
        self._check_known([name])
        return export_peft_lora(self.base_model, self.tt_config[name], name, save_directory, rank)


def _check_not_wrapped(model: nn.Module) -> None:
    """Refuse a model that is, or already holds, the adapter layers of some wrapper.

    A second wrapper would take over the first one's layers: the first model would then run
    and train the new adapter while still reporting its own as active.
    """
    if isinstance(model, TTAdapterModel):
        raise InvalidInputError(
            "model is already a TTAdapterModel; call model.add_adapter(name, config) to add "
            "another adapter instead of wrapping it twice."
        )
    wrapped = [
        n for n, m in model.named_modules() if isinstance(m, (TTAdapterLayer, ModulesToSaveWrapper))
    ]
    if wrapped:
        raise InvalidInputError(
            f"this base model already holds TT adapter layers ({wrapped[0]!r} and "
            f"{len(wrapped) - 1} more): it is wrapped by another TTAdapterModel. Call "
            "add_adapter(name, config) on that model, or unload() it first, or wrap a fresh copy."
        )


def _call_base(
    self: TTAdapterModel, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any
) -> Any:
    if adapter_names is None:
        return self.base_model(*args, **kwargs)
    with self._routed(adapter_names, batch_rows(args, kwargs)):
        return self.base_model(*args, **kwargs)


def _with_base_name(config: TTAdapterConfig, model: nn.Module) -> TTAdapterConfig:
    if config.base_model_name_or_path is not None:
        return config
    name = getattr(getattr(model, "config", None), "name_or_path", None) or None
    fields = {k: v for k, v in config.to_dict().items() if k != "method"}
    fields["base_model_name_or_path"] = name
    return type(config)(**fields)


def get_tt_model(
    model: nn.Module, config: TTAdapterConfig, adapter_name: str = "default"
) -> TTAdapterModel:
    """Add a tensor-train adapter to ``model`` and wrap it (PEFT's ``get_peft_model``).

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (or any module holding ``nn.Linear`` / ``Conv1D`` layers). It is
        modified in place: target layers are wrapped, everything else is frozen.
    config : TTLoRAConfig or LoRETTAConfig
    adapter_name : str

    Returns
    -------
    TTAdapterModel

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import TTLoRAConfig
    >>> net = torch.nn.Sequential(torch.nn.Linear(32, 32))
    >>> x = torch.randn(2, 32)
    >>> before = net(x)
    >>> model = get_tt_model(net, TTLoRAConfig(tt_rank=2, init="zero", target_modules=["0"]))
    >>> bool(torch.equal(model(x), before))
    True
    """
    return TTAdapterModel(model, config, adapter_name)
