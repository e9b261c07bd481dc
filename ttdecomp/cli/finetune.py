"""``ttdecomp finetune``: TT-LoRA next to LoRA on a real model and data, offline, with a report.

Defaults: the packaged all-MiniLM-L6-v2 on the packaged tweets (positive vs negative), TT-LoRA
and LoRA on the query and value projections, one seed::

    ttdecomp finetune                                  # about 3 minutes on 2 CPU cores
    ttdecomp finetune --seeds 0,1,2 --output claim     # the table with mean ± std
    ttdecomp finetune --quick                          # a 1-minute end-to-end check
    ttdecomp finetune --methods tt-lora,lora,loretta-rep,loretta-adp,head-only
    ttdecomp finetune --data reviews.csv --model path/to/hf-model --targets query,value
    ttdecomp finetune --model smollm2 --data chatterbot  # causal LM: loss, perplexity, a reply
    torchrun --nproc_per_node 2 -m ttdecomp finetune   # same results, two processes

Per-method settings take one value (every method that has the setting) or ``method=value``
pairs: ``--lr tt-lora=5e-3,lora=1e-3``. Nothing is trained before every option, the model, the
data and the targets are checked; errors are one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from ..errors import TTError
from ._common import RegistryHelpFormatter, method_help, progress_default

__all__ = ["add_parser", "parse_per_method", "run"]


def parse_per_method(kind: type) -> Any:
    """An argparse ``type``: ``"5e-3"`` → 0.005, ``"tt-lora=5e-3,lora=1e-3"`` → a dict.

    Examples
    --------
    >>> parse_per_method(float)("tt-lora=5e-3,lora=1e-3")
    {'tt-lora': 0.005, 'lora': 0.001}
    >>> parse_per_method(int)("4")
    4
    """

    def convert(text: str) -> Any:
        def one(value: str) -> Any:
            try:
                return kind(value)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{value!r} is not a{'n integer' if kind is int else ' number'}"
                ) from None

        if "=" not in text:
            return one(text.strip())
        out = {}
        for part in text.split(","):
            method, sep, value = part.partition("=")
            method = method.strip()  # a registered method: FinetuneConfig checks it
            if not sep or not method:
                raise argparse.ArgumentTypeError(
                    f"{part!r}: expected METHOD=VALUE, e.g. tt-lora=5e-3,lora=1e-3"
                )
            out[method] = one(value.strip())
        return out

    return convert


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 0,1,2)"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``finetune`` and its options to the ``ttdecomp`` sub-commands."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune TT-LoRA next to LoRA and report accuracy vs adapter parameters",
        description=(
            "Fine-tune TT-LoRA, LoRA (PEFT), LoRETTA and head-only on one pretrained model and "
            "one labelled data set; report validation-chosen test accuracy (mean ± std over "
            "seeds) against adapter parameters, with results.json, saved adapters and figures."
        ),
        formatter_class=RegistryHelpFormatter,
    )
    g = p.add_argument_group("what to compare")
    g.add_argument(
        "--model",
        default="minilm",
        help="packaged model (minilm, smollm2, mpnet), a local Hugging Face folder, or a "
        "Hub id (org/name, from the Hub or its cache)",
    )
    g.add_argument(
        "--data",
        default="tweets",
        help="packaged data (tweets, chatterbot), a CSV/JSONL file with text,label "
        "columns, a folder saved by datasets, or a Hub dataset id",
    )
    g.add_argument("--revision", help="a Hub model's branch, tag or commit")
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code a Hub model ships (only for repositories you trust)",
    )
    g.add_argument("--data-config", help="a Hub dataset's configuration (e.g. sst2 of glue)")
    g.add_argument("--text-column", default="text", help="the column holding the text")
    g.add_argument("--label-column", default="label", help="the column holding the label")
    g.add_argument(
        "--methods",
        type=_name_list,
        default="tt-lora,lora",
        help=method_help("comma-separated, from the registered methods"),
    )
    g.add_argument(
        "--seeds", type=_int_list, default="0", help="one run per seed and method, e.g. 0,1,2"
    )
    g.add_argument(
        "--targets",
        type=_name_list,
        default=None,
        help="target modules (default: the query and value projections)",
    )
    g = p.add_argument_group("method settings (VALUE or METHOD=VALUE,...)")
    g.add_argument(
        "--rank",
        type=parse_per_method(int),
        default=None,
        help=method_help("TT-LoRA tt_rank, LoRA r, LoRETTA tensor_rank", "rank"),
    )
    g.add_argument(
        "--alpha",
        type=parse_per_method(float),
        default=None,
        help=method_help("TT-LoRA alpha, LoRA lora_alpha, LoRETTA-rep alpha", "alpha"),
    )
    g.add_argument(
        "--lr",
        type=parse_per_method(float),
        default=None,
        help=method_help("learning rate", "lr"),
    )
    g.add_argument(
        "--tt-shape",
        type=_int_list,
        default=None,
        help="TT-LoRA flat shape, input then output factors (default per layer: "
        "three balanced factors a side, e.g. 8,6,8,8,6,8)",
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs (4, --quick 3; causal LMs 1, --quick 8 steps)",
    )
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps instead of epochs")
    g.add_argument(
        "--batch-size", type=int, default=None, help="global batch size (32; causal LMs 8)"
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text (48, --quick 32; causal LMs 128, --quick 64)",
    )
    g.add_argument(
        "--eval-every", type=int, default=None, help="validate every N steps (default: every epoch)"
    )
    g.add_argument("--train-size", type=int, default=None, help="training examples (1000)")
    g.add_argument("--val-size", type=int, default=None, help="validation examples (300)")
    g.add_argument("--test-size", type=int, default=None, help="test examples (600)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per run (default: torch's, or the cores shared out among "
        "--jobs runs; 1 is often faster on a busy machine)",
    )
    g.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs made at once, one process each (default: 2 on a CPU with 2 or more cores "
        "and 2 or more runs, else 1; --jobs 1 runs one after another)",
    )
    g.add_argument(
        "--quick",
        action="store_true",
        help="small end-to-end check: 320/100/200 examples, 3 epochs, 32 tokens",
    )
    g = p.add_argument_group("output")
    g.add_argument("--output", default="ttdecomp-finetune", help="run folder")
    g.add_argument(
        "--resume", action="store_true", help="continue the run in --output: finished rows are kept"
    )
    g.add_argument(
        "--overwrite", action="store_true", help="replace the results of a previous run in --output"
    )
    g.add_argument(
        "--no-figures",
        dest="figures",
        action="store_false",
        help="do not draw the PNG figures (matplotlib not needed)",
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(run=run)
    return p


def _sizes(args: argparse.Namespace) -> tuple[int | None, int | None, int | None] | None:
    given = (args.train_size, args.val_size, args.test_size)
    return None if all(v is None for v in given) else given


def run(args: argparse.Namespace) -> int:
    """Run ``ttdecomp finetune`` with parsed ``args``; print the table; return the exit status."""
    try:
        importlib.import_module("ttdecomp.finetune.run")  # torch, transformers, peft
        from ..finetune.train import is_main_process
    except ImportError as exc:
        print(
            f"ttdecomp finetune: error: {exc}; install the fine-tuning extras with\n"
            '    pip install torch==2.13.0 && pip install "ttdecomp[torch,hf]" peft',
            file=sys.stderr,
        )
        return 2
    from ..runs.pool import stop_on_signals

    main = is_main_process()
    # Ctrl-C and SIGTERM (timeout, a CI cancel, kill) stop the same way: finished rows kept
    with stop_on_signals() as should_stop:
        return _run(args, main, should_stop)


def _saved(output: str) -> str:
    """What an interrupted run left: its finished rows, or nothing."""
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


def _run(args: argparse.Namespace, main: bool, should_stop: Any) -> int:
    from ..finetune.run import FinetuneConfig, finetune

    for flag, value in (("--threads", args.threads), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            print(f"ttdecomp finetune: error: {flag} {value} must be >= 1.", file=sys.stderr)
            return 2
    echo = (lambda line: print(line, file=sys.stderr, flush=True)) if main else None
    try:
        config = FinetuneConfig(
            model=args.model,
            data=args.data,
            methods=args.methods,
            seeds=args.seeds,
            rank=args.rank,
            alpha=args.alpha,
            lr=args.lr,
            tt_shape=args.tt_shape,
            epochs=args.epochs,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            eval_every=args.eval_every,
            targets=args.targets,
            sizes=_sizes(args),
            device=args.device,
            quick=args.quick,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            data_config=args.data_config,
            text_column=args.text_column,
            label_column=args.label_column,
        )
        result = finetune(
            config,
            output=args.output,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=progress_default(args.progress) and main,
            figures=args.figures,
            echo=echo,
            should_stop=should_stop,
            jobs=args.jobs,
            threads=args.threads,
        )
    except KeyboardInterrupt:
        if main:
            print(f"\nttdecomp finetune: interrupted. {_saved(args.output)}", file=sys.stderr)
        return 130
    except (TTError, FileNotFoundError) as exc:
        if main:
            print(f"ttdecomp finetune: error: {exc}", file=sys.stderr)
        return 2
    if main:
        print(result.table)
        print(f"\nresults: {result.output / 'results.json'}", end="")
        if result.figures:
            print(f"; figures: {', '.join(str(p) for p in result.figures)}", end="")
        print()
    return 0
