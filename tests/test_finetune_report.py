"""The fine-tuning report's figures, on synthetic rows (no training)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from ttdecomp.finetune import report


def _rows(matched=False):
    rows = []
    runs = [("tt-lora", 4, 6144, (0.90, 0.91, 0.89)), ("lora", 8, 73728, (0.92,) * 3)]
    if matched:
        runs.append(("lora-matched", 1, 9216, (0.88, 0.89, 0.90)))
    for method, rank, params, accs in runs:
        for seed, acc in enumerate(accs):
            rows.append({"method": method, "seed": seed, "adapter_params": params,
                         "extra_params": 770, "val_accuracy": acc, "test_accuracy": acc,
                         "train_seconds": 1.0, "step_seconds": 0.1, "peak_step_bytes": 10,
                         "history": [{"epoch": 1.0, "val_accuracy": acc}],
                         "settings": {"method": method, "rank": rank}})  # fmt: skip
    return rows


def test_every_seed_is_a_point_beside_the_mean_on_a_log_axis(tmp_path, monkeypatch):
    saved = {}
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: saved.setdefault(path.name, fig))
    rows = _rows()
    paths = report.write_figures(rows, report.summarize(rows, ["tt-lora", "lora"]), tmp_path)
    assert [p.name for p in paths][:2] == ["accuracy_vs_params.png", "validation_curves.png"]
    ax = saved["accuracy_vs_params.png"].axes[0]
    assert ax.get_xscale() == "log"
    points = sorted(
        (float(x), round(float(y), 6))
        for collection in ax.collections
        for x, y in collection.get_offsets()
        if len(collection.get_offsets()) == 3  # the per-seed scatters (three seeds each)
    )
    expected = sorted(
        (float(r["adapter_params"]), round(100 * r["test_accuracy"], 6)) for r in rows
    )
    assert points == expected


def test_lora_at_two_ranks_is_one_family_joined_by_a_line(tmp_path, monkeypatch):
    """The default run's LoRA and LoRA at TT-LoRA's budget: their means joined (one family),
    the matched row named with the rank the run derived, in the figure and the table."""
    saved = {}
    monkeypatch.setattr(report, "_save_figure", lambda fig, path: saved.setdefault(path.name, fig))
    rows = _rows(matched=True)
    summary = report.summarize(rows, ["tt-lora", "lora", "lora-matched"])
    report.write_figures(rows, summary, tmp_path)
    ax = saved["accuracy_vs_params.png"].axes[0]
    joined = [line for line in ax.get_lines() if "means joined" in line.get_label()]
    assert len(joined) == 1 and joined[0].get_label() == "lora (means joined)"
    xs, ys = joined[0].get_data()
    assert list(xs) == [9216, 73728]
    assert list(ys) == pytest.approx([89.0, 92.0])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "lora-matched (r=1)" in legend and "tt-lora" in legend
    table = report.format_table(summary)
    assert table.splitlines()[-1].startswith("lora-matched (r=1)")
    # TT-LoRA alone in its family: no line
    assert not [line for line in ax.get_lines() if "tt-lora" in line.get_label()]
