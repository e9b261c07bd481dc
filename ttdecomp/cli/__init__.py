"""The ``ttdecomp`` command, one module per sub-command.

* ``ttdecomp finetune`` (:mod:`ttdecomp.cli.finetune`): fine-tune TT-LoRA next to LoRA (and
  LoRETTA, head-only) on a model and a labelled data set, and report accuracy against adapter
  parameters. Defaults: the packaged all-MiniLM-L6-v2 and tweets, offline.
* ``ttdecomp plan`` (:mod:`ttdecomp.cli.plan`): a TT-matrix compression plan for one weight
  shape or for every linear layer of a checkpoint.
* ``ttdecomp compress`` (:mod:`ttdecomp.cli.compress`): replace a model's linear layers by
  TT-matrix layers under one budget, report per layer and at the output, save the result.

Errors are printed as one line on stderr with exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import compress, finetune, plan
from .plan import parse_budget, parse_shape

__all__ = ["build_parser", "main", "parse_budget", "parse_shape"]


def build_parser() -> argparse.ArgumentParser:
    """The ``ttdecomp`` argument parser (also what the docs' CLI reference is generated from)."""
    parser = argparse.ArgumentParser(
        prog="ttdecomp", description="Tensor-train fine-tuning and compression tools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    finetune.add_parser(sub)
    plan.add_parser(sub)
    compress.add_parser(sub)
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
    args = build_parser().parse_args(argv)
    return args.run(args)
