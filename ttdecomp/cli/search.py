"""``ttdecomp search``: HyperBand/TPE over TT shapes, ranks, α and learning rates, with a front.

The options are :class:`~ttdecomp.search.SearchConfig`'s fields (what is searched, and the
training of each trial, declared as ``ttdecomp finetune`` declares it) and :class:`SearchRun`'s
(the study and the output); the command is this parser and one call of
:func:`ttdecomp.search.search`.
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
from ._options import LIST_SYNTAX, HelpFormatter, add_options, option, values

__all__ = ["SearchRun", "add_parser", "run"]

EXAMPLES = """\
examples:
  ttdecomp search --quick                                  # a tiny space, 4 short trials
  ttdecomp search --pareto --n-trials 30                   # accuracy vs adapter parameters
  ttdecomp search --sampler grid --space space.yaml        # the exhaustive baseline
  ttdecomp search --param tt-lora.lr=1e-3:2e-2 --param lora.r=4,8,16
  ttdecomp search --epoch-budget 24 --startup-trials 4     # trials until 24 epochs are spent
  ttdecomp search --resume --output ttdecomp-search        # continue a stopped search
  ttdecomp search --workers 2 --threads 1                  # two processes on this machine
  ttdecomp search --storage postgresql://u:pw@host/db --study-name s1   # on every machine

"""

_STUDY = "study and output"


@dataclass
class SearchRun:
    """Where and how ``ttdecomp search`` runs (the keyword arguments of ``search``)."""

    output: str = option("ttdecomp-search", "search folder", _STUDY)
    storage: str | None = option(
        None,
        "Optuna RDB URL shared by all workers, e.g. postgresql://user:pw@host/db",
        _STUDY,
        type=str,
        default_text="sqlite:///OUTPUT/study.db",
    )
    study_name: str = option("ttdecomp-search", "the study's name", _STUDY)
    workers: int = option(1, "processes running trials on this machine (this one included)", _STUDY)
    threads: int | None = option(
        None, "torch threads per worker", _STUDY, type=int, default_text="torch's"
    )
    resume: bool = option(False, "continue the study", _STUDY)
    overwrite: bool = option(False, "replace a search in --output", _STUDY)
    retrain: bool = option(True, "re-train the best configurations on test", _STUDY)
    figures: bool = option(True, "the PNG figure", _STUDY)
    progress: bool | None = option(
        None,
        "the study's progress bar on stderr",
        _STUDY,
        type=bool,
        default_text="when stderr is a terminal",
    )

    def __post_init__(self) -> None:
        check_int(self.workers, "workers", low=1)
        check_int(self.threads, "threads", low=1, optional=True)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``search`` and its options (from the configs' fields) to the sub-commands."""
    from ..finetune.config import FinetuneConfig
    from ..finetune.methods import method_names
    from ..search.config import TRIAL_OPTIONS, SearchConfig

    p = sub.add_parser(
        "search",
        help="hyperparameter search (Optuna, HyperBand) of TT-LoRA and LoRA, with a Pareto front",
        description=(
            "Search TT-LoRA's shape, rank, alpha and learning rate (and LoRA's r, lora_alpha "
            "and learning rate) with Optuna: every trial is one `ttdecomp finetune` run scored "
            "on validation, pruned by HyperBand; --pareto also minimises adapter parameters. "
            "Writes search.json, a Pareto table and figure, and re-trains the best "
            "configurations to evaluate them once on test. Ctrl-C keeps every finished trial."
        ),
        epilog=EXAMPLES + textwrap.fill(LIST_SYNTAX, 78),
        formatter_class=HelpFormatter,
    )
    groups = add_options(p, SearchConfig, methods=method_names())
    add_options(p, FinetuneConfig, only=TRIAL_OPTIONS, groups=groups)  # each trial's training
    add_options(p, SearchRun, groups=groups)
    p.add_argument(
        "--config", metavar="RUN.yaml", help="options from a YAML file (keys: option names)"
    )
    p.set_defaults(run=run, parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``ttdecomp search`` with parsed ``args``; print the table; return the exit status."""
    from ..search.config import TRIAL_OPTIONS, SearchConfig
    from ..search.run import search

    def body(should_stop: Callable[[], bool]) -> int:
        trial = {name: getattr(args, name) for name in TRIAL_OPTIONS}
        config = SearchConfig(**values(args, SearchConfig), **trial)
        options = SearchRun(**values(args, SearchRun))
        kwargs = dataclasses.asdict(options)
        kwargs["progress"] = progress_default(options.progress)
        echo = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        result = search(config, **kwargs, echo=echo, should_stop=should_stop)
        print(result.table)
        line = f"\nsearch: {result.output / 'search.json'}"
        if result.figure is not None:
            line += f"; figure: {result.figure}"
        print(line)
        return 0

    return run_job(
        "search",
        args.parser,
        body,
        interrupted=lambda: (
            f"Every finished trial is kept in the study (and {args.output}/"
            "search.json); continue with the same options and --resume."
        ),
    )
