"""What the sub-commands of ``ttdecomp`` share."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator

__all__ = [
    "RegistryHelp",
    "RegistryHelpFormatter",
    "method_help",
    "progress_default",
    "warnings_as_lines",
]


class RegistryHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help texts that name the registered methods, rendered when ``--help`` is printed.

    Options whose text names the registered methods or their recommended settings read the
    Method registry only then (it imports torch), so it lists what is registered at run time;
    anything else reading the parser (the docs' CLI reference) sees the plain text.
    """

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action.help, RegistryHelp):
            action.help = action.help.render()
        return super()._format_action(action)


class RegistryHelp(str):
    """A help text (its plain value) that :class:`RegistryHelpFormatter` completes from the
    Method registry."""

    setting: str | None = None

    def render(self) -> str:
        try:
            from ..finetune.methods import format_defaults, method_names
        except ImportError:  # no torch: the command says so when it runs
            return str(self)
        if self.setting is None:
            return f"{self}: {', '.join(method_names())}"
        return f"{self} ({format_defaults(setting=self.setting)})"


def method_help(text: str, setting: str | None = None) -> RegistryHelp:
    """``text`` followed, in ``--help``, by the registered methods or their recommended
    ``setting``."""
    out = RegistryHelp(text)
    out.setting = setting
    return out


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


@contextlib.contextmanager
def warnings_as_lines(command: str) -> Iterator[None]:
    """Print the library's warnings raised inside as ``ttdecomp COMMAND: warning: ...`` lines
    on stderr, once each (not Python's file:line format meant for developers)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                text = str(w.message)
                if text not in seen:
                    seen.add(text)
                    print(f"ttdecomp {command}: warning: {text}", file=sys.stderr)
