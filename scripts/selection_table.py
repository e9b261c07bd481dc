"""The selection table of the fair protocol, generated from the selection runs' ``results.json``.

One row per (method, configuration) of the given files: what differs from the method's first
row (targets, rank, α, lr, schedule), the adapter parameters, the validation accuracy after
every epoch and at the epoch validation chose. Per method the chosen configuration is the one
with the highest chosen-epoch validation accuracy; a tie is broken by the mean validation
accuracy over the epochs (the configuration that learns faster), and the table says so. Test
accuracy is not read.

Runs of several seeds (the later stages) are compared on their mean: one row per (method,
rank, configuration) with the chosen-epoch validation accuracy of every seed and their mean ±
std; per method and rank the configuration with the highest mean wins (ranks are not
compared: LoRA at TT-LoRA's budget is its own row and takes LoRA's settings). Every
configuration of a method must have run the same seeds.

Usage::

    python scripts/selection_table.py docs/results/minilm-selection/*.json
        [--write docs/benchmarks.md --block minilm-selection]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location(
    "claim_table", Path(__file__).resolve().parent / "claim_table.py"
)
claim_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(claim_table)

_DEFAULT_TARGETS = ["query", "value"]
# what must agree between selection runs (the test split may differ: it is not read)
_PROTOCOL = ("model", "data", "epochs", "max_steps", "batch_size", "max_length", "eval_every",
             "weight_decay", "task")  # fmt: skip


def _configuration(identity: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    method = row["method"]
    settings = row["settings"]

    def per_method(name: str, default: Any) -> Any:
        value = identity.get(name, default)
        return value.get(method, default) if isinstance(value, dict) else value

    return {
        "targets": ",".join(identity.get("targets") or _DEFAULT_TARGETS),
        "rank": settings.get("rank"),
        "alpha": settings.get("alpha"),
        "lr": settings["lr"],
        "schedule": per_method("lr_schedule", None) or "constant",
        "warm-up": per_method("warmup_ratio", None) or 0.0,
    }


def _describe(config: dict[str, Any]) -> str:
    targets = "q+v" if config["targets"] == ",".join(_DEFAULT_TARGETS) else config["targets"]
    parts = [targets, f"r={config['rank']}"]
    if config["alpha"] is not None:
        parts.append(f"α={config['alpha']:g}")
    parts.append(f"lr {config['lr']:g}")
    parts.append(config["schedule"])
    if config["warm-up"]:
        parts.append(f"warm-up {config['warm-up']:g}")
    return ", ".join(parts)


def selection_table(paths: Sequence[str | Path]) -> tuple[list[dict[str, Any]], str]:
    """The rows (validation only) and the markdown table; every file must have one seed."""
    rows = []
    protocol = first = None
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        doc = json.loads(path.read_text(encoding="utf-8"))
        identity = doc["config"]["identity"]
        mine = {k: identity.get(k) for k in _PROTOCOL}
        mine["train, validation"] = (identity.get("sizes") or [None, None])[:2]
        if protocol is None:
            protocol, first = mine, path
        elif mine != protocol:
            diff = {k: (protocol[k], v) for k, v in mine.items() if protocol[k] != v}
            raise claim_table.ClaimTableError(
                f"{path} was run with another protocol than {first}: {diff} (theirs, this)."
            )
        for row in doc["rows"]:
            curve = [h["val_accuracy"] for h in row["history"] if "val_accuracy" in h]
            if not curve:
                raise claim_table.ClaimTableError(f"{path}: {row['method']} has no validation.")
            config = _configuration(identity, row)
            rows.append({
                "method": row["method"], "seed": row["seed"], "config": config,
                "adapter_params": row["adapter_params"], "curve": curve,
                "best": row["val_accuracy"], "mean": statistics.fmean(curve),
                "file": path.parent.name,
            })  # fmt: skip
    seeds = {r["seed"] for r in rows}
    if len(seeds) > 1:
        return rows, _seeds_table(rows)
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    lines = [
        "| method | configuration | adapter params | val % per epoch | val % chosen | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for method, mine in by_method.items():
        top = max(r["best"] for r in mine)
        tied = [r for r in mine if r["best"] == top]
        winner = max(tied, key=lambda r: r["mean"])
        for r in mine:
            r["chosen"] = r is winner
            mark = ""
            if r["chosen"]:
                mark = "**chosen**" + (
                    f" (tie at {100 * top:.1f}: higher mean over epochs)" if len(tied) > 1 else ""
                )
            curve = ", ".join(f"{100 * v:.1f}" for v in r["curve"])
            name = claim_table.NAMES.get(method, method)
            lines.append(
                f"| {name} | {_describe(r['config'])} | {r['adapter_params']:,} | {curve} | "
                f"{100 * r['best']:.1f} | {mark} |"
            )
    return rows, "\n".join(lines)


def _seeds_table(rows: list[dict[str, Any]]) -> str:
    """Configurations run over several seeds, compared on their mean chosen-epoch validation."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["method"], r["config"]["rank"], tuple(sorted(r["config"].items())))
        fields = ("method", "config", "adapter_params")
        groups.setdefault(key, {"rows": [], **{k: r[k] for k in fields}})["rows"].append(r)
    for group in groups.values():
        seeds = [r["seed"] for r in group["rows"]]
        if len(set(seeds)) != len(seeds):
            raise claim_table.ClaimTableError(
                f"{claim_table.NAMES.get(group['method'], group['method'])} "
                f"{_describe(group['config'])} has seed(s) run twice: {sorted(seeds)} (files "
                f"{sorted(r['file'] for r in group['rows'])}); give each run once."
            )
        group["rows"].sort(key=lambda r: r["seed"])
        group["seeds"] = [r["seed"] for r in group["rows"]]
        group["vals"] = [r["best"] for r in group["rows"]]
        group["mean"] = statistics.fmean(group["vals"])
    by_pick: dict[tuple, list[dict[str, Any]]] = {}
    for (method, rank, _), group in groups.items():
        by_pick.setdefault((method, rank), []).append(group)
    lines = [
        "| method | configuration | adapter params | seeds | val % chosen, per seed | "
        "val % mean ± std | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    # rows ordered by adapter parameters, as in the claim table (not by the files' order)
    order = sorted(by_pick, key=lambda k: (by_pick[k][0]["adapter_params"], k[0], k[1]))
    for method, rank in order:
        mine = by_pick[(method, rank)]
        if len({tuple(g["seeds"]) for g in mine}) != 1:
            seen = {_describe(g["config"]): g["seeds"] for g in mine}
            raise claim_table.ClaimTableError(
                f"the configurations of {method} r={rank} ran different seeds: {seen}; "
                "compare configurations over the same seeds."
            )
        top = max(g["mean"] for g in mine)
        tied = [g for g in mine if g["mean"] == top]
        for g in sorted(mine, key=lambda g: (-g["mean"], _describe(g["config"]))):
            mark = "**chosen**" if g["mean"] == top else ""
            if mark and len(tied) > 1:
                mark += " (tied)"
            vals = ", ".join(f"{100 * v:.1f}" for v in g["vals"])
            std = statistics.stdev(g["vals"]) if len(g["vals"]) > 1 else 0.0
            seeds = f"{g['seeds'][0]}–{g['seeds'][-1]}" if len(g["seeds"]) > 1 else g["seeds"][0]
            name = claim_table.NAMES.get(method, method)
            lines.append(
                f"| {name} | {_describe(g['config'])} | {g['adapter_params']:,} | {seeds} | "
                f"{vals} | {100 * g['mean']:.1f} ± {100 * std:.1f} | {mark} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results.json files (or their run folders)")
    p.add_argument("--write", help="a markdown file holding the block's markers")
    p.add_argument("--block", default="minilm-selection", help="the block's name in the markers")
    args = p.parse_args(argv)
    write = (lambda t: claim_table.write_block(args.write, args.block, t)) if args.write else None
    return claim_table.blocks.run(
        "selection_table", lambda: selection_table(args.results)[1], write
    )


if __name__ == "__main__":
    sys.exit(main())
