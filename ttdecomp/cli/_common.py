"""What the sub-commands of ``ttdecomp`` share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["RegistryHelpFormatter", "method_help", "progress_default"]


class RegistryHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help texts that may be callables, evaluated when ``--help`` is printed.

    Options whose text names the registered methods or their recommended settings read the
    Method registry only then (it imports torch), so it lists what is registered at run time.
    """

    def _format_action(self, action: argparse.Action) -> str:
        if callable(action.help):
            action.help = action.help()
        return super()._format_action(action)


def method_help(text: str, setting: str | None = None) -> Callable[[], str]:
    """A callable help: ``text`` + the registered methods, or their recommended ``setting``."""

    def render() -> Any:
        try:
            from ..finetune.methods import format_defaults, method_names
        except ImportError:  # no torch: the command says so when it runs
            return text
        if setting is None:
            return f"{text} {', '.join(method_names())}"
        return f"{text} ({format_defaults(setting=setting)})"

    return render


def progress_default(flag: bool | None) -> bool:
    """``--progress/--no-progress`` when given, else: bars when stderr is a terminal and tqdm
    is installed."""
    if flag is not None:
        return flag
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return sys.stderr.isatty()
