"""``ttdecomp finetune --quick`` end to end on the real packaged MiniLM and tweets (every method).

Skipped with the reason when the packaged assets are not installed (CI installs them).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("matplotlib")

from ttdecomp.assets import registry as finetune_assets

try:
    finetune_assets.model_path("minilm")
    finetune_assets.data_path("tweets")
except finetune_assets.AssetMissingError as exc:
    pytest.skip(f"packaged assets missing: {exc}", allow_module_level=True)

from ttdecomp.cli import main
from ttdecomp.finetune import load_finetuned, load_results

pytestmark = pytest.mark.integration
ALL = ("tt-lora", "lora", "loretta-rep", "loretta-adp", "head-only", "lora-matched")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    import os

    import torch

    out = tmp_path_factory.mktemp("quick") / "run"
    threads = torch.get_num_threads()  # the suite runs torch on 1 thread (conftest)
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # this test is the suite's longest
    try:
        status = main(
            ["finetune", "--quick", "--methods", ",".join(ALL), "--output", str(out),
             "--no-progress"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return out


def test_every_method_learns_above_chance(quick_run):
    results = load_results(quick_run)
    assert results["data"]["sizes"] == {"train": 320, "validation": 100, "test": 200}
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == set(ALL)
    for method, row in rows.items():
        # 200 balanced test tweets: P(accuracy >= 0.6 by chance) < 0.3%
        assert row["test_accuracy"] >= 0.6, (method, row["test_accuracy"])
        best = max(h["val_accuracy"] for h in row["history"])
        assert row["val_accuracy"] == best  # the reported state is validation's choice
        assert len(row["history"]) == 3  # one validation per epoch
    assert rows["head-only"]["adapter_params"] == 0
    assert rows["tt-lora"]["adapter_params"] == 6144  # [8,6,8 | 8,6,8], r=4, q+v x 6 layers
    assert rows["lora"]["adapter_params"] == 73728  # r=8, q+v x 6 layers
    # LoRA at TT-LoRA's budget: r=1 is the smallest with >= 6,144 (9,216)
    assert rows["lora-matched"]["settings"]["rank"] == 1
    assert rows["lora-matched"]["adapter_params"] == 9216
    for row in rows.values():
        assert row["extra_params"] >= 384 * 2 + 2  # the head, counted apart


def test_results_json_schema_and_figures(quick_run):
    results = load_results(quick_run)
    assert results["complete"] is True
    assert {"identity", "settings", "methods", "seeds", "model_path"} <= set(results["config"])
    assert {"torch", "transformers", "peft", "ttdecomp", "python"} <= set(results["versions"])
    summary = {s["method"]: s for s in results["summary"]}
    assert summary["tt-lora"]["lora_fraction"] == pytest.approx(6144 / 73728)
    for s in summary.values():
        assert {"test_accuracy_mean", "val_accuracy_mean", "train_seconds_mean"} <= set(s)
    for name in ("accuracy_vs_params.png", "validation_curves.png"):
        data = (quick_run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.parametrize("method", ALL)
def test_saved_adapters_reload_to_identical_predictions(quick_run, method):
    from safetensors.numpy import load_file
    from transformers import DataCollatorWithPadding

    from ttdecomp.finetune.data import load_classification
    from ttdecomp.finetune.tasks.classification import TextDataset, predict_logits

    results = load_results(quick_run)
    row = next(r for r in results["rows"] if r["method"] == method)
    splits = load_classification("tweets", sizes=(320, 100, 200))
    model, tokenizer = load_finetuned(quick_run, method, 0)
    logits = predict_logits(
        model, TextDataset(splits.test, tokenizer, 32), DataCollatorWithPadding(tokenizer)
    )
    saved = load_file(str(quick_run / row["run_dir"] / "test_logits.safetensors"))["logits"]
    np.testing.assert_allclose(logits, saved, rtol=0, atol=1e-4)
    labels = np.array([y for _, y in splits.test])
    assert float((logits.argmax(-1) == labels).mean()) == pytest.approx(row["test_accuracy"])
