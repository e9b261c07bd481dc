"""One training step of a small Llama with TT-LoRA versus PEFT LoRA (r=8) on q and v.

Model: Llama, hidden 1024, 4 layers, 16 heads, intermediate 2816, float32; batch 8, sequence 128,
AdamW over the adapter parameters. Both methods are torch-only, so they share one subprocess
(no numpy/torch pool contention, see DESIGN.md) and their steps are interleaved (A B, B A, ...):
on a shared machine a change of load then hits both alike, and the ratio is the median of the
per-pair ratios.

Reported:

* step time: wall time of a training step (forward, backward, optimizer step) after one
  warm-up step per method, and its CPU time (``time.process_time``; with ``--threads 1`` this
  is unaffected by other processes competing for the cores);
* step memory: peak bytes of tensors allocated during one training step (activations saved for
  backward, gradients, optimizer state, temporaries), tracked exactly with a dispatch mode that
  follows every storage the step creates; the frozen weights are reported separately.

Targets (issue 5): step time ratio TT-LoRA / LoRA <= 1.1, peak memory ratio <= 1.05.

Usage::

    python benchmarks/bench_adapters.py [--steps 6] [--vocab 32000] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ("peft-lora", "tt-lora")


def build(method: str, vocab: int):
    """A seeded Llama with the method's adapters, its optimizer and a ``step()`` closure."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=vocab,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config)
    if method == "peft-lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        )
    else:
        from ttdecomp.adapters import TTLoRAConfig, get_tt_model

        model = get_tt_model(
            model, TTLoRAConfig(tt_rank=8, alpha=8.0, target_modules=["q_proj", "v_proj"])
        )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, vocab, (8, 128), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()

    info = {
        "trainable": sum(p.numel() for p in params),
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    return step, opt, info


def child(steps: int, vocab: int, threads: int) -> dict:
    """Both methods in one process, steps interleaved (A B, B A, ...) so that a change in the
    machine's load hits both alike; returns per-method medians and the median paired ratio."""
    import torch

    from ttdecomp.finetune.train import PeakMemory

    torch.set_num_threads(threads)
    runs = {m: build(m, vocab) for m in METHODS}
    for step, _, _ in runs.values():
        step()  # warm-up: allocator, optimizer state, contraction plans
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(steps):
        order = METHODS if i % 2 == 0 else METHODS[::-1]
        for m in order:
            t0, c0 = time.perf_counter(), time.process_time()
            runs[m][0]()
            times[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
    out: dict = {
        "ratios": [t / lo for t, lo in zip(times["tt-lora"], times["peft-lora"])],
        "cpu_ratios": [t / lo for t, lo in zip(cpu["tt-lora"], cpu["peft-lora"])],
    }
    for m, (step, opt, info) in runs.items():
        opt.zero_grad(set_to_none=True)
        mode = PeakMemory()
        with mode:
            step()
        out[m] = {
            **info,
            "step_s": statistics.median(times[m]),
            "cpu_s": statistics.median(cpu[m]),
            "peak_step_bytes": mode.peak,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.vocab, args.threads)))
        return

    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--steps",
        str(args.steps),
        "--vocab",
        str(args.vocab),
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    lora, tt = result["peft-lora"], result["tt-lora"]
    print(
        f"Llama hidden 1024, 4 layers, batch 8 x seq 128, vocab {args.vocab}, "
        f"{args.threads} threads, {args.steps} interleaved steps per method"
    )
    print(
        f"{'method':<10} {'trainable':>10} {'median step (s)':>16} {'median CPU (s)':>15} "
        f"{'step peak (MiB)':>16}"
    )
    for name, r in (("peft-lora", lora), ("tt-lora", tt)):
        print(
            f"{name:<10} {r['trainable']:>10,d} {r['step_s']:>16.3f} {r['cpu_s']:>15.3f} "
            f"{r['peak_step_bytes'] / 2**20:>16.1f}"
        )
    pairs = result["ratios"]
    time_ratio = statistics.median(pairs)
    mem_ratio = tt["peak_step_bytes"] / lora["peak_step_bytes"]
    total_ratio = (tt["peak_step_bytes"] + tt["param_bytes"]) / (
        lora["peak_step_bytes"] + lora["param_bytes"]
    )
    print(
        f"step time ratio TT-LoRA / LoRA (median of pairs): {time_ratio:.3f} (target <= 1.1); "
        f"pairs {min(pairs):.3f}..{max(pairs):.3f}, ratio of medians "
        f"{tt['step_s'] / lora['step_s']:.3f}"
    )
    cpu_pairs = result["cpu_ratios"]
    print(
        f"step CPU-time ratio TT-LoRA / LoRA (median of pairs): {statistics.median(cpu_pairs):.3f}"
        f"; pairs {min(cpu_pairs):.3f}..{max(cpu_pairs):.3f} (robust to other processes' load "
        "with --threads 1)"
    )
    print(f"step peak memory ratio TT-LoRA / LoRA:           {mem_ratio:.3f} (target <= 1.05)")
    print(f"peak incl. weights ratio TT-LoRA / LoRA:         {total_ratio:.3f}")


if __name__ == "__main__":
    main()
