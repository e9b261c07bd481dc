"""``ttdecomp compress``: compress a model's linear layers into TT-matrices and measure it::

    ttdecomp compress minilm --budget 50% --calibration tweets --output minilm-50
    ttdecomp compress minilm --budget 25% --calibration tweets --heal --output minilm-25h
    ttdecomp compress smollm2 --budget 50% --calibration chatterbot --output smollm2-50
    ttdecomp compress path/to/hf-model --budget 0.5 --calibration texts.txt --output out

``MODEL`` is a packaged model (``minilm``, ``smollm2``) or a local Hugging Face folder.
``--calibration`` is a packaged data set (``tweets`` for encoders, ``chatterbot`` for
causal LMs) or a file: ``.txt`` (one text per line), ``.csv``/``.jsonl`` with a ``text``
column, or (causal LMs) a dialogue ``.jsonl``. Its first ``--calibration-size`` training
examples calibrate; held-out examples (the packaged test split, or the file's
``--eval-size`` rows after the calibration ones) measure the model: the mean cosine of
mean-pooled sentence embeddings to the original's (encoders) or the held-out perplexity
(causal LMs), and the forward time and peak memory of a batch of 32 against the dense model.
``--heal`` distils the original into the TT cores on up to ``--heal-size`` texts that are
not held out: for ``tweets``, the training split and then the rest of the packaged corpus
(labels are not needed, and more text keeps the student from overfitting a few tweets).
The original's outputs on them are kept in up to ``--heal-cache-gb`` GiB, so each is
computed once.

Writes ``DIR/ttdecomp_compressed.{json,safetensors}`` (reload with
:func:`ttdecomp.compress.load_compressed` into a fresh copy of the base model),
``DIR/report.json`` and ``DIR/report.txt``, and the tokenizer. Errors are printed as one
line on stderr with exit status 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import TTError
from ._common import progress_default
from .plan import parse_budget

#: Default ``--heal-size``: texts that five minutes of healing on two CPU cores go through 3-6
#: times (MiniLM, 75-10%), every teacher output kept (docs/compress.rst, "Cached teacher outputs").
HEAL_SIZE = 4000
#: Default ``--heal-cache-gb``: room for the teacher's hidden states on ``HEAL_SIZE`` tweets.
HEAL_CACHE_GB = 3.0

__all__ = [
    "add_parser",
    "causal_batches",
    "load_model",
    "measure_causal",
    "measure_encoder",
    "read_texts",
    "run",
]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``compress`` and its options to the ``ttdecomp`` sub-commands."""
    p = sub.add_parser(
        "compress",
        help="compress a model's linear layers into TT-matrices under one budget",
        description="Replace linear layers by TT-matrix layers (TTLinear) under one global "
        "parameter budget, report per layer and at the model's output, save the result.",
    )
    p.add_argument("model", help="minilm, smollm2, or a local Hugging Face model folder")
    p.add_argument(
        "--budget",
        type=parse_budget,
        help="TT parameters of the targeted layers: a fraction (50%%, 0.5) of their dense "
        "size, or a count (2M)",
    )
    p.add_argument("--eps", type=float, help="per-layer relative error target instead")
    p.add_argument(
        "--calibration",
        metavar="DATA",
        help="tweets, chatterbot, or a .txt/.csv/.jsonl file (default: the model's packaged "
        "data: tweets for encoders, chatterbot for causal LMs)",
    )
    p.add_argument("--calibration-size", type=int, default=256, help="calibration examples")
    p.add_argument(
        "--method",
        choices=["output", "weight"],
        default="output",
        help="output: calibration-aware (whitened) decomposition; weight: plain TT-SVD",
    )
    p.add_argument(
        "--layout", choices=["auto", "split", "interleaved"], default="auto", help="TT layout"
    )
    p.add_argument(
        "--allocation",
        choices=["proportional", "global"],
        default="proportional",
        help="how the budget is shared between layers",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        default=None,
        metavar="NAME",
        help="module names or suffixes to compress (default: all linear layers but heads)",
    )
    p.add_argument("--heal", action="store_true", help="distil the original into the TT cores")
    p.add_argument("--heal-seconds", type=float, default=300.0, help="healing time limit")
    p.add_argument("--heal-steps", type=int, default=2000, help="healing steps at most")
    p.add_argument("--heal-lr", type=float, default=1e-3, help="healing learning rate")
    p.add_argument(
        "--heal-layerwise",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="refit each TT layer to the original's layer outputs before distilling (off: "
        "on MiniLM at 50%% it lowered the cosine reached in the same time)",
    )
    p.add_argument(
        "--heal-hidden",
        choices=("last", "all"),
        default="all",
        help="distil the last hidden states only, or every layer's (encoders)",
    )
    p.add_argument(
        "--heal-schedule",
        choices=("constant", "cosine"),
        default="cosine",
        help="learning rate after the warm-up: constant, or decayed to 0 by the time limit",
    )
    p.add_argument(
        "--heal-size",
        type=int,
        default=HEAL_SIZE,
        help="healing texts at most (tweets: the training split, then the rest of the corpus)",
    )
    p.add_argument(
        "--heal-cache-gb",
        type=float,
        default=HEAL_CACHE_GB,
        help="memory for the original's outputs, kept so each is computed once (0: none kept)",
    )
    p.add_argument("--eval-size", type=int, default=600, help="held-out examples measured")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(run=run)
    return p


# ---------------------------------------------------------------- models and data
def load_model(name: str) -> tuple[Any, Any, str]:
    """``(model, tokenizer, kind)`` for a packaged name or a local folder; kind is
    ``"encoder"`` or ``"causal"``. Float32, eval mode."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from ..finetune.assets import canonical_model_name, model_path

    key = canonical_model_name(name)
    if key == "smollm2":
        from ..finetune.smollm2 import smollm2_checkpoint

        folder = smollm2_checkpoint(progress=False)
    elif key is not None:
        folder = model_path(key)
    else:
        folder = Path(name)
        if not folder.is_dir():
            raise TTError(
                f"unknown model {name!r}: not a packaged model (minilm, smollm2) and no such "
                "folder. Give a packaged name or a local Hugging Face model folder."
            )
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise TTError(f"cannot read a model config in {folder}: {exc}") from None
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    loader = AutoModelForCausalLM if causal else AutoModel
    model = loader.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, "causal" if causal else "encoder"


def read_texts(path: str | Path) -> list[str]:
    """Texts of a ``.txt`` (one per line), ``.csv`` or ``.jsonl`` (a ``text`` column) file."""
    p = Path(path)
    if not p.is_file():
        raise TTError(
            f"calibration {str(path)!r} is neither a packaged data set (tweets, chatterbot) nor "
            "a file; give --calibration tweets or a .txt/.csv/.jsonl file."
        )
    suffix = p.suffix.lower()
    if suffix == ".txt":
        texts = [t.strip() for t in p.read_text(errors="replace").splitlines()]
    elif suffix in (".csv", ".tsv"):
        with p.open(newline="", errors="replace") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if rows and "text" not in rows[0]:
            raise TTError(f"{p} has no 'text' column (columns: {list(rows[0])}).")
        texts = [str(r["text"]).strip() for r in rows]
    elif suffix == ".jsonl":
        texts = []
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TTError(f"{p}, line {i}: not JSON ({exc.msg}).") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise TTError(f"{p}, line {i}: expected an object with a 'text' string.")
            texts.append(rec["text"].strip())
    else:
        raise TTError(f"calibration file {p} must be .txt, .csv, .tsv or .jsonl.")
    texts = [t for t in texts if t]
    if not texts:
        raise TTError(f"{p} holds no text.")
    return texts


def encoder_texts(data: str, sizes: tuple[int, int, int]) -> tuple[list[str], list[str], list[str]]:
    """``(calibration, healing, held-out)`` texts of ``data``; no held-out text is in the others.

    ``tweets``: calibration from the training split; healing from the training split first,
    then the rest of the packaged corpus (every tweet, labels ignored,
    :func:`~ttdecomp.finetune.data.unlabelled_texts`) without the validation and test
    tweets; held-out: the test split. A file: calibration from its first texts, held-out from
    the next ones, healing from the calibration texts and those after the held-out ones.
    """
    n_cal, n_heal, n_eval = sizes
    if data == "tweets":
        from ..finetune.data import load_classification, unlabelled_texts

        splits = load_classification("tweets", sizes=(max(n_cal, 1000), 300, n_eval))
        train = [t for t, _ in splits.train]
        held = [t for t, _ in splits.test]
        heal_texts = train[:n_heal]
        if n_heal > len(train):
            seen = train + [t for t, _ in splits.validation] + held
            heal_texts += unlabelled_texts("tweets", exclude=seen)[: n_heal - len(train)]
        return train[:n_cal], heal_texts, held
    texts = read_texts(data)
    cal = texts[:n_cal]
    held = texts[n_cal : n_cal + n_eval]
    if not held:
        raise TTError(
            f"{data} has {len(texts)} texts, all used for calibration; the held-out measurement "
            "needs more (lower --calibration-size)."
        )
    return cal, (cal + texts[n_cal + n_eval :])[:n_heal], held


def causal_batches(tokenizer: Any, dialogues: list, batch_size: int = 8) -> list[dict]:
    """Chat-formatted, padded batches of dialogues (model inputs, no labels)."""
    from ..finetune.chat_tokens import CausalDataset, make_collator

    data = CausalDataset(dialogues, tokenizer, 128)
    collate = make_collator(tokenizer)
    order = sorted(range(len(data)), key=lambda i: len(data[i]["input_ids"]))
    out = []
    for i in range(0, len(order), batch_size):
        batch = collate([data[j] for j in order[i : i + batch_size]])
        batch.pop("labels", None)
        out.append(batch)
    return out


def causal_data(data: str) -> tuple[Any, str]:
    """The dialogue splits of ``data`` (``chatterbot`` or a dialogue ``.jsonl``)."""
    from ..finetune.dialogues import load_data, split_dialogues

    dialogues, source = load_data(data)
    return split_dialogues(dialogues, validation=0.1, test=0.1, seed=0), source


# ---------------------------------------------------------------- measurements
def measure_encoder(
    original: Any, compressed: Any, tokenizer: Any, texts: list[str]
) -> dict[str, float]:
    """Mean cosine of mean-pooled embeddings, and forward time/peak memory ratios (batch 32)."""
    from ..compress.measure import forward_cost, mean_cosine, sentence_embeddings, tokenize_batches

    ref = sentence_embeddings(original, tokenizer, texts)
    got = sentence_embeddings(compressed, tokenizer, texts)
    batch = tokenize_batches(tokenizer, texts[:32], batch_size=32)[0]
    dense, small = forward_cost(original, batch), forward_cost(compressed, batch)
    return {
        "cosine": mean_cosine(ref, got),
        "texts": len(texts),
        **_ratios(dense, small),
    }


def _ratios(dense: dict[str, float], small: dict[str, float]) -> dict[str, float]:
    return {
        "forward_s": small["seconds"],
        "dense_forward_s": dense["seconds"],
        "time_ratio": small["seconds"] / dense["seconds"],
        "peak_bytes": small["peak_bytes"],
        "dense_peak_bytes": dense["peak_bytes"],
        "peak_ratio": small["peak_bytes"] / max(dense["peak_bytes"], 1.0),
        "param_bytes": small["param_bytes"],
        "dense_param_bytes": dense["param_bytes"],
    }


def measure_causal(
    original: Any,
    compressed: Any,
    tokenizer: Any,
    dialogues: list,
    *,
    dense_ppl: float | None,
    dense_cost: dict[str, float] | None = None,
    cost_batch: int = 32,
    repeats: int = 5,
) -> dict[str, float]:
    """Held-out perplexity (reply tokens) of both models, and the forward ratios on a batch
    of ``cost_batch`` dialogues (median of ``repeats``); ``dense_ppl`` and ``dense_cost``
    (this function's ``"dense_cost"``) skip measuring the original again."""
    from ..compress.measure import forward_cost
    from ..finetune.chat_tokens import CausalDataset, make_collator
    from ..finetune.tasks.lm_eval import evaluate_lm

    data = CausalDataset(dialogues, tokenizer, 128)
    collate = make_collator(tokenizer)
    if dense_ppl is None:
        dense_ppl = evaluate_lm(original, data, collate)["perplexity"]
    ppl = evaluate_lm(compressed, data, collate)["perplexity"]
    batch = causal_batches(tokenizer, dialogues[:cost_batch], batch_size=cost_batch)[0]
    if dense_cost is None:
        dense_cost = forward_cost(original, batch, repeats=repeats)
    small = forward_cost(compressed, batch, repeats=repeats)
    return {
        "perplexity": ppl,
        "dense_perplexity": dense_ppl,
        "dialogues": len(dialogues),
        "dense_cost": dense_cost,
        **_ratios(dense_cost, small),
    }


# ---------------------------------------------------------------- the command
def run(args: argparse.Namespace) -> int:
    """Run ``ttdecomp compress`` with parsed ``args``; return the exit status."""
    try:
        _run(args)
    except (TTError, FileNotFoundError, ImportError) as exc:
        message = str(exc).replace("(pattern=...)", "(--targets)")
        print(f"ttdecomp compress: error: {message}", file=sys.stderr)
        return 2
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.budget is None and args.eps is None:
        raise TTError("give --budget (e.g. --budget 50%) or --eps.")
    for flag in ("calibration_size", "heal_steps", "heal_size", "eval_size"):
        value = getattr(args, flag)
        if value < 1:
            raise TTError(f"--{flag.replace('_', '-')} {value} must be >= 1.")
    if args.heal_seconds <= 0:
        raise TTError(f"--heal-seconds {args.heal_seconds} must be > 0.")
    if not (math.isfinite(args.heal_cache_gb) and args.heal_cache_gb >= 0):
        raise TTError(
            f"--heal-cache-gb {args.heal_cache_gb} must be a finite number >= 0 "
            "(GiB of memory for the original's outputs; 0 keeps nothing)."
        )
    if args.threads is not None and args.threads < 1:
        raise TTError(f"--threads {args.threads} must be >= 1.")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise TTError(f"--output {out} is a file; give a folder.")


def _run(args: argparse.Namespace) -> None:
    import torch

    from ..compress import compress_model, heal, save_compressed

    _check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    progress = progress_default(args.progress)
    model, tokenizer, kind = load_model(args.model)
    data = args.calibration or ("chatterbot" if kind == "causal" else "tweets")
    sizes = (args.calibration_size, args.heal_size, args.eval_size)
    if kind == "encoder":
        from ..compress.measure import tokenize_batches

        cal_texts, heal_texts, held = encoder_texts(data, sizes)
        calibration = tokenize_batches(tokenizer, cal_texts, batch_size=32)
        heal_data = tokenize_batches(tokenizer, heal_texts, batch_size=32)
    else:
        splits, _ = causal_data(data)
        calibration = causal_batches(tokenizer, splits.train[: args.calibration_size])
        heal_data = causal_batches(tokenizer, splits.train[: args.heal_size])
        held = splits.test[: args.eval_size]
    original = copy.deepcopy(model)
    compressed, report = compress_model(
        model,
        args.budget,
        eps=args.eps,
        target_modules=args.targets or "all-linear",
        calibration=calibration,
        method=args.method,
        layout=args.layout,
        allocation=args.allocation,
        inplace=True,
        progress=progress,
    )
    print(report)
    healed = None
    if args.heal:
        t0 = time.perf_counter()
        healed = heal(
            compressed,
            original,
            heal_data,
            steps=args.heal_steps,
            max_seconds=args.heal_seconds,
            lr=args.heal_lr,
            layerwise=args.heal_layerwise,
            hidden=args.heal_hidden,
            schedule=args.heal_schedule,
            cache_bytes=int(args.heal_cache_gb * 2**30),
        )
        print(
            f"healing: {healed.steps} steps in {time.perf_counter() - t0:.0f} s, loss "
            f"{healed.loss_first:.4f} -> {healed.loss_last:.4f}"
        )
        if healed.refit is not None and healed.refit.layers:
            done = healed.refit.layers
            before = sum(r.error_before for r in done) / len(done)
            after = sum(r.error_after for r in done) / len(done)
            print(
                f"layer-wise refit: {len(done)} layers in {healed.refit.seconds:.0f} s, mean "
                f"output error {before:.3f} -> {after:.3f}"
            )
    if kind == "encoder":
        measured = measure_encoder(original, compressed, tokenizer, held)
        print(
            f"model: mean cosine of sentence embeddings to the original's "
            f"{measured['cosine']:.4f} on {measured['texts']} held-out texts"
        )
    else:
        measured = measure_causal(original, compressed, tokenizer, held, dense_ppl=None)
        print(
            f"model: held-out perplexity {measured['perplexity']:.2f} (dense "
            f"{measured['dense_perplexity']:.2f}) on {measured['dialogues']} dialogues"
        )
    print(
        f"forward, batch of 32: {measured['time_ratio']:.2f}x the dense time, peak memory "
        f"{measured['peak_ratio']:.2f}x, parameters {measured['param_bytes'] / 2**20:.1f} MiB "
        f"(dense {measured['dense_param_bytes'] / 2**20:.1f} MiB)"
    )
    out = Path(args.output)
    save_compressed(compressed, out, report)
    tokenizer.save_pretrained(out)
    record = {
        "model": args.model,
        "kind": kind,
        "calibration": data,
        "budget": args.budget,
        "report": report.to_dict(),
        "heal": None if healed is None else dataclasses.asdict(healed),
        "measured": measured,
    }
    from ..adapters.serialization import write_files

    write_files(
        [
            (out / "report.json", (json.dumps(record, indent=2) + "\n").encode()),
            (out / "report.txt", (str(report) + "\n").encode()),
        ]
    )
    print(f"wrote {out}")
