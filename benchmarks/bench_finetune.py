"""TT-LoRA versus PEFT LoRA as ``ttdecomp finetune`` trains them: step time, step memory, inference.

Model, data and methods are the defaults of ``ttdecomp finetune``: the packaged all-MiniLM-L6-v2
(BERT, 6 layers, hidden 384) with a new two-class head, adapters on query and value, each method
with ``default_settings``: TT-LoRA shape [8,6,8,8,6,8], r=4, alpha 32 (6,144 adapter parameters)
and LoRA r=8, alpha 16 through PEFT (73,728); the head is trained in both. Batches of 32 real
tweets (``load_classification("tweets")``, the first 32*k training rows in order), tokenised to
at most 48 tokens and padded to the longest text of the batch, as the command's collator does.

A training step is the one the command's ``Trainer`` takes: ``zero_grad``, forward with labels
(model in train mode, dropout on), backward, ``clip_grad_norm_`` at 1.0, fused AdamW with weight
decay 0.01 (biases excluded) at the method's learning rate. Both methods are torch-only and run
in one subprocess per thread count (``--threads 1`` and ``--threads 2`` by default, so the two
can be read side by side; no numpy/torch pool contention, see DESIGN.md). In that process the
steps are interleaved (A B, B A, ...), both steps of a pair on the same batch, so that a change
of the machine's load hits both alike; the ratio reported is the median of the per-pair ratios.

Reported, per thread count:

* step time: wall time of a training step, ``--steps`` pairs after two warm-up steps per
  method (the first allocates the optimizer state), and its CPU time (``time.process_time``;
  at one thread this is unaffected by other processes competing for the cores).
  Target TT-LoRA / LoRA <= 1.0.
* step memory: peak bytes of tensors allocated during one training step taken after the
  warm-up (so the optimizer state exists and is not counted): activations saved for backward,
  gradients, optimizer temporaries; tracked exactly with the dispatch mode ``ttdecomp finetune``
  uses (``ttdecomp.finetune.train.PeakMemory``). The bytes of the trainable parameters plus
  their AdamW state are reported separately. Target TT-LoRA / LoRA <= 1.0 for both.
* inference: the TT-LoRA model after ``merge_and_unload()`` against the plain base model
  (freshly loaded, its head set to the TT-LoRA model's trained head), forward in eval mode
  under ``torch.no_grad()`` on batches of 32 tweets, one warm-up forward each, then
  2 x ``--steps`` rounds interleaved (A B C, C B A, ...), median of paired ratios.
  Target merged / base <= 1.02. The unmerged TT-LoRA forward / base is shown for information,
  with the largest logit difference between the merged and unmerged models.

No timed assertion anywhere: the script prints ratios measured in one run.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bench_finetune.py [--steps 5] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

METHODS = ("lora", "tt-lora")
TARGETS = ["query", "value"]
BATCH = 32
MAX_LENGTH = 48
WARMUP = 2  # training steps per method before timing (the first allocates the AdamW state)
SEED = 0
WEIGHT_DECAY = 0.01  # TrainSettings' default
MAX_GRAD_NORM = 1.0  # transformers.TrainingArguments' default


def _batches(count: int):
    """``count`` padded batches of 32 training tweets (cycling over the split), and the labels."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from ttdecomp.assets.registry import model_path
    from ttdecomp.finetune.data import load_classification
    from ttdecomp.finetune.tasks.classification import TextDataset

    splits = load_classification("tweets")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path("minilm")))
    data = TextDataset(splits.train, tokenizer, MAX_LENGTH)
    collator = DataCollatorWithPadding(tokenizer)
    per_split = len(data) // BATCH
    out = []
    for k in range(count):
        start = (k % per_split) * BATCH
        out.append(dict(collator([data[i] for i in range(start, start + BATCH)])))
    return out, splits.labels


def _optimizer(model, lr: float):
    """Fused AdamW over the trainable parameters, biases without weight decay (as Trainer)."""
    import torch

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=True), [p for _, p in named]


def _build(method: str, labels: list[str]):
    """The default model with ``method``'s default adapters, train mode, and its optimizer."""
    from ttdecomp.assets.registry import model_path
    from ttdecomp.finetune.methods import apply_method, default_settings
    from ttdecomp.finetune.tasks.classification import load_classifier

    settings = default_settings(method)
    model = load_classifier(model_path("minilm"), labels, SEED)
    adapted = apply_method(model, settings, targets=TARGETS)
    adapted.model.train()
    opt, params = _optimizer(adapted.model, settings.lr)
    return adapted, opt, params


def _train_step(model, opt, params, batch) -> None:
    import torch

    opt.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    opt.step()


def _timed(fn, *args, **kwargs) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn(*args, **kwargs)``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - t0, time.process_time() - c0


def _state_bytes(opt, params) -> int:
    """Bytes of the trainable parameters and of every tensor in the optimizer's state."""
    import torch

    total = sum(p.numel() * p.element_size() for p in params)
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def _paired(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    return [a / b for a, b in zip(times[num], times[den])]


def _train_part(steps: int, batches: list, labels: list[str]) -> tuple[dict, object]:
    """Interleaved training steps of both methods; returns the results and the TT-LoRA model."""
    from ttdecomp.finetune.train import PeakMemory

    runs = {m: _build(m, labels) for m in METHODS}
    for k in range(WARMUP):
        for m in METHODS:
            adapted, opt, params = runs[m]
            _train_step(adapted.model, opt, params, batches[k])
    wall: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(steps):
        batch = batches[WARMUP + i]
        for m in METHODS if i % 2 == 0 else METHODS[::-1]:
            adapted, opt, params = runs[m]
            w, c = _timed(_train_step, adapted.model, opt, params, batch)
            wall[m].append(w)
            cpu[m].append(c)
    out: dict = {
        "wall_ratios": _paired(wall, "tt-lora", "lora"),
        "cpu_ratios": _paired(cpu, "tt-lora", "lora"),
    }
    for m in METHODS:
        adapted, opt, params = runs[m]
        memory = PeakMemory()
        with memory:  # after the warm-up: the optimizer state exists and is not counted
            _train_step(adapted.model, opt, params, batches[WARMUP + steps])
        out[m] = {
            "adapter_params": adapted.adapter_params,
            "extra_params": adapted.extra_params,
            "step_s": statistics.median(wall[m]),
            "cpu_s": statistics.median(cpu[m]),
            "peak_step_bytes": memory.peak,
            "state_bytes": _state_bytes(opt, params),
        }
    return out, runs["tt-lora"][0].model


def _inference_part(rounds: int, batches: list, labels: list[str], tt_model) -> dict:
    """Forwards of the base, the merged and the unmerged TT-LoRA model, interleaved."""
    import copy

    import torch

    from ttdecomp.assets.registry import model_path
    from ttdecomp.finetune.methods import head_modules
    from ttdecomp.finetune.tasks.classification import load_classifier

    merged = copy.deepcopy(tt_model).merge_and_unload()
    base = load_classifier(model_path("minilm"), labels, SEED)
    for name in head_modules(base):
        getattr(base, name).load_state_dict(getattr(merged, name).state_dict())
    models = {"base": base, "merged": merged, "unmerged": tt_model}
    for model in models.values():
        model.eval()
    order = tuple(models)
    wall: dict[str, list[float]] = {m: [] for m in order}
    cpu: dict[str, list[float]] = {m: [] for m in order}
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    with torch.no_grad():
        logits = {m: models[m](**inputs[0]).logits for m in order}  # also the warm-up
        for i in range(rounds):
            batch = inputs[1 + i]
            for m in order if i % 2 == 0 else order[::-1]:
                w, c = _timed(models[m], **batch)
                wall[m].append(w)
                cpu[m].append(c)
    base_types = sorted({type(x).__name__ for x in base.modules()})
    merged_types = sorted({type(x).__name__ for x in merged.modules()})
    return {
        "median_s": {m: statistics.median(wall[m]) for m in order},
        "merged_wall_ratios": _paired(wall, "merged", "base"),
        "merged_cpu_ratios": _paired(cpu, "merged", "base"),
        "unmerged_wall_ratios": _paired(wall, "unmerged", "base"),
        "unmerged_cpu_ratios": _paired(cpu, "unmerged", "base"),
        "merged_vs_unmerged_max_abs_logit": float(
            (logits["merged"] - logits["unmerged"]).abs().max()
        ),
        "merged_module_types_as_base": merged_types == base_types,
    }


def child(steps: int, threads: int) -> dict:
    """One thread count: the training part, then the inference part, in this process."""
    import torch

    torch.set_num_threads(threads)
    load_start = os.getloadavg()
    rounds = 2 * steps  # a forward is about half a training step: more of them
    t0 = time.perf_counter()
    batches, labels = _batches(max(WARMUP + steps + 1, 1 + rounds))
    t1 = time.perf_counter()
    train, tt_model = _train_part(steps, batches, labels)
    t2 = time.perf_counter()
    inference = _inference_part(rounds, batches, labels, tt_model)
    t3 = time.perf_counter()
    return {
        "seconds": [t1 - t0, t2 - t1, t3 - t2],
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "seq_len": [int(b["input_ids"].shape[1]) for b in batches[WARMUP : WARMUP + steps]],
        "train": train,
        "inference": inference,
    }


def _run_child(steps: int, threads: int) -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    cmd = [sys.executable, __file__, "--child", "--steps", str(steps), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"child {shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.2f}..{max(values):.2f}]"


def _report(results: list[dict], steps: int) -> None:
    mib = 2**20
    head = f"{'':<44}" + "".join(f"{'threads ' + str(r['threads']):>22}" for r in results)
    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, cells: list[str], note: str = "") -> None:
        rows.append((label, cells, note))

    train = [r["train"] for r in results]
    inf = [r["inference"] for r in results]
    row("load average at child start (1 min)", [f"{r['load_start'][0]:.2f}" for r in results])
    row("load average at child end (1 min)", [f"{r['load_end'][0]:.2f}" for r in results])
    row("interop threads", [str(r["interop_threads"]) for r in results])
    row(
        "child seconds: data, training, inference",
        [", ".join(f"{s:.0f}" for s in r["seconds"]) for r in results],
    )
    for m in METHODS:
        row(f"train step {m}, median wall (s)", [f"{t[m]['step_s']:.3f}" for t in train])
    for m in METHODS:
        row(f"train step {m}, median CPU (s)", [f"{t[m]['cpu_s']:.3f}" for t in train])
    row(
        "step wall ratio TT-LoRA/LoRA, pairs",
        [_median_range(t["wall_ratios"]) for t in train],
        "target <= 1.0",
    )
    row(
        "step CPU ratio TT-LoRA/LoRA, pairs",
        [_median_range(t["cpu_ratios"]) for t in train],
        "target <= 1.0",
    )
    for m in METHODS:
        row(f"step peak {m} (MiB)", [f"{t[m]['peak_step_bytes'] / mib:.1f}" for t in train])
    row(
        "step peak ratio TT-LoRA/LoRA",
        [f"{t['tt-lora']['peak_step_bytes'] / t['lora']['peak_step_bytes']:.3f}" for t in train],
        "target <= 1.0",
    )
    for m in METHODS:
        row(
            f"trainable + AdamW state {m} (KiB)",
            [f"{t[m]['state_bytes'] / 1024:.1f}" for t in train],
        )
    row(
        "trainable + AdamW state ratio TT-LoRA/LoRA",
        [f"{t['tt-lora']['state_bytes'] / t['lora']['state_bytes']:.3f}" for t in train],
        "target <= 1.0",
    )
    for m in ("base", "merged", "unmerged"):
        row(f"forward {m}, median wall (s)", [f"{i['median_s'][m]:.4f}" for i in inf])
    row(
        "forward wall merged/base, pairs",
        [_median_range(i["merged_wall_ratios"]) for i in inf],
        "target <= 1.02",
    )
    row("forward CPU merged/base, pairs", [_median_range(i["merged_cpu_ratios"]) for i in inf])
    row(
        "forward wall unmerged/base, pairs", [_median_range(i["unmerged_wall_ratios"]) for i in inf]
    )
    row("forward CPU unmerged/base, pairs", [_median_range(i["unmerged_cpu_ratios"]) for i in inf])
    row(
        "max |logit merged - unmerged|",
        [f"{i['merged_vs_unmerged_max_abs_logit']:.1e}" for i in inf],
    )
    row("merged has the base's module types", [str(i["merged_module_types_as_base"]) for i in inf])

    lora, tt = train[0]["lora"], train[0]["tt-lora"]
    print(
        f"all-MiniLM-L6-v2, targets {','.join(TARGETS)}, batch {BATCH} tweets (max length "
        f"{MAX_LENGTH}; padded lengths {results[0]['seq_len']}), {steps} interleaved training "
        f"steps per method after {WARMUP} warm-up, {2 * steps} forward rounds per model after 1"
    )
    print(
        f"adapter parameters: TT-LoRA {tt['adapter_params']:,}, LoRA {lora['adapter_params']:,}; "
        f"head {tt['extra_params']:,} in both"
    )
    print(head)
    for label, cells, note in rows:
        print(f"{label:<44}" + "".join(f"{c:>22}" for c in cells) + (f"  {note}" if note else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=5,
        help="timed training steps per method, and twice as many forwards per model (default 5)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch thread counts, each in its own subprocess (default: 1 2)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps {args.steps} must be >= 1")
    threads = args.threads or [1, 2]
    if any(t < 1 for t in threads):
        parser.error(f"--threads {threads} must all be >= 1")
    if args.child:
        print(json.dumps(child(args.steps, threads[0])))
        return

    import platform
    from importlib.metadata import version

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores ({usable} usable), "
        f"python {platform.python_version()}, torch {version('torch')}, "
        f"transformers {version('transformers')}, peft {version('peft')}"
    )
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    results = [_run_child(args.steps, t) for t in threads]
    load_end = os.getloadavg()
    print(
        "load average (1, 5, 15 min): start "
        + ", ".join(f"{x:.2f}" for x in load_start)
        + "; end "
        + ", ".join(f"{x:.2f}" for x in load_end)
        + f"; {time.perf_counter() - t0:.0f} s in all"
    )
    _report(results, args.steps)


if __name__ == "__main__":
    main()
