"""The quantized-bases table of ``docs/quantized.md``, generated from ``bench_quantized.py --json``.

One table row per (threads, base, method) of the results file: trainable parameters, the
fine-tuning peak RSS (after loading: evaluation and training) and the process's peak (loading
included), CPU time per step, held-out loss and perplexity before and after; then the issue's
targets computed from the same rows (TT-LoRA / QLoRA step time and peak on the 4-bit base,
4-bit / fp32 peak, TT-LoRA's held-out loss on 4-bit against fp32), each with its status.

Usage::

    python scripts/quantized_table.py docs/results/quantized/smollm2.json
        [--write docs/quantized.md --block smollm2]

``--write`` replaces the text between ``<!-- quantized-table:NAME:begin -->`` and
``<!-- quantized-table:NAME:end -->`` in the file (atomically); the markers must be there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_BASES = {"fp32": "fp32", "8bit": "8-bit", "4bit": "4-bit", "4bit-saved": "4-bit, saved"}
_METHODS = {"tt-lora": "TT-LoRA", "lora": "LoRA"}
_ROW_KEYS = (
    "threads", "base", "method", "trainable", "peak_train_mib", "peak_process_mib",
    "step_cpu_s", "loss_before", "loss_after", "ppl_before", "ppl_after",
)  # fmt: skip


_spec = importlib.util.spec_from_file_location(
    "claim_table", Path(__file__).resolve().parent / "claim_table.py"
)
claim_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(claim_table)
_blocks = claim_table.blocks


class QuantizedTableError(_blocks.BlockError):
    """A results file the table cannot be made from (what is wrong and how to fix it)."""


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The results file written by ``bench_quantized.py --json``, checked."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not {"settings", "results"} <= doc.keys():
        raise QuantizedTableError(
            f"{path}: expected bench_quantized.py's --json file (settings, results), got "
            f"{type(doc).__name__} with keys {sorted(doc) if isinstance(doc, dict) else None}."
        )
    for i, row in enumerate(doc["results"]):
        missing = [k for k in _ROW_KEYS if k not in row]
        if missing:
            raise QuantizedTableError(
                f"{path}: result {i} lacks {missing}; rerun bench_quantized.py --json."
            )
        if row["base"] not in _BASES or row["method"] not in _METHODS:
            raise QuantizedTableError(
                f"{path}: result {i} has base {row['base']!r} / method {row['method']!r}; "
                f"expected one of {list(_BASES)} / {list(_METHODS)}."
            )
    return doc


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _status(value: float | None, target: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value <= target + 1e-12 else "missed"


def _name(row: dict[str, Any]) -> str:
    if row["method"] == "lora" and row["base"] in ("4bit", "4bit-saved"):
        return "QLoRA"
    return _METHODS[row["method"]]


def render(doc: dict[str, Any]) -> str:
    """The markdown block (table, then the targets) for a loaded results file."""
    s = doc["settings"]
    checkpointing = "on" if s.get("gradient_checkpointing") else "off"
    dates = ", ".join(sorted({r.get("date", "n/a") for r in doc["results"]}))
    random = "random weights" in str(s.get("model", ""))
    lines = [
        f"{s.get('model', 'SmolLM2-135M-Instruct')}"
        + (" (its losses mean nothing: memory and time only)" if random else "")
        + f": {s['steps']} steps of batch {s['batch_size']} (at most {s['max_length']} tokens), "
        f"held-out = {s['eval_examples']} validation dialogues, activation checkpointing "
        f"{checkpointing} for every variant"
        + (
            f", glibc's `MALLOC_MMAP_THRESHOLD_={s['malloc_mmap_threshold']}` (a fixed threshold)"
            if s.get("malloc_mmap_threshold") is not None
            else ""
        )
        + f"; measured {dates} on "
        f"{doc.get('machine', {}).get('cpus', '?')} CPUs (`bench_quantized.py --json`).",
        "",
        "| threads | base | method | trainable | fine-tuning peak RSS | process peak RSS "
        "| step CPU s | held-out loss before → after | perplexity before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        lines.append(
            f"| {r['threads']} | {_BASES[r['base']]} | {_name(r)} | {r['trainable']:,} "
            f"| {_mib(r['peak_train_mib'])} | {_mib(r['peak_process_mib'])} "
            f"| {r['step_cpu_s']:.2f} | {r['loss_before']:.3f} → {r['loss_after']:.3f} "
            f"| {r['ppl_before']:.2f} → {r['ppl_after']:.2f} |"
        )
    lines += [
        "",
        "Where the fine-tuning peak goes (MiB; libraries: RSS after importing torch, "
        "transformers and, where used, bitsandbytes and PEFT; weights at their stored size, "
        "all resident at the peak (the fp32 base's stay in the checkpoint's memory map, "
        "counted in RSS once read); everything else: the fine-tuning peak less both, i.e. "
        "tokenizer, data, what the loader left on the heap, activations, logits and their "
        "gradients, optimizer state, the allocator's retained free memory):",
        "",
        "| threads | base | method | libraries | quantized weights | float weights "
        "(embedding) | everything else | fine-tuning peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        w = r.get("weights_mib")
        libs, peak = r.get("rss_imports_mib"), r["peak_train_mib"]
        if w is None or libs is None or peak is None:
            cells = ["n/a"] * 5
        else:
            cells = [
                f"{libs:,.0f}",
                f"{w['quantized']:,.0f}",
                f"{w['other']:,.0f} ({w['embedding']:,.0f})",
                f"{peak - libs - w['quantized'] - w['other']:,.0f}",
                f"{peak:,.0f}",
            ]
        lines.append(
            f"| {r['threads']} | {_BASES[r['base']]} | {_name(r)} | " + " | ".join(cells) + " |"
        )
    by = {(r["threads"], r["base"], r["method"]): r for r in doc["results"]}
    for threads in sorted({r["threads"] for r in doc["results"]}):
        lines += ["", f"Targets at {threads} thread(s):", ""]
        tt4, q4 = by.get((threads, "4bit", "tt-lora")), by.get((threads, "4bit", "lora"))
        tt32, lo32 = by.get((threads, "fp32", "tt-lora")), by.get((threads, "fp32", "lora"))
        rows = []
        if tt4 and q4:
            step = _ratio(tt4["step_cpu_s"], q4["step_cpu_s"])
            peak = _ratio(tt4["peak_train_mib"], q4["peak_train_mib"])
            rows.append(("4-bit: TT-LoRA / QLoRA step CPU time", step, 1.1, "≤ 1.1"))
            rows.append(("4-bit: TT-LoRA / QLoRA fine-tuning peak RSS", peak, 1.0, "≤ 1.0"))
            process = _ratio(tt4["peak_process_mib"], q4["peak_process_mib"])
            rows.append(("4-bit: TT-LoRA / QLoRA process peak RSS", process, 1.0, "≤ 1.0"))
        saved = [by.get((threads, "4bit-saved", m)) for m in ("tt-lora", "lora")]
        for q, f, what in (
            (tt4, tt32, "4-bit"),
            (q4, lo32, "4-bit"),
            (saved[0], tt32, "4-bit saved"),
            (saved[1], lo32, "4-bit saved"),
        ):
            if q and f:
                name = _METHODS[q["method"]]
                rows.append(
                    (
                        f"{name}: {what} / fp32 fine-tuning peak RSS",
                        _ratio(q["peak_train_mib"], f["peak_train_mib"]),
                        0.6,
                        "≤ 0.6",
                    )
                )
                rows.append(
                    (
                        f"{name}: {what} / fp32 process peak RSS",
                        _ratio(q["peak_process_mib"], f["peak_process_mib"]),
                        0.6,
                        "≤ 0.6",
                    )
                )
        if tt4 and tt32 and not random:
            gap = _ratio(tt4["loss_after"], tt32["loss_after"])
            rows.append(
                ("TT-LoRA: held-out loss after, 4-bit / fp32", gap, 1.02, "within 2% (≤ 1.02)")
            )
        lines += ["| ratio | measured | target | status |", "|---|---|---|---|"]
        for label, value, bound, target in rows:
            shown = "n/a" if value is None else f"{value:.3f}"
            lines.append(f"| {label} | {shown} | {target} | {_status(value, bound)} |")
    return "\n".join(lines)


def write_block(path: str | os.PathLike, block: str, text: str) -> None:
    """Replace the text between the block's quantized-table markers in ``path`` (atomic)."""
    _blocks.write_block(path, block, text, kind="quantized-table", error=QuantizedTableError)


def read_block(path: str | os.PathLike, block: str) -> str:
    """The text between the block's markers in ``path`` (what :func:`write_block` wrote)."""
    return _blocks.read_block(path, block, kind="quantized-table", error=QuantizedTableError)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="bench_quantized.py's --json file")
    p.add_argument("--write", help="a markdown file holding the block's markers")
    p.add_argument("--block", default="smollm2", help="the block's name in --write's markers")
    args = p.parse_args(argv)
    write = (lambda text: write_block(args.write, args.block, text)) if args.write else None
    return _blocks.run("quantized_table", lambda: render(load_results(args.results)), write)


if __name__ == "__main__":
    sys.exit(main())
