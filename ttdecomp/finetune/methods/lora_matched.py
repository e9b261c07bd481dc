"""LoRA at TT-LoRA's budget: PEFT's LoRA at the smallest rank with at least TT-LoRA's parameters.

The comparison the TT-LoRA argument rests on: LoRA cannot go below rank 1, so at TT-LoRA's
parameter count the fair LoRA is the smallest rank whose adapter has at least as many
parameters (rank 1 on MiniLM's query and value: 9,216 ≥ TT-LoRA's 6,144). The rank is not a
setting of this method: :func:`~ttdecomp.finetune.resolve_settings` derives it from
the run's TT-LoRA settings (rank, ``tt_shape``) and the targeted layers before anything trains,
and ``results.json`` records the rank it used. Everything else (``lora_alpha``, lr, PEFT's
saved format) is LoRA's.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .lora import LoRAMethod

__all__ = ["MatchedLoRAMethod"]


class MatchedLoRAMethod(LoRAMethod):
    """LoRA (PEFT) whose ``r`` is derived: the smallest with at least TT-LoRA's parameters.

    Examples
    --------
    >>> from ttdecomp.finetune.methods import get_method
    >>> method = get_method("lora-matched")
    >>> method.matches, method.family_name, method.recommended()["alpha"]
    ('tt-lora', 'lora', 16.0)
    """

    name = "lora-matched"
    display_name = "LoRA at TT-LoRA's budget"
    colour = "tab:red"
    summary = "LoRA through PEFT at the smallest rank with at least TT-LoRA's adapter parameters"
    family = "lora"
    matches = "tt-lora"
    # rank 1 is a placeholder the run replaces (resolve_settings); alpha and lr are LoRA's
    defaults: ClassVar = {**LoRAMethod.defaults, "rank": 1}
    search_parameters: ClassVar = {"lora_alpha": "alpha", "lr": "lr"}
    integer_parameters = frozenset()

    def search_space(self, layer: tuple[int, int] | None, *, quick: bool) -> dict[str, Any]:
        space = super().search_space(layer, quick=quick)
        space.pop("r")  # derived from TT-LoRA's parameter count, not searched
        return space
