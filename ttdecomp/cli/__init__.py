"""The ``ttdecomp`` command, one module per sub-command.

* ``ttdecomp finetune`` (:mod:`ttdecomp.cli.finetune`): fine-tune TT-LoRA next to LoRA (and
  LoRETTA, head-only) on a model and a labelled data set, and report accuracy against adapter
  parameters. Defaults: the packaged all-MiniLM-L6-v2 and tweets.
* ``ttdecomp plan`` (:mod:`ttdecomp.cli.plan`): a TT-matrix compression plan for one weight
  shape or for every linear layer of a checkpoint.
* ``ttdecomp compress`` (:mod:`ttdecomp.cli.compress`): replace a model's linear layers by
  TT-matrix layers under one budget, report per layer and at the output, save the result.
* ``ttdecomp search`` (:mod:`ttdecomp.cli.search`): an Optuna study (TPE or grid, HyperBand)
  over TT-LoRA's and LoRA's hyperparameters, with the Pareto front of accuracy vs parameters.

Only the sub-command named on the command line is built (its options come from its config's
fields, which may import torch); ``ttdecomp --help`` and ``ttdecomp --version`` import nothing
heavy. A sub-command whose extra is not installed says which ``pip install`` brings it.
Errors are printed as one line on stderr with exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence

from ..errors import TTError
from ._options import apply_config_file, error_message
from .plan import parse_budget, parse_shape

__all__ = ["build_parser", "main", "parse_budget", "parse_shape", "version"]

#: Sub-command: (module, one-line help, the extra it needs).
COMMANDS = {
    "finetune": (
        "ttdecomp.cli.finetune",
        "fine-tune TT-LoRA next to LoRA and report accuracy vs adapter parameters",
        "finetune",
    ),
    "plan": ("ttdecomp.cli.plan", "a TT-matrix compression plan for a shape or checkpoint", "cli"),
    "compress": (
        "ttdecomp.cli.compress",
        "compress a model's linear layers into TT-matrix layers and measure it",
        "torch,hf",
    ),
    "search": (
        "ttdecomp.cli.search",
        "hyperparameter search (Optuna, HyperBand) of TT-LoRA and LoRA, with a Pareto front",
        "finetune,search",
    ),
}


def version() -> str:
    """The installed package's version (``importlib.metadata``), e.g. ``"0.1.0"``."""
    import importlib.metadata

    try:
        return importlib.metadata.version("ttdecomp")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path
        from .. import __version__

        return __version__


def _stub(sub: argparse._SubParsersAction, name: str, missing: str | None) -> None:
    """A sub-command that is not built: its help line, and the install hint if ``missing``."""
    _, text, extra = COMMANDS[name]
    hint = None
    if missing is not None:
        hint = (
            f"ttdecomp {name} needs {missing}, which is not installed; install it with\n"
            f'    pip install "ttdecomp[{extra}]"'
        )
    p = sub.add_parser(name, help=text, description=hint or text, add_help=missing is not None)
    p.set_defaults(run=None, missing=hint)


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``ttdecomp`` argument parser with ``commands`` built in full (default: all).

    The docs' CLI reference is generated from ``build_parser()``.
    """
    parser = argparse.ArgumentParser(
        prog="ttdecomp",
        description="Tensor-train fine-tuning and compression tools.",
        epilog="Run 'ttdecomp COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"ttdecomp {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    full = set(COMMANDS if commands is None else commands)
    for name, (module, _, _) in COMMANDS.items():
        if name not in full:
            _stub(sub, name, None)
            continue
        try:
            importlib.import_module(module).add_parser(sub)
        except ImportError as exc:
            sub.choices.pop(name, None)  # a parser half added before the import failed
            sub._choices_actions[:] = [a for a in sub._choices_actions if a.dest != name]
            _stub(sub, name, getattr(exc, "name", None) or str(exc))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ttdecomp`` command; returns the exit status.

    Examples
    --------
    >>> main(["plan", "768x768", "--budget", "5000"])  # doctest: +ELLIPSIS
    TT plan for a 768 x 768 weight: split layout, 8 cores, tt_shape [16, 4, 4, 3, 3, 4, 4, 16]
    ...
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([command] if command in COMMANDS else [])
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "missing", None):
        print(f"ttdecomp {args.command}: error: {args.missing}", file=sys.stderr)
        return 2
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "config", None) is not None:
        try:
            apply_config_file(args.parser, args.config)
        except TTError as exc:
            print(
                f"ttdecomp {args.command}: error: {error_message(exc, args.parser)}",
                file=sys.stderr,
            )
            return 2
        args = parser.parse_args(argv)
    return args.run(args)
