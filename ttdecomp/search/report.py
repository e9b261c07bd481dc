"""The report of a search: every trial, the Pareto front, ``search.json`` and the figure.

The front is taken over complete trials: a trial is on it when no other has a better (or
equal) validation metric with fewer (or equal) adapter parameters, one of them strictly.
``search.json`` is rewritten atomically (temporary file, then rename) after the study and
after every re-trained configuration. The figure has one point per trial (pruned trials
hollow, at their last validation value), one colour per method, and the front as a step line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._files import write_with
from ..finetune.methods import get_method, method_names
from ..finetune.report import write_json_atomic
from ..finetune.tasks import get_task

__all__ = ["SEARCH_FILE", "format_table", "pareto_front", "retrain_targets", "write_report"]

SEARCH_FILE = "search.json"
FIGURE_FILE = "search_front.png"


def _colour(method: str) -> str:
    """The registered method's colour (black for one not registered in this process)."""
    return get_method(method).colour if method in method_names() else "black"


def pareto_front(points: Sequence[tuple[float, float]], larger_is_better: bool = True) -> list[int]:
    """Indices of the non-dominated ``(metric, params)`` points, by increasing parameters.

    Examples
    --------
    >>> pareto_front([(0.90, 100), (0.85, 10), (0.80, 50), (0.91, 1000)])
    [1, 0, 3]
    """
    sign = 1.0 if larger_is_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -sign * points[i][0]))
    out: list[int] = []
    best = None
    for i in order:
        value = sign * points[i][0]
        if best is None or value > best:
            out.append(i)
            best = value
    return out


def label(config: dict[str, Any]) -> str:
    """A short name of a configuration: ``tt-lora [8,6,8,8,6,8] r4 α32 lr5e-03``.

    Examples
    --------
    >>> label({"method": "lora", "r": 8, "lora_alpha": 16.0, "lr": 0.001})
    'lora r8 α16 lr1e-03'
    """
    method = config["method"]
    fields = get_method(method).search_parameters if method in method_names() else {}
    parts = [method]
    if "tt_shape" in config:
        parts.append(f"[{config['tt_shape']}]")
    for key, field in fields.items():
        if key in config and field == "rank":
            parts.append(f"r{config[key]}")
    for key, field in fields.items():
        if key in config and field == "alpha":
            parts.append(f"α{config[key]:.3g}")
    if "lr" in config:
        parts.append(f"lr{config['lr']:.0e}")
    return " ".join(parts)


def _trial_record(t: Any, metric: str) -> dict[str, Any]:
    attrs = t.user_attrs
    history = attrs.get("history") or []
    value = t.values[0] if t.values else None
    last = history[-1][metric] if history else None
    config = attrs.get("config") or {}
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "config": config,
        "label": label(config) if config else None,
        "adapter_params": attrs.get("adapter_params"),
        "value": value,
        "last_value": value if value is not None else last,
        "evaluations": attrs.get("evaluations", 0),
        "epochs": attrs.get("epochs", history[-1].get("epoch", 0.0) if history else 0.0),
        "stopped": attrs.get("stopped"),
        "repeat_of": attrs.get("repeat_of"),
        "worker": attrs.get("worker"),
        "seconds": (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        ),
        "history": history,
    }


def build_report(context: Any, study: Any, *, storage_url: str, study_name: str) -> dict:
    """The ``search.json`` document of ``study`` (the re-trained rows are added later)."""
    from .study import SURPLUS, trial_counts

    metric = context.metric
    larger = context.task_spec.larger_is_better
    trials = [
        _trial_record(t, metric)
        for t in study.get_trials(deepcopy=False)
        if not t.user_attrs.get(SURPLUS)  # started beyond the trial count, trained nothing
    ]
    complete = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    front_idx = pareto_front([(t["value"], t["adapter_params"]) for t in complete], larger)
    front = [complete[i] for i in front_idx]
    best_by_method: dict[str, int] = {}
    for t in complete:
        m = t["config"]["method"]
        current = best_by_method.get(m)
        if current is None:
            best_by_method[m] = t["number"]
            continue
        other = next(x for x in complete if x["number"] == current)
        better = t["value"] > other["value"] if larger else t["value"] < other["value"]
        if better:
            best_by_method[m] = t["number"]
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    document = {
        "study_name": study_name,
        "storage": storage_url,
        "config": context.config.to_dict(),
        "identity": context.identity(),
        "task": context.task,
        "metric": metric,
        "n_trials": context.n_trials(),
        "counts": trial_counts(study),
        "evaluations_total": sum(t["evaluations"] for t in trials),
        "epochs_total": round(sum(t["epochs"] for t in trials), 4),
        "epoch_budget": context.config.epoch_budget,
        "full_trial_evaluations": context.evaluations(),
        "trials_wall_seconds": (
            (max(ends) - min(starts)).total_seconds() if starts and ends else None
        ),
        "trials": trials,
        "front": [{k: t[k] for k in ("number", "label", "adapter_params", "value")} for t in front],
        "best_by_method": best_by_method,
        "best": [],
    }
    document["table"] = format_table(document)
    return document


def retrain_targets(document: dict[str, Any]) -> list[int]:
    """Trial numbers to re-train: the front and each method's best, by parameters."""
    numbers = {f["number"] for f in document["front"]} | set(document["best_by_method"].values())
    params = {t["number"]: t["adapter_params"] or 0 for t in document["trials"]}
    return sorted(numbers, key=lambda n: (params[n], n))


def format_table(document: dict[str, Any]) -> str:
    """The front (and each method's best) as a text table, with test once re-trained."""
    task = get_task(document["task"])
    scale = task.figure_scale
    unit = "%" if scale == 100 else ""
    name = task.metric.removeprefix("val_").replace("accuracy", "acc")
    tested = {b["trial"]: b for b in document.get("best", [])}
    trials = {t["number"]: t for t in document["trials"]}
    front = {f["number"] for f in document["front"]}
    rows = retrain_targets(document)
    header = f"{'trial':>5}  {'front':5}  {'configuration':44}  {'params':>9}  "
    header += f"{'val ' + name:>9}  {'test ' + name:>9}"
    lines = [header, "-" * len(header)]
    for n in rows:
        t = trials[n]
        test = tested.get(n, {}).get("test")
        test_text = f"{test * scale:.2f}{unit}" if test is not None else "-"
        lines.append(
            f"{n:>5}  {'*' if n in front else '':5}  {t['label'][:44]:44}  "
            f"{t['adapter_params']:>9,}  {t['value'] * scale:>8.2f}{unit}  {test_text:>9}"
        )
    counts = document["counts"]
    epochs = document.get("epochs_total", 0)
    budget = document.get("epoch_budget")
    budget = f" of a budget of {budget:g}" if budget is not None else ""
    repeats = sum(1 for t in document["trials"] if t.get("repeat_of") is not None)
    if repeats:
        budget += f"; {repeats} configuration(s) drawn again, scored without training"
    lines.append(
        f"\n{counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed "
        f"trials; {document['evaluations_total']} validation evaluations in all "
        f"({document['full_trial_evaluations']} per full trial), {epochs:g} training epochs"
        f"{budget}. * = on the Pareto front "
        f"(validation {name} vs adapter parameters)."
    )
    return "\n".join(lines)


def write_figure(document: dict[str, Any], path: Path) -> Path:
    """Validation metric against adapter parameters (log axis): all trials, the front."""
    from matplotlib.figure import Figure

    task = get_task(document["task"])
    scale = task.figure_scale
    fig = Figure(figsize=(6.8, 4.4), dpi=120)
    ax = fig.subplots()
    methods = sorted({t["config"]["method"] for t in document["trials"] if t["config"]})
    for method in methods:
        colour = _colour(method)
        for state, filled in (("complete", True), ("pruned", False)):
            pts = [
                (t["adapter_params"], t["last_value"] * scale)
                for t in document["trials"]
                if t["config"].get("method") == method
                and t["state"] == state
                and t["last_value"] is not None
                and t["adapter_params"]
            ]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.scatter(
                xs,
                ys,
                s=28,
                facecolors=colour if filled else "none",
                edgecolors=colour,
                label=f"{method} ({state})",
                zorder=3,
            )
    front = [f for f in document["front"] if f["adapter_params"]]
    if front:
        xs = [f["adapter_params"] for f in front]
        ys = [f["value"] * scale for f in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="Pareto front", zorder=2)
        ax.scatter(xs, ys, s=70, facecolors="none", edgecolors="black", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (log scale)")
    ax.set_ylabel(task.figure_label.replace("test", "validation"))
    ax.set_title(f"search {document['study_name']!r}: every trial and the front")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def write_report(document: dict[str, Any], output: Path, *, figures: bool) -> Path | None:
    """Write ``search.json`` (atomically) and, with ``figures``, the PNG; return its path."""
    output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output / SEARCH_FILE, document)
    if figures and document["trials"]:
        return write_figure(document, output / FIGURE_FILE)
    return None
