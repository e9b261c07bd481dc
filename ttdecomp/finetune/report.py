"""The report of a fine-tuning run: the table, ``results.json`` and two figures.

Rows are ``(method, seed)`` runs; the table has one line per method with the mean ± standard
deviation over seeds (sample standard deviation, ``ddof=1``; a single seed shows no ±).
``results.json`` is rewritten atomically (:mod:`ttdecomp._files`: a temporary file in the same
folder, then ``os.replace``) after every finished row, so an interrupt never leaves it
half-written and never loses a finished row.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._files import read_json, write_json, write_with
from ..errors import InvalidInputError
from .methods import get_method, method_names
from .tasks import get_task

__all__ = [
    "format_table",
    "load_results",
    "read_train_log",
    "summarize",
    "write_figures",
    "write_json_atomic",
    "write_loss_figure",
]

RESULTS_FILE = "results.json"
#: The method every other's adapter size is compared with ("of LoRA" in the table).
REFERENCE_METHOD = "lora"


def method_colour(method: str) -> str | None:
    """The registered method's figure colour (``None`` for a method no longer registered,
    e.g. in a results file written with a plug-in)."""
    return get_method(method).colour if method in method_names() else None


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    Examples
    --------
    >>> import tempfile, os, json
    >>> p = os.path.join(tempfile.mkdtemp(), "r.json")
    >>> write_json_atomic(p, {"a": 1}); json.load(open(p))
    {'a': 1}
    """
    write_json(path, data)


def load_results(output: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a run folder (an error naming the file if it is not one).

    Examples
    --------
    >>> import tempfile
    >>> from ttdecomp.finetune import FinetuneConfig, finetune, load_results
    >>> from ttdecomp.finetune.testing import tiny_classifier_folder, toy_sentiment_csv
    >>> tmp = tempfile.mkdtemp()
    >>> config = FinetuneConfig(model=str(tiny_classifier_folder(tmp + "/model")),
    ...                         data=str(toy_sentiment_csv(tmp + "/toy.csv", n=120)),
    ...                         methods=["tt-lora"], epochs=1, sizes=(40, 20, 20), batch_size=8)
    >>> _ = finetune(config, output=tmp + "/out", progress=False, figures=False,
    ...              echo=lambda line: None)
    >>> results = load_results(tmp + "/out")
    >>> results["complete"], [row["method"] for row in results["rows"]]
    (True, ['tt-lora'])
    """
    path = Path(output) / RESULTS_FILE
    if not path.exists():
        raise InvalidInputError(
            f"{path} does not exist: {output} holds no ttdecomp finetune results."
        )
    data = read_json(path, what="a results.json written by ttdecomp finetune")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise InvalidInputError(f"{path} has no 'rows' list; it was not written by ttdecomp.")
    return data


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def summarize(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One summary per method (in ``methods`` order): means and standard deviations over seeds.

    ``lora_fraction`` is the method's adapter parameters over LoRA's
    (:data:`REFERENCE_METHOD`), when LoRA ran.

    Examples
    --------
    >>> rows = [{"method": "lora", "seed": s, "adapter_params": 100, "extra_params": 2,
    ...          "val_accuracy": 0.9, "test_accuracy": a, "train_seconds": 1.0,
    ...          "step_seconds": 0.1, "peak_step_bytes": 10} for s, a in [(0, 0.8), (1, 0.9)]]
    >>> s = summarize(rows, ["lora"])[0]
    >>> s["seeds"], round(s["test_accuracy_mean"], 3), round(s["test_accuracy_std"], 4)
    ([0, 1], 0.85, 0.0707)
    """
    lora = [r["adapter_params"] for r in rows if r["method"] == REFERENCE_METHOD]
    out = []
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        summary: dict[str, Any] = {
            "method": method,
            "seeds": [r["seed"] for r in mine],
            "adapter_params": mine[0]["adapter_params"],
            "extra_params": mine[0]["extra_params"],
            "lora_fraction": (mine[0]["adapter_params"] / lora[0]) if lora and lora[0] else None,
            "rank": (mine[0].get("settings") or {}).get("rank"),
        }
        metrics = [k for k in mine[0] if _is_metric(k, mine[0][k])]
        for key in metrics:
            values = [float(r[key]) for r in mine if r.get(key) is not None]
            if values:
                mean, std = _mean_std(values)
                summary[f"{key}_mean"], summary[f"{key}_std"] = mean, std
        out.append(summary)
    return out


_NOT_METRICS = {"seed", "adapter_params", "extra_params", "steps", "best_step", "best_epoch"}


def _is_metric(key: str, value: Any) -> bool:
    return (
        key not in _NOT_METRICS
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _pm(summary: dict[str, Any], key: str, scale: float = 1.0, digits: int = 1) -> str:
    mean = summary.get(f"{key}_mean")
    if mean is None:
        return "-"
    std = summary.get(f"{key}_std")
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _count(n: int) -> str:
    return f"{n:,}"


def _method_label(summary: dict[str, Any]) -> str:
    """The method's name, with its rank where the run derived it (``lora-matched (r=1)``)."""
    method = summary["method"]
    derived = method in method_names() and get_method(method).matches is not None
    rank = summary.get("rank")
    return f"{method} (r={rank})" if derived and rank is not None else method


def _family_lines(ax: Any, summaries: Sequence[dict[str, Any]], key: str, scale: float) -> None:
    """Join the means of one family's methods (LoRA at its rank and at TT-LoRA's budget)."""
    families: dict[str, list[tuple[int, float]]] = {}
    for s in summaries:
        mean = s.get(f"{key}_mean")
        if mean is None or s["adapter_params"] <= 0 or s["method"] not in method_names():
            continue
        family = get_method(s["method"]).family_name
        families.setdefault(family, []).append((s["adapter_params"], mean * scale))
    for family, points in families.items():
        if len(points) > 1:
            points.sort()
            colour = method_colour(family) if family in method_names() else None
            ax.plot(*zip(*points), linestyle="-", linewidth=1, alpha=0.6, color=colour,
                    label=f"{family} (means joined)")  # fmt: skip


def format_table(summaries: Sequence[dict[str, Any]], task: str = "classification") -> str:
    """The final table as text, one line per method.

    Method, adapter parameters, extras (head, norms), fraction of LoRA's, the task's columns
    (:meth:`~ttdecomp.finetune.tasks.Task.table`: classification's validation and test
    accuracy, %, mean ± std; a causal LM's test loss and perplexity before → after), train
    time, step time, peak step memory.
    """
    task_header, task_cells = get_task(task).table(_pm)
    header = ["method", "adapter params", "extras", "of LoRA", *task_header]
    header += ["train s", "step ms", "peak MiB", "seeds"]
    lines = []
    for s in summaries:
        fraction = "-" if s["lora_fraction"] is None else f"{100 * s['lora_fraction']:.1f}%"
        cells = [_method_label(s), _count(s["adapter_params"]), _count(s["extra_params"]), fraction]
        cells += task_cells(s)
        cells += [
            _pm(s, "train_seconds"),
            _pm(s, "step_seconds", 1000),
            _pm(s, "peak_step_bytes", 2**-20),
            str(len(s["seeds"])),
        ]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(c) for c in lines)])


def write_figures(
    rows: Sequence[dict[str, Any]],
    summaries: Sequence[dict[str, Any]],
    folder: str | os.PathLike,
    task: str = "classification",
) -> list[Path]:
    """Two PNG figures (matplotlib, Agg backend, no global style change); returns their paths.

    ``accuracy_vs_params.png``: the task's test metric (accuracy for classification, loss
    for a causal LM) against adapter parameters on a log axis, every seed as a point and the
    mean ± std per method on top, in the method's registered colour, the means of one family
    (``lora`` and ``lora-matched``) joined by a line; a method without adapter
    parameters (``head-only``) is drawn as a horizontal line. ``validation_curves.png``: the
    validation metric at every evaluation, mean over seeds with a ±std band, per method.
    """
    from matplotlib.figure import Figure

    folder = Path(folder)
    spec = get_task(task)
    key, val_key = spec.test_metric, spec.metric
    label, scale = spec.figure_label, spec.figure_scale
    paths = []

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.subplots()
    for s in summaries:
        mean = s.get(f"{key}_mean")
        if mean is None:
            continue
        std = s.get(f"{key}_std") or 0.0
        colour = method_colour(s["method"])
        if s["adapter_params"] > 0:
            seeds = [
                r[key] * scale
                for r in rows
                if r["method"] == s["method"] and r.get(key) is not None
            ]
            if len(seeds) > 1:  # every seed as a point, the mean ± std over them on top
                ax.scatter(
                    [s["adapter_params"]] * len(seeds), seeds, s=14, alpha=0.45, color=colour
                )
            ax.errorbar(
                [s["adapter_params"]],
                [mean * scale],
                yerr=[std * scale],
                fmt="o",
                capsize=4,
                color=colour,
                label=_method_label(s),
            )
            ax.annotate(
                _method_label(s),
                (s["adapter_params"], mean * scale),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
        else:
            ax.axhline(mean * scale, linestyle="--", color=colour or "grey", label=s["method"])
    _family_lines(ax, summaries, key, scale)
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (log scale)")
    ax.set_ylabel(label)
    ax.set_title(f"{label.split(' (')[0]} vs adapter size (mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(folder / "accuracy_vs_params.png")
    _save_figure(fig, paths[-1])

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.subplots()
    for s in summaries:
        mine = [r for r in rows if r["method"] == s["method"] and r.get("history")]
        if not mine:
            continue
        n = min(len(r["history"]) for r in mine)
        xs = [mine[0]["history"][i]["epoch"] for i in range(n)]
        per_point = [[r["history"][i][val_key] * scale for r in mine] for i in range(n)]
        means = [statistics.fmean(v) for v in per_point]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_point]
        (line,) = ax.plot(
            xs, means, marker="o", color=method_colour(s["method"]), label=s["method"]
        )
        lo = [m - d for m, d in zip(means, stds)]
        hi = [m + d for m, d in zip(means, stds)]
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel(val_key.replace("_", " ") + (" (%)" if scale == 100 else ""))
    ax.set_title("validation per evaluation (mean ± std over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(folder / "validation_curves.png")
    _save_figure(fig, paths[-1])
    loss = write_loss_figure(rows, folder)
    if loss is not None:
        paths.append(loss)
    return paths


def read_train_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``train_log.jsonl`` (one per optimizer step)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_loss_figure(rows: Sequence[dict[str, Any]], folder: str | os.PathLike) -> Path | None:
    """``loss_curves.png``: each run's training loss per step, one colour per method.

    Drawn from the rows' ``train_log`` files (relative to ``folder``); ``None`` when no row
    has one (results written before the logs existed).
    """
    from matplotlib.figure import Figure

    folder = Path(folder)
    logs = [
        (r["method"], folder / r["train_log"])
        for r in rows
        if r.get("train_log") and (folder / r["train_log"]).is_file()
    ]
    if not logs:
        return None
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.subplots()
    colours: dict[str, Any] = {}
    for method, path in logs:
        records = [r for r in read_train_log(path) if r.get("loss") is not None]
        if not records:
            continue
        (line,) = ax.plot(
            [r["step"] for r in records],
            [r["loss"] for r in records],
            color=colours.get(method),
            alpha=0.8,
            linewidth=1,
            label=method if method not in colours else None,
        )
        colours.setdefault(method, line.get_color())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss per step (one line per seed)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "loss_curves.png"
    _save_figure(fig, path)
    return path


def _save_figure(fig: Any, path: Path) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
