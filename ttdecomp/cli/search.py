"""``ttdecomp search``: HyperBand/TPE over TT shapes, ranks, α and learning rates, with a front.

Defaults: TT-LoRA and LoRA on the packaged all-MiniLM-L6-v2 and tweets, 20 TPE trials pruned
by HyperBand, a SQLite study in the output folder::

    ttdecomp search --quick                                  # a tiny space, 4 short trials
    ttdecomp search --pareto --n-trials 30                   # accuracy vs adapter parameters
    ttdecomp search --sampler grid --space space.yaml        # the exhaustive baseline
    ttdecomp search --param tt-lora.lr=1e-3:2e-2 --param lora.r=4,8,16
    ttdecomp search --epoch-budget 24 --startup-trials 4     # trials until 24 epochs are spent
    ttdecomp search --resume --output ttdecomp-search        # continue a stopped search
    ttdecomp search --workers 2 --threads 1                  # two processes on this machine
    ttdecomp search --storage postgresql://u:pw@host/db --study-name s1   # on every machine

Errors are one line on stderr with exit status 2; Ctrl-C keeps every finished trial (exit 130).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from ..errors import TTError
from ._common import RegistryHelpFormatter, method_help, progress_default

__all__ = ["add_parser", "run"]


def _name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``search`` and its options to the ``ttdecomp`` sub-commands."""
    p = sub.add_parser(
        "search",
        help="hyperparameter search (Optuna, HyperBand) of TT-LoRA and LoRA, with a Pareto front",
        description=(
            "Search TT-LoRA's shape, rank, alpha and learning rate (and LoRA's r, lora_alpha "
            "and learning rate) with Optuna: every trial is one `ttdecomp finetune` run scored "
            "on validation, pruned by HyperBand; --pareto also minimises adapter parameters. "
            "Writes search.json, a Pareto table and figure, and re-trains the best "
            "configurations to evaluate them once on test."
        ),
        formatter_class=RegistryHelpFormatter,
    )
    g = p.add_argument_group("what to search")
    g.add_argument("--model", default="minilm", help="packaged model or a local HF folder")
    g.add_argument("--data", default="tweets", help="packaged data, a CSV/JSONL file or folder")
    g.add_argument(
        "--methods",
        type=_name_list,
        default="tt-lora,lora",
        help=method_help("methods searched, from the registered methods"),
    )
    g.add_argument("--targets", type=_name_list, default=None, help="target modules")
    g.add_argument(
        "--space", default=None, help="a YAML or JSON file: {method: {param: values or range}}"
    )
    g.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=SPEC",
        help="override one parameter: LOW:HIGH[:log|:linear], V1,V2,... or one value; "
        "tt_shape choices separated by / (repeatable)",
    )
    g.add_argument("--sampler", default="tpe", help="tpe, grid (every configuration) or random")
    g.add_argument(
        "--pruner", default=None, help="hyperband or none (default: hyperband; none for grid)"
    )
    g.add_argument(
        "--n-trials", type=int, default=None, help="finished trials (default 20; grid: all)"
    )
    g.add_argument(
        "--pareto", action="store_true", help="also minimise adapter parameters (no pruning)"
    )
    g.add_argument(
        "--epoch-budget",
        type=float,
        default=None,
        help="training epochs the search may spend over all its trials: trials are sampled "
        "until it is spent (pruned trials count the epochs they ran)",
    )
    g.add_argument(
        "--startup-trials",
        type=int,
        default=None,
        help="TPE's random trials before it models the results (Optuna's default 10)",
    )
    g.add_argument(
        "--reduction-factor",
        type=int,
        default=3,
        help="HyperBand keeps the best 1/N of a bracket's trials at each rung",
    )
    g.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    g.add_argument("--grid-points", type=int, default=3, help="values a range takes on the grid")
    g = p.add_argument_group("training (each trial)")
    g.add_argument("--epochs", type=int, default=None, help="epochs (4; --quick 2)")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps instead")
    g.add_argument("--batch-size", type=int, default=None, help="global batch size (32)")
    g.add_argument("--max-length", type=int, default=None, help="tokens per text (48)")
    g.add_argument("--eval-every", type=int, default=None, help="validate every N steps")
    g.add_argument("--train-size", type=int, default=None, help="training examples (1000)")
    g.add_argument("--val-size", type=int, default=None, help="validation examples (300)")
    g.add_argument("--test-size", type=int, default=None, help="test examples (600)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    g.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    g.add_argument(
        "--quick",
        action="store_true",
        help="tiny space, 4 trials of 2 epochs on 160 examples (under 2 minutes)",
    )
    g = p.add_argument_group("study and output")
    g.add_argument("--output", default="ttdecomp-search", help="search folder")
    g.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL shared by all workers, e.g. postgresql://user:pw@host/db "
        "(default: sqlite:///OUTPUT/study.db)",
    )
    g.add_argument("--study-name", default="ttdecomp-search", help="the study's name")
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes running trials on this machine (this one included)",
    )
    g.add_argument("--resume", action="store_true", help="continue the study")
    g.add_argument("--overwrite", action="store_true", help="replace a search in --output")
    g.add_argument(
        "--no-retrain",
        dest="retrain",
        action="store_false",
        help="do not re-train the best configurations on test",
    )
    g.add_argument("--no-figures", dest="figures", action="store_false", help="no PNG figure")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the study's progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``ttdecomp search`` with parsed ``args``; print the table; return the exit status."""
    try:
        importlib.import_module("ttdecomp.search.run")
    except ImportError as exc:
        print(
            f"ttdecomp search: error: {exc}; install the search extras with\n"
            '    pip install torch==2.13.0 && pip install "ttdecomp[torch,hf,finetune,search]"',
            file=sys.stderr,
        )
        return 2
    from ..runs.pool import stop_on_signals

    # Ctrl-C and SIGTERM (timeout, a CI cancel, kill) stop the same way: finished trials kept
    with stop_on_signals() as should_stop:
        return _run(args, should_stop)


def _sizes(args: argparse.Namespace) -> tuple[int, int, int] | None:
    given = (args.train_size, args.val_size, args.test_size)
    return None if all(v is None for v in given) else given


def _run(args: argparse.Namespace, should_stop: Any) -> int:
    from ..search.run import SearchConfig, search

    echo = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        config = SearchConfig(
            model=args.model,
            data=args.data,
            methods=args.methods,
            space=args.space,
            params=args.param,
            sampler=args.sampler,
            pruner=args.pruner,
            n_trials=args.n_trials,
            epoch_budget=args.epoch_budget,
            startup_trials=args.startup_trials,
            reduction_factor=args.reduction_factor,
            pareto=args.pareto,
            seed=args.seed,
            grid_points=args.grid_points,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            eval_every=args.eval_every,
            targets=args.targets,
            sizes=_sizes(args),
            device=args.device,
            quick=args.quick,
        )
        result = search(
            config,
            output=args.output,
            storage=args.storage,
            study_name=args.study_name,
            workers=args.workers,
            threads=args.threads,
            resume=args.resume,
            overwrite=args.overwrite,
            retrain=args.retrain,
            progress=progress_default(args.progress),
            figures=args.figures,
            echo=echo,
            should_stop=should_stop,
        )
    except KeyboardInterrupt:
        print(
            f"\nttdecomp search: interrupted. Every finished trial is kept in the study "
            f"(and {args.output}/search.json); continue with the same options and --resume.",
            file=sys.stderr,
        )
        return 130
    except (TTError, FileNotFoundError) as exc:
        print(f"ttdecomp search: error: {exc}", file=sys.stderr)
        return 2
    print(result.table)
    print(f"\nsearch: {result.output / 'search.json'}", end="")
    if result.figure is not None:
        print(f"; figure: {result.figure}", end="")
    print()
    return 0
