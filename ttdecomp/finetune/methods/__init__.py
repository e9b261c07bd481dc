"""The fine-tuning methods ``ttdecomp finetune`` and ``ttdecomp search`` compare: a registry.

========================  ===================================================================
``tt-lora``               TT-LoRA through :mod:`ttdecomp.adapters` (ΔW is one TT-matrix)
``lora``                  LoRA through PEFT (``peft.get_peft_model``)
``loretta-rep``           LoRETTA-rep: a LoRA pair whose factors are TT-matrices
``loretta-adp``           LoRETTA-adp: a TT bottleneck adapter after the targeted layers
``head-only``             only the classification head (no adapter): the floor to beat
``lora-matched``          LoRA at the smallest rank with at least TT-LoRA's adapter parameters
========================  ===================================================================

A method is a :class:`Method` subclass in a file of its own plus one :func:`register_method`
line (below, or in your own code); the configuration, the command line's ``--methods``, the
report and the search space then know it.

Examples
--------
>>> from ttdecomp.finetune.methods import Method, register_method, unregister_method
>>> class SmallLoRA(LoRAMethod):  # LoRA with other recommended settings, under its own name
...     name = "lora-r2"
...     defaults = {"rank": 2, "alpha": 4.0, "lr": 1e-3}
>>> _ = register_method(SmallLoRA())
>>> "lora-r2" in method_names(), default_settings("lora-r2").rank
(True, 2)
>>> unregister_method("lora-r2")
"""

from __future__ import annotations

from .common import (
    METHOD_FILE,
    AdaptedModel,
    apply_method,
    dry_run,
    guarded,
    head_modules,
    load_adapted,
    resolve_settings,
    save_adapted,
)
from .head_only import HeadOnlyMethod
from .lora import LoRAMethod
from .lora_matched import MatchedLoRAMethod
from .registry import (
    Method,
    MethodSettings,
    check_method,
    default_settings,
    format_defaults,
    get_method,
    method_names,
    methods_for,
    register_method,
    settings_from_mapping,
    unregister_method,
)
from .tt import LoRETTAAdpMethod, LoRETTARepMethod, TTLoRAMethod, default_tt_shape

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "METHOD_FILE",
    "AdaptedModel",
    "HeadOnlyMethod",
    "LoRAMethod",
    "LoRETTAAdpMethod",
    "LoRETTARepMethod",
    "MatchedLoRAMethod",
    "Method",
    "MethodSettings",
    "TTLoRAMethod",
    "apply_method",
    "check_method",
    "default_settings",
    "default_tt_shape",
    "dry_run",
    "format_defaults",
    "get_method",
    "guarded",
    "head_modules",
    "load_adapted",
    "method_names",
    "methods_for",
    "register_method",
    "resolve_settings",
    "save_adapted",
    "settings_from_mapping",
    "unregister_method",
]

# the built-in methods, in the order tables list them: one line per method
register_method(TTLoRAMethod())
register_method(LoRAMethod())
register_method(LoRETTARepMethod())
register_method(LoRETTAAdpMethod())
register_method(HeadOnlyMethod())
register_method(MatchedLoRAMethod())

#: The built-in methods, in the order tables list them (:func:`method_names` also lists the
#: methods registered since).
METHODS: tuple[str, ...] = method_names()
#: What ``ttdecomp finetune`` runs when ``--methods`` is not given: TT-LoRA against LoRA at
#: LoRA's recommended rank and at TT-LoRA's budget.
DEFAULT_METHODS: tuple[str, ...] = ("tt-lora", "lora", "lora-matched")
