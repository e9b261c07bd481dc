"""Head-only: train the classification head alone (no adapter), the floor to beat."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ...errors import InvalidInputError
from .common import head_modules
from .registry import Method

__all__ = ["HEAD_FILE", "HeadOnlyMethod"]

#: The saved head's file.
HEAD_FILE = "head.safetensors"


class HeadOnlyMethod(Method):
    """Only the classification head trains; a causal LM has no separate head to train."""

    name = "head-only"
    display_name = "head only"
    colour = "tab:grey"
    summary = "only the classification head, no adapter"
    kind = "head"
    defaults: ClassVar = {"rank": None, "alpha": None, "lr": 1e-2}
    tasks = ("classification",)

    def why_not(self, task: str) -> str:
        return (
            "head-only trains only a classification head, and a causal LM has no separate head "
            "to train"
        )

    def search_space(self, layer: tuple[int, int] | None, *, quick: bool) -> dict[str, Any]:
        if quick:
            return {"lr": [1e-2]}
        return {"lr": {"low": 1e-3, "high": 5e-2, "log": True}}

    def apply(self, model, settings, *, targets, heads, peft_task_type):
        for name in heads:
            for p in getattr(model, name).parameters():
                p.requires_grad_(True)
        return model

    def save(self, model: Any, folder: Path) -> None:
        from safetensors.torch import save_file

        state = {
            f"{name}.{k}": v.detach().contiguous()
            for name in head_modules(model)
            for k, v in getattr(model, name).state_dict().items()
        }
        save_file(state, str(folder / HEAD_FILE))

    def load(self, model: Any, folder: Any) -> Any:
        from safetensors.torch import load_file

        path = Path(folder) / HEAD_FILE
        state = load_file(str(path))
        expected = {
            f"{name}.{k}" for name in head_modules(model) for k in getattr(model, name).state_dict()
        }
        if set(state) != expected:
            raise InvalidInputError(
                f"{path} holds {sorted(state)}; the model's head is {sorted(expected)}. Was it "
                "saved for another model?"
            )
        model.load_state_dict(state, strict=False)
        return model
