"""The serving side of :class:`~ttdecomp.adapters.TTAdapterModel`, as a mixin.

* mixed-adapter batches: ``model(**batch, adapter_names=[...])`` and ``generate(...,
  adapter_names=[...])`` route each row through its own adapter (:mod:`~ttdecomp.adapters.routing`);
* ``add_weighted_adapter``: exact or TT-rounded weighted sums of TT-LoRA adapters
  (:mod:`~ttdecomp.adapters.weighted`);
* ``get_model_status`` / ``get_layer_status`` (:mod:`~ttdecomp.adapters.status`);
* ``num_parameters`` and ``push_to_hub`` of the wrapper itself (:mod:`~ttdecomp.adapters.hub`),
  and :data:`FORWARDED_ATTRIBUTES`, the only attributes read through from the base model.

The mixin uses the wrapper's ``base_model``, ``tt_config``, ``active_adapters``,
``_layers()``, ``_check_known()`` and ``set_adapter()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, ShapeError
from .layers import TTAdapterLayer
from .routing import BASE_ADAPTER, Routing
from .status import TTLayerStatus, TTModelStatus, layer_status, model_status

__all__ = ["FORWARDED_ATTRIBUTES", "ServingMixin", "batch_rows"]

#: Attributes of the base model that :class:`TTAdapterModel` reads through (what
#: ``transformers.Trainer``, ``generate`` callers and pipelines ask of a model). Anything else
#: raises ``AttributeError``; reach the base model with ``model.base_model`` (or
#: ``get_base_model()``).
FORWARDED_ATTRIBUTES = frozenset(
    {
        "config",
        "generation_config",
        "device",
        "dtype",
        "name_or_path",
        "main_input_name",
        "model_tags",
        "warnings_issued",
        "accepts_loss_kwargs",
        "loss_function",
        "can_generate",
        "prepare_inputs_for_generation",
        "get_input_embeddings",
        "get_output_embeddings",
        "enable_input_require_grads",
        "disable_input_require_grads",
        "gradient_checkpointing_disable",
        "is_gradient_checkpointing",
        "is_activation_checkpointing",
        "supports_gradient_checkpointing",
        "tie_weights",
        "resize_token_embeddings",
        "floating_point_ops",
        "estimate_tokens",
        "hf_device_map",
    }
)


def batch_rows(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int | None:
    """Rows of the batch: of ``input_ids`` / ``inputs_embeds`` or the first tensor argument."""
    for key in ("input_ids", "inputs_embeds", "pixel_values", "input_values"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    for value in args:
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    return None


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on (transformers 5 and 4 names)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or name in vars(model):
            return bool(getattr(model, name))
    return False


class ServingMixin:
    """Mixed-adapter batches, weighted adapters, status and Hub upload for the wrapper."""

    def _routing(self, adapter_names: Any, rows: int | None) -> Routing:
        """Validate ``adapter_names`` (one loaded name or ``"__base__"`` per row)."""
        if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
            raise InvalidInputError(
                f"adapter_names must be a list with one adapter name per row of the batch; got "
                f"{adapter_names!r}. Use e.g. adapter_names=['task_a', '__base__', 'task_a']."
            )
        names = list(adapter_names)
        bad = [n for n in names if not isinstance(n, str)]
        if bad or not names:
            raise InvalidInputError(
                f"adapter_names must be a non-empty list of strings; got {adapter_names!r}."
            )
        unknown = sorted({n for n in names if n != BASE_ADAPTER and n not in self.tt_config})
        if unknown:
            raise InvalidInputError(
                f"adapter_names has {unknown}, which {'is' if len(unknown) == 1 else 'are'} not "
                f"loaded; the loaded adapters are {sorted(self.tt_config)} (and "
                f"{BASE_ADAPTER!r} for the base model alone). Load it with load_adapter(path, "
                "name) first."
            )
        if rows is not None and rows != len(names):
            raise ShapeError(
                f"adapter_names has {len(names)} entries but the batch has {rows} rows; give "
                "exactly one adapter name per row."
            )
        merged = [
            n
            for n, m in self.base_model.named_modules()
            if isinstance(m, TTAdapterLayer) and m.merged_adapters
        ]
        if merged:
            raise InvalidInputError(
                f"adapter_names needs unmerged adapters, but {merged[0]!r} (and "
                f"{len(merged) - 1} more layers) hold merged adapters, which every row would "
                "get. Call model.unmerge_adapter() first."
            )
        base = self.base_model
        if self.training and torch.is_grad_enabled() and _checkpointing(base):
            raise InvalidInputError(
                "adapter_names is for inference: with gradient checkpointing the recomputed "
                "forward would not be routed. Train one adapter at a time (set_adapter)."
            )
        return Routing(names)

    @contextlib.contextmanager
    def _routed(self, adapter_names: Any, rows: int | None) -> Iterator[None]:
        routing = self._routing(adapter_names, rows)
        layers = list(self._layers())
        for layer in layers:
            layer.routing = routing
        try:
            yield
        finally:
            for layer in layers:
                layer.routing = None

    def generate(
        self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        """The base model's ``generate``; with ``adapter_names``, each row uses its adapter.

        ``num_beams`` / ``num_return_sequences`` copies of a row use that row's adapter.

        Examples
        --------
        >>> from ttdecomp.adapters import TTLoRAConfig, get_tt_model
        >>> from ttdecomp.adapters.testing import tiny_model
        >>> model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
        >>> model.add_adapter("other", TTLoRAConfig(tt_rank=2))
        >>> ids = torch.randint(2, 128, (3, 5))
        >>> out = model.generate(input_ids=ids, max_new_tokens=2, do_sample=False,
        ...                      adapter_names=["default", "other", "__base__"])
        >>> tuple(out.shape)
        (3, 7)
        """
        generate = self.base_model.generate
        if adapter_names is None:
            return generate(*args, **kwargs)
        with self._routed(adapter_names, batch_rows(args, kwargs)):
            return generate(*args, **kwargs)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters of the whole model, adapters included (``PreTrainedModel``'s signature).

        ``exclude_embeddings`` leaves out the weights of ``nn.Embedding`` modules.
        """
        skip: set[int] = set()
        if exclude_embeddings:
            for m in self.modules():
                if isinstance(m, nn.Embedding):
                    skip.update(id(p) for p in m.parameters())
        return sum(
            p.numel()
            for p in self.parameters()
            if id(p) not in skip and (p.requires_grad or not only_trainable)
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        adapter_names: Sequence[str] | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        endpoint: str | None = None,
    ) -> Any:
        """Upload the adapter folder (what :meth:`save_pretrained` writes) to the Hub.

        Only the adapters go up, never the base model's weights: the folder is saved to a
        temporary directory and uploaded in one commit with ``huggingface_hub``'s
        ``upload_folder`` (the repository is created if needed). Returns the commit info.

        Parameters
        ----------
        repo_id : str
            ``"user/name"`` of a model repository.
        adapter_names : list of str, optional
            Which adapters (default: all).
        private, token, commit_message, revision, create_pr
            As in ``huggingface_hub.HfApi``.
        endpoint : str, optional
            Another Hub endpoint (default: ``HF_ENDPOINT`` or huggingface.co).
        """
        from .hub import push_adapters

        if adapter_names is not None:
            self._check_known(list(adapter_names))
        return push_adapters(
            self,
            repo_id,
            adapter_names=adapter_names,
            private=private,
            token=token,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            endpoint=endpoint,
        )

    def add_weighted_adapter(
        self,
        adapters: Sequence[str],
        weights: Sequence[float],
        adapter_name: str,
        combination_type: str = "exact",
        *,
        tt_rank: int | None = None,
        eps: float | None = None,
    ) -> dict[str, float]:
        """Add ``adapter_name`` with ``ΔW = Σ weights[i] · ΔW(adapters[i])`` in every layer.

        TT-LoRA adapters of one TT shape sum exactly as TT-matrices with block-diagonal cores
        (ranks add up); see :mod:`ttdecomp.adapters.weighted`.

        Parameters
        ----------
        adapters : list of str
            TT-LoRA adapters of this model with the same targets and TT shapes.
        weights : list of float
            One per adapter.
        adapter_name : str
            The new adapter (added, not activated; use :meth:`set_adapter`).
        combination_type : {"exact", "rounded"}
            ``"exact"`` (PEFT's ``"cat"``): the block-diagonal sum, rank = sum of ranks.
            ``"rounded"`` (PEFT's ``"svd"``): the sum rounded by :func:`ttdecomp.round` to
            ``tt_rank`` and/or ``eps``.
        tt_rank, eps : optional
            The rounding of ``"rounded"``: a rank cap and/or a relative accuracy.

        Returns
        -------
        dict of str to float
            Per module, the guaranteed bound on ``‖ΔW_new − Σ w_i ΔW_i‖_F / ‖Σ w_i ΔW_i‖_F``
            (0 for an exact sum; round-off level where a bond had to be clipped).

        Examples
        --------
        >>> from ttdecomp.adapters import TTLoRAConfig, get_tt_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64))
        >>> model = get_tt_model(net, TTLoRAConfig(tt_rank=2, target_modules=["0"]))
        >>> model.add_adapter("b", TTLoRAConfig(tt_rank=3, target_modules=["0"]))
        >>> model.add_weighted_adapter(["default", "b"], [0.5, 2.0], "ab")
        {'0': 0.0}
        >>> model.tt_config["ab"].tt_rank
        5
        """
        from .weighted import add_weighted_adapter

        config, bounds = add_weighted_adapter(
            self.base_model,
            self.tt_config,
            adapters,
            weights,
            adapter_name,
            combination_type,
            tt_rank=tt_rank,
            eps=eps,
        )
        self.tt_config[adapter_name] = config
        self.set_adapter(list(self.active_adapters))
        return bounds

    def get_layer_status(self) -> list[TTLayerStatus]:
        """Every adapter layer: its adapters, the active and merged ones (PEFT's name).

        Examples
        --------
        >>> from ttdecomp.adapters import TTLoRAConfig, get_tt_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16))
        >>> model = get_tt_model(net, TTLoRAConfig(tt_rank=2, target_modules=["0"]))
        >>> st = model.get_layer_status()[0]
        >>> st.name, st.module_type, st.active_adapters, st.merged_adapters
        ('0', 'TTAdapterLayer(Linear)', ['default'], [])
        """
        return layer_status(self.base_model, TTAdapterLayer)

    def get_model_status(self) -> TTModelStatus:
        """One summary of :meth:`get_layer_status`; ``"irregular"`` where layers differ.

        Examples
        --------
        >>> from ttdecomp.adapters import TTLoRAConfig, get_tt_model
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 16))
        >>> model = get_tt_model(net, TTLoRAConfig(tt_rank=2, target_modules=["0", "1"]))
        >>> st = model.get_model_status()
        >>> st.num_adapter_layers, st.active_adapters, st.merged_adapters, st.enabled
        (2, ['default'], [], True)
        """
        methods = {n: c.method for n, c in self.tt_config.items()}
        return model_status(self, self.get_layer_status(), methods)
