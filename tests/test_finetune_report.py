"""The fine-tuning report's figures, on synthetic rows (no training)."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from ttdecomp.finetune import report


def _rows():
    rows = []
    for method, params, accs in (
        ("tt-lora", 6144, (0.90, 0.91, 0.89)),
        ("lora", 73728, (0.92,) * 3),
    ):
        for seed, acc in enumerate(accs):
            rows.append({"method": method, "seed": seed, "adapter_params": params,
                         "extra_params": 770, "val_accuracy": acc, "test_accuracy": acc,
                         "train_seconds": 1.0, "step_seconds": 0.1, "peak_step_bytes": 10,
                         "history": [{"epoch": 1.0, "val_accuracy": acc}]})  # fmt: skip
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
