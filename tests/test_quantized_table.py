"""scripts/quantized_table.py: the quantized-bases docs table is generated from the committed
results of benchmarks/bench_quantized.py (no model runs here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "quantized_table", _ROOT / "scripts" / "quantized_table.py"
)
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)

RESULTS = _ROOT / "docs" / "results" / "quantized" / "smollm2.json"
DOCS = _ROOT / "docs" / "quantized.md"
SETTINGS = {"steps": 11, "batch_size": 4, "max_length": 64, "eval_examples": 32,
            "gradient_checkpointing": True}  # fmt: skip


def row(base, method, *, step, peak, loss_after, threads=1):
    return {"threads": threads, "base": base, "method": method, "trainable": 25440,
            "peak_train_mib": peak, "peak_process_mib": peak + 100, "step_cpu_s": step,
            "loss_before": 2.0, "loss_after": loss_after, "ppl_before": 7.39,
            "ppl_after": 6.0}  # fmt: skip


@pytest.mark.parametrize("block", ["smollm2", "smollm2-360m", "smollm2-360m-mmap"])
def test_the_committed_docs_table_is_the_one_rendered_from_the_committed_results(block):
    results = RESULTS.parent / f"{block}.json"
    want = table.render(table.load_results(results))
    assert table.read_block(DOCS, block) == want, (
        f"docs/quantized.md's {block} table is stale: run "
        f"python scripts/quantized_table.py docs/results/quantized/{block}.json "
        f"--write docs/quantized.md --block {block}"
    )


def _doc(base, tt_peak):
    """fp32 rows, and rows of ``base`` (TT-LoRA peak ``tt_peak``, QLoRA 550 MiB)."""
    return {
        "settings": SETTINGS,
        "results": [
            row("fp32", "tt-lora", step=2.0, peak=1000.0, loss_after=1.90),
            row("fp32", "lora", step=2.0, peak=1000.0, loss_after=1.90),
            row(base, "tt-lora", step=2.3, peak=tt_peak, loss_after=1.95),
            row(base, "lora", step=2.0, peak=550.0, loss_after=1.90),
        ],
    }


def test_targets_are_computed_from_the_rows():
    doc = _doc("4bit", 500.0)
    text = table.render(doc)
    assert "| 4-bit: TT-LoRA / QLoRA step CPU time | 1.150 | ≤ 1.1 | missed |" in text
    assert "| 4-bit: TT-LoRA / QLoRA fine-tuning peak RSS | 0.909 | ≤ 1.0 | met |" in text
    assert "| TT-LoRA: 4-bit / fp32 fine-tuning peak RSS | 0.500 | ≤ 0.6 | met |" in text
    assert "| LoRA: 4-bit / fp32 fine-tuning peak RSS | 0.550 | ≤ 0.6 | met |" in text
    assert "| TT-LoRA: held-out loss after, 4-bit / fp32 | 1.026 |" in text
    assert "| 1 | 4-bit | QLoRA | 25,440 | 550 MiB | 650 MiB | 2.00 |" in text
    assert "saved" not in text  # no 4bit-saved rows, no 4bit-saved ratios
    random = dict(doc, settings=dict(SETTINGS, model="SmolLM2-360M architecture, random weights"))
    text = table.render(random)
    assert "(its losses mean nothing: memory and time only)" in text
    assert "held-out loss after" not in text  # no loss target on random weights
    assert "| TT-LoRA: 4-bit / fp32 fine-tuning peak RSS | 0.500 | ≤ 0.6 | met |" in text


def test_the_saved_4bit_base_gets_its_own_rows_and_ratios():
    doc = _doc("4bit-saved", 700.0)
    text = table.render(doc)
    assert "| 1 | 4-bit, saved | QLoRA | 25,440 | 550 MiB | 650 MiB | 2.00 |" in text
    assert "| TT-LoRA: 4-bit saved / fp32 fine-tuning peak RSS | 0.700 | ≤ 0.6 | missed |" in text
    assert "| LoRA: 4-bit saved / fp32 process peak RSS | 0.591 | ≤ 0.6 | met |" in text
    assert "MALLOC_MMAP_THRESHOLD_" not in text
    assert text.startswith("SmolLM2-135M-Instruct: 11 steps")
    doc["settings"] = dict(SETTINGS, malloc_mmap_threshold=65536)
    assert "glibc's `MALLOC_MMAP_THRESHOLD_=65536` (a fixed threshold)" in table.render(doc)


def test_write_replaces_only_the_block(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text(
        "head\n<!-- quantized-table:x:begin -->\nold\n<!-- quantized-table:x:end -->\ntail\n",
        encoding="utf-8",
    )
    table.write_block(doc, "x", "new\ntable")
    assert doc.read_text(encoding="utf-8") == (
        "head\n<!-- quantized-table:x:begin -->\nnew\ntable\n<!-- quantized-table:x:end -->\ntail\n"
    )
    assert table.read_block(doc, "x") == "new\ntable"
    with pytest.raises(table.QuantizedTableError, match="must hold"):
        table.write_block(doc, "y", "t")


def test_a_file_that_is_not_bench_results_is_refused(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps([{"base": "4bit"}]), encoding="utf-8")
    with pytest.raises(table.QuantizedTableError, match="settings, results"):
        table.load_results(bad)
    bad.write_text(json.dumps({"settings": SETTINGS, "results": [{"base": "4bit"}]}))
    with pytest.raises(table.QuantizedTableError, match="lacks"):
        table.load_results(bad)
    assert table.main([str(bad)]) == 2


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_quantized", _ROOT / "benchmarks" / "bench_quantized.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_json_keeps_other_thread_counts_and_refuses_other_settings(tmp_path):
    bench = _bench()
    args = bench.argparse.Namespace(
        steps=10, batch_size=4, max_length=64, eval_examples=32, gradient_checkpointing="on",
        malloc_mmap_threshold=None, model="smollm2-135m",
    )  # fmt: skip
    settings = bench._settings(args)
    path = str(tmp_path / "r.json")
    one = [row("4bit", "lora", step=2.0, peak=500.0, loss_after=2.0, threads=1)]
    bench._write_json(path, settings, bench._previous_rows(path, settings), one)
    two = [
        row("4bit", "lora", step=1.2, peak=520.0, loss_after=2.0, threads=2),
        row("4bit", "tt-lora", step=1.1, peak=510.0, loss_after=2.0, threads=2),
    ]
    bench._write_json(path, settings, bench._previous_rows(path, settings), two)
    doc = table.load_results(path)
    assert [(r["threads"], r["method"]) for r in doc["results"]] == [
        (1, "lora"), (2, "tt-lora"), (2, "lora")
    ]  # fmt: skip
    # a rerun of a key replaces its row
    again = [row("4bit", "lora", step=3.0, peak=500.0, loss_after=2.0, threads=1)]
    bench._write_json(path, settings, bench._previous_rows(path, settings), again)
    assert table.load_results(path)["results"][0]["step_cpu_s"] == 3.0
    args.steps = 50
    with pytest.raises(SystemExit, match=r"other settings \(steps"):
        bench._previous_rows(path, bench._settings(args))
    args.steps, args.malloc_mmap_threshold = 10, 65536  # another allocator: other settings
    with pytest.raises(SystemExit, match=r"other settings \(malloc_mmap_threshold"):
        bench._previous_rows(path, bench._settings(args))
