"""The claim table of ``ttdecomp finetune`` runs, generated from their ``results.json`` files.

Every (method, rank, targets) of the given files is one row: adapter parameters, the fraction of
the reference's (LoRA r=8 by default), validation and test accuracy (mean ± std over seeds), and
the **paired** test difference to every LoRA row: the mean over the seeds both ran of
``this - that``, with its 95% t-interval (``t(0.975, n-1) * sd / sqrt(n)``; none for one seed).
The files must share one protocol (data, split sizes, epochs, batch, length): a table that
mixes protocols is refused. Each method's own settings (lr, α, schedule) are shown beside it.
The LoRA row at the smallest rank with at least TT-LoRA's adapter parameters is named
"(TT-LoRA's budget)"; the default run's ``lora-matched`` rows are LoRA's rows at that rank.

Usage::

    python scripts/claim_table.py RUN/results.json [RUN2/results.json ...]
        [--reference "LoRA r=8"] [--write docs/benchmarks.md --block minilm] [--costs]

``--write`` replaces the text between ``<!-- claim-table:NAME:begin -->`` and
``<!-- claim-table:NAME:end -->`` in the file (atomically); the markers must be there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# t(0.975, df) for df = 1..30 (two-sided 95%)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
NAMES = {"tt-lora": "TT-LoRA", "lora": "LoRA", "loretta-rep": "LoRETTA-rep",
          "loretta-adp": "LoRETTA-adp", "head-only": "head only"}  # fmt: skip
# what must agree between files for their rows to share a table
_PROTOCOL = ("model", "data", "sizes", "epochs", "max_steps", "batch_size", "max_length",
             "eval_every", "weight_decay", "task", "data_fingerprint")  # fmt: skip
_DEFAULT_TARGETS = ["query", "value"]
# methods that are another at a derived setting: lora-matched is LoRA at TT-LoRA's budget
_SAME_AS = {"lora-matched": "lora"}
#: how the LoRA row at the smallest rank with at least TT-LoRA's adapter parameters is named
BUDGET = "(TT-LoRA's budget)"


def load_script(name: str):
    """A script beside this one, loaded by path (the scripts folder is not a package)."""
    path = Path(__file__).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: the generated-block helpers the table scripts share
blocks = load_script("doc_blocks")


class ClaimTableError(blocks.BlockError):
    """The files cannot make one table (what was given, what was expected)."""


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom.

    Exact to 3 decimals from a table up to 30, a Cornish-Fisher expansion above.

    >>> t975(2), round(t975(1000), 3)
    (4.303, 1.962)
    """
    if df < 1:
        raise ClaimTableError(f"a t-interval needs at least 2 seeds; got {df + 1}.")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Mean of ``a[s] - b[s]`` over the seeds both have, with its 95% t-interval.

    >>> d = paired_difference({0: 0.92, 1: 0.90, 2: 0.91}, {0: 0.91, 1: 0.91, 2: 0.89})
    >>> round(d["mean"], 4), d["n"], [round(x, 4) for x in d["ci"]]
    (0.0067, 3, [-0.0313, 0.0446])
    """
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ClaimTableError(
            f"no seed in common (seeds {sorted(a)} against {sorted(b)}): a paired difference "
            "needs runs with the same seeds."
        )
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"mean": mean, "n": 1, "seeds": seeds, "ci": None}
    half = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return {"mean": mean, "n": len(diffs), "seeds": seeds, "ci": [mean - half, mean + half]}


def _label(method: str, rank: Any, targets: Sequence[str], tt_shape: Any) -> str:
    name = NAMES.get(method, method)
    if method == "tt-lora":
        shape = f" `[{','.join(map(str, tt_shape))}]`" if tt_shape else ""
        name += f"{shape} r={rank}"
    elif rank is not None:
        name += f" r={rank}"
    if list(targets) != _DEFAULT_TARGETS:
        name += f" ({','.join(targets)})"
    return name


def collect(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, Any]]:
    """The rows of every file grouped by label, checked to share one protocol."""
    if not paths:
        raise ClaimTableError("no results.json given; pass the files of the runs to tabulate.")
    groups: dict[str, dict[str, Any]] = {}
    protocol: dict[str, Any] | None = None
    first = None
    docs = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        with open(path, encoding="utf-8") as f:
            docs.append((path, json.load(f)))
    # targets are named in a row's label only where the files' targets differ
    shared = {tuple(d["config"]["identity"].get("targets") or _DEFAULT_TARGETS) for _, d in docs}
    # a method run with more than one α or lr: those are named in its rows' labels
    varied: dict[str, set[str]] = {}
    for _, d in docs:
        for row in d["rows"]:
            st = row.get("settings") or d["config"]["settings"][row["method"]]
            for key in ("alpha", "lr"):
                varied.setdefault(f"{row['method']}:{key}", set()).add(repr(st.get(key)))
    for path, doc in docs:
        identity = doc["config"]["identity"]
        mine = {k: identity.get(k) for k in _PROTOCOL}
        if protocol is None:
            protocol, first = mine, path
        elif mine != protocol:
            diff = {k: (protocol[k], mine[k]) for k in _PROTOCOL if protocol[k] != mine[k]}
            raise ClaimTableError(
                f"{path} was run with another protocol than {first}: {diff} (theirs, this); "
                "a claim table compares runs of one protocol only."
            )
        targets = identity.get("targets") or _DEFAULT_TARGETS
        if len(shared) == 1:
            targets = _DEFAULT_TARGETS  # one set of targets for every row: the label omits it
        for row in doc["rows"]:
            if row.get("test_accuracy") is None:
                raise ClaimTableError(f"{path}: {row['method']} seed {row['seed']} has no test.")
            settings = dict(row.get("settings") or doc["config"]["settings"][row["method"]])
            method = _SAME_AS.get(row["method"], row["method"])
            settings["method"] = method  # lora-matched's rows are LoRA's at that rank
            # per method or for all; files written before schedules existed ran at a constant
            # rate without warm-up
            for name, default in (("lr_schedule", "constant"), ("warmup_ratio", 0.0)):
                value = identity.get(name, default)
                value = value.get(row["method"], default) if isinstance(value, dict) else value
                settings[name] = value
            label = _label(method, settings.get("rank"), targets, settings.get("tt_shape"))
            for key, sign in (("alpha", "α"), ("lr", "lr ")):
                if len(varied[f"{row['method']}:{key}"]) > 1:
                    label += f" {sign}{'=' if key == 'alpha' else ''}{settings[key]:g}"
            group = groups.setdefault(
                label,
                {"label": label, "method": method, "rank": settings.get("rank"),
                 "adapter_params": row["adapter_params"], "settings": settings,
                 "val": {}, "test": {}, "train_s": {}, "peak": {}},
            )  # fmt: skip
            if settings != group["settings"]:
                raise ClaimTableError(
                    f"{label}: settings {settings} in {path}, {group['settings']} elsewhere; "
                    "the rows are not one configuration."
                )
            if row["seed"] in group["test"]:
                raise ClaimTableError(
                    f"{label} seed {row['seed']} appears twice ({path}); give each run once."
                )
            if row["adapter_params"] != group["adapter_params"]:
                raise ClaimTableError(
                    f"{label}: {row['adapter_params']} adapter parameters in {path}, "
                    f"{group['adapter_params']} elsewhere; the rows are not one configuration."
                )
            group["val"][row["seed"]] = float(row["val_accuracy"])
            group["test"][row["seed"]] = float(row["test_accuracy"])
            for key, name in (("train_s", "train_seconds"), ("peak", "peak_step_bytes")):
                if row.get(name) is not None:
                    group[key][row["seed"]] = float(row[name])
    return _name_budget_row(groups)


def _name_budget_row(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Name the LoRA row at TT-LoRA's budget: the smallest rank with at least its parameters.

    LoRA's adapter is linear in its rank, so a row of rank ``r`` with ``p`` parameters is that
    row when ``p >= budget > p - p / r``. With more than one TT-LoRA row nothing is named.
    """
    tt = [g for g in groups.values() if g["method"] == "tt-lora"]
    if len(tt) != 1:
        return groups
    budget = tt[0]["adapter_params"]
    out = {}
    for label, g in groups.items():
        p, r = g["adapter_params"], g["rank"]
        if g["method"] == "lora" and isinstance(r, int) and r > 0 and p >= budget > p - p // r:
            label = g["label"] = f"{label} {BUDGET}"
        out[label] = g
    return out


def _describe(settings: dict[str, Any]) -> str:
    """``lr 5e-3, α 32, cosine, warm-up 0.1``: what the label does not say."""
    parts = [f"lr {settings['lr']:g}"]
    if settings.get("alpha") is not None:
        parts.append(f"α {settings['alpha']:g}")
    parts.append(settings["lr_schedule"])
    if settings["warmup_ratio"]:
        parts.append(f"warm-up {settings['warmup_ratio']:g}")
    return ", ".join(parts)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def claim_table(
    paths: Sequence[str | os.PathLike], reference: str = "LoRA r=8", *, costs: bool = False
) -> tuple[list[dict[str, Any]], str]:
    """Per-row statistics and the markdown table (percent, mean ± std over seeds).

    Rows are ordered by adapter parameters; every row is compared (paired, on test) with every
    LoRA row other than itself. ``costs`` adds each row's training time (seconds, mean over
    seeds) and the peak memory of a training step (MiB, the largest over seeds), as the runs
    recorded them (``train_seconds``, ``peak_step_bytes``).
    """
    groups = collect(paths)
    named = {g["label"].removesuffix(f" {BUDGET}"): g["label"] for g in groups.values()}
    reference = named.get(reference, reference)
    if reference not in groups:  # "LoRA r=8" for "LoRA r=8 (attention.attn.q,...)"
        near = [label for label in groups if label.startswith(f"{reference} (")]
        reference = near[0] if len(near) == 1 else reference
    if reference not in groups:
        raise ClaimTableError(
            f"reference {reference!r} is not among the rows {sorted(groups)}; pass --reference."
        )
    ref_params = groups[reference]["adapter_params"]
    lora = sorted(
        (g for g in groups.values() if g["method"] == "lora"), key=lambda g: -g["adapter_params"]
    )
    stats = []
    for g in sorted(groups.values(), key=lambda g: (g["adapter_params"], g["label"])):
        val_mean, val_std = _mean_std(list(g["val"].values()))
        test_mean, test_std = _mean_std(list(g["test"].values()))
        stats.append(
            {
                "label": g["label"],
                "adapter_params": g["adapter_params"],
                "fraction": g["adapter_params"] / ref_params,
                "seeds": sorted(g["test"]),
                "val_mean": val_mean,
                "val_std": val_std,
                "test_mean": test_mean,
                "test_std": test_std,
                "settings": g["settings"],
                "train_seconds": statistics.fmean(g["train_s"].values()) if g["train_s"] else None,
                "peak_step_bytes": max(g["peak"].values()) if g["peak"] else None,
                "paired": {
                    other["label"]: paired_difference(g["test"], other["test"])
                    for other in lora
                    if other is not g
                },
            }
        )
    header = [
        "method",
        "settings",
        "adapter params",
        f"of {reference}",
        "seeds",
        "val acc %",
        "test acc %",
    ]
    header += [f"Δ test vs {g['label']} (95% CI)" for g in lora]
    if costs:
        header += ["train s", "peak step MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in stats:
        cells = [
            s["label"],
            _describe(s["settings"]),
            f"{s['adapter_params']:,}",
            f"{100 * s['fraction']:.1f}%",
            str(len(s["seeds"])),
            f"{100 * s['val_mean']:.1f} ± {100 * s['val_std']:.1f}",
            f"{100 * s['test_mean']:.1f} ± {100 * s['test_std']:.1f}",
        ]
        for g in lora:
            d = s["paired"].get(g["label"])
            if d is None:
                cells.append("—")
            elif d["ci"] is None:
                cells.append(f"{100 * d['mean']:+.1f} (1 seed)")
            else:
                lo, hi = (100 * x for x in d["ci"])
                cells.append(f"{100 * d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        if costs:
            t, m = s["train_seconds"], s["peak_step_bytes"]
            cells.append("—" if t is None else f"{t:,.0f}")
            cells.append("—" if m is None else f"{m / 2**20:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return stats, "\n".join(lines)


def write_block(path: str | os.PathLike, block: str, text: str) -> None:
    """Replace the text between the block's claim-table markers in ``path`` (atomic)."""
    blocks.write_block(path, block, text, kind="claim-table", error=ClaimTableError)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results.json files (or their run folders)")
    p.add_argument("--reference", default="LoRA r=8", help="the row fractions are taken of")
    p.add_argument("--write", help="a markdown file holding the block's markers")
    p.add_argument("--block", default="minilm", help="the block's name in --write's markers")
    p.add_argument("--json", help="also write the statistics to this JSON file")
    p.add_argument(
        "--costs", action="store_true", help="add training seconds and peak step memory columns"
    )
    args = p.parse_args(argv)
    try:
        stats, table = claim_table(args.results, args.reference, costs=args.costs)
        if args.write:
            write_block(args.write, args.block, table)
    except (ClaimTableError, OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"claim_table: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
