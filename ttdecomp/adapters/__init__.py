"""Tensor-train adapters for Hugging Face models: TT-LoRA and LoRETTA, shaped like PEFT.

PEFT cannot register new methods, so this package mirrors its API: a config dataclass,
:func:`get_tt_model` returning a wrapper whose layers keep ``base_layer``, merging, saving and
loading, several named adapters, mixed-adapter batches (``adapter_names=``), weighted
combinations (``add_weighted_adapter``), status reports, and an export to a standard PEFT LoRA
checkpoint. Quantized bases (bitsandbytes 4-bit and 8-bit, torchao int8 weight-only) stay
quantized under the adapters (:mod:`ttdecomp.adapters.quantized`).
:class:`TTAdapterTrainer` (imported on first use, it pulls in ``transformers.Trainer``) is a
``Trainer`` whose checkpoints hold only the adapters.

Examples
--------
>>> import torch
>>> from ttdecomp.adapters import TTLoRAConfig, get_tt_model
>>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
>>> model = get_tt_model(net, TTLoRAConfig(tt_rank=4, alpha=8.0, target_modules=["0"]))
>>> model(torch.randn(2, 64)).shape
torch.Size([2, 8])
"""

from __future__ import annotations

from . import _requires  # noqa: F401 (first: a missing package names its pip install)
from .config import (
    CONFIG_NAME,
    DEFAULT_TARGETS,
    WEIGHTS_NAME,
    AdapterFileError,
    LoRETTAConfig,
    TargetModulesError,
    TTAdapterConfig,
    TTLoRAConfig,
    config_from_dict,
)
from .export import export_peft_lora
from .inject import (
    get_adapter_state_dict,
    inject_adapter_in_model,
    mark_only_adapters_as_trainable,
    set_adapter_state_dict,
)
from .layers import (
    AdapterDict,
    LoRETTAAdpAdapter,
    LoRETTARepAdapter,
    ModulesToSaveWrapper,
    TTAdapterLayer,
    TTLoRAAdapter,
)
from .model import TTAdapterModel, get_tt_model
from .quantized import (
    MergeRounding,
    QuantizedMergeWarning,
    QuantizedTTAdapterLayer,
    guard_4bit_backward,
    prepare_model_for_kbit_training,
)
from .routing import BASE_ADAPTER
from .serving import FORWARDED_ATTRIBUTES
from .status import TTLayerStatus, TTModelStatus
from .targets import TargetInfo, inspect_targets
from .weighted import COMBINATION_TYPES

__all__ = [
    "BASE_ADAPTER",
    "COMBINATION_TYPES",
    "CONFIG_NAME",
    "DEFAULT_TARGETS",
    "FORWARDED_ATTRIBUTES",
    "WEIGHTS_NAME",
    "AdapterDict",
    "AdapterFileError",
    "LoRETTAAdpAdapter",
    "LoRETTAConfig",
    "LoRETTARepAdapter",
    "MergeRounding",
    "ModulesToSaveWrapper",
    "QuantizedMergeWarning",
    "QuantizedTTAdapterLayer",
    "TTAdapterConfig",
    "TTAdapterLayer",
    "TTAdapterModel",
    "TTAdapterTrainer",
    "TTLayerStatus",
    "TTLoRAAdapter",
    "TTLoRAConfig",
    "TTModelStatus",
    "TargetInfo",
    "TargetModulesError",
    "config_from_dict",
    "export_peft_lora",
    "get_adapter_state_dict",
    "get_tt_model",
    "guard_4bit_backward",
    "inject_adapter_in_model",
    "inspect_targets",
    "mark_only_adapters_as_trainable",
    "prepare_model_for_kbit_training",
    "set_adapter_state_dict",
]


def __getattr__(name: str) -> object:
    """Import :class:`TTAdapterTrainer` lazily: it imports ``transformers.Trainer``."""
    if name == "TTAdapterTrainer":
        from .trainer import TTAdapterTrainer

        return TTAdapterTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
