"""What ``ttdecomp compress`` does, as a config and a function: :class:`CompressConfig`,
:func:`run_compress`.

``run_compress(CompressConfig("minilm", output="minilm-50", budget="50%"))`` loads the model
(a packaged name or a local Hugging Face folder), takes calibration texts from the model's
packaged data or a file, compresses every linear layer but the heads under one budget
(:func:`~ttdecomp.compress.compress_model`), saves the compression, optionally heals it
(:func:`~ttdecomp.compress.heal`) and saves it again, measures it against the original on
held-out texts, and writes ``report.json`` and ``report.txt``. The command line is a parser
for :class:`CompressConfig` plus one call of :func:`run_compress`.

Every option is checked, and ``output`` too (a folder that can be written, not the model's
own folder), before the model is loaded. The compression is saved before healing starts, so
an interrupted healing (Ctrl-C) keeps the finished compression.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import write_files
from ..errors import InvalidInputError
from ..planner import parse_budget

__all__ = [
    "HEAL_CACHE_GB",
    "HEAL_SIZE",
    "CompressConfig",
    "causal_batches",
    "causal_data",
    "encoder_texts",
    "load_model",
    "measure_causal",
    "measure_encoder",
    "read_texts",
    "run_compress",
]

#: Default ``heal_size``: texts that five minutes of healing on two CPU cores go through 3-6
#: times (MiniLM, 75-10%), every teacher output kept (docs/compress.rst, "Cached teacher outputs").
HEAL_SIZE = 4000
#: Default ``heal_cache_gb``: room for the teacher's hidden states on ``HEAL_SIZE`` tweets.
HEAL_CACHE_GB = 3.0

#: The healing options and their defaults; given without ``heal=True`` they are an error.
HEAL_DEFAULTS: dict[str, Any] = {
    "heal_seconds": 300.0,
    "heal_steps": 2000,
    "heal_lr": 1e-3,
    "heal_layerwise": False,
    "heal_hidden": "all",
    "heal_schedule": "cosine",
    "heal_size": HEAL_SIZE,
    "heal_cache_gb": HEAL_CACHE_GB,
}


def _heal(help_text: str, **meta: Any) -> Any:
    name_default = meta.pop("default_text")
    return field(
        default=None,
        metadata={"help": help_text, "group": "healing", "default_text": name_default, **meta},
    )


@dataclass
class CompressConfig:
    """The options of ``ttdecomp compress``, one field each (``metadata["help"]`` is the
    command line's help text).

    Healing options (``heal_*``) left ``None`` take the defaults of :data:`HEAL_DEFAULTS`;
    giving one without ``heal=True`` is an error. Values are checked when the config is
    made; :func:`run_compress` checks the files (``model``, ``output``) before loading.

    Examples
    --------
    >>> CompressConfig("minilm", output="out", budget="50%").budget
    0.5
    >>> try:
    ...     CompressConfig("minilm", output="out", budget="50%", heal_steps=10)
    ... except InvalidInputError as exc:
    ...     print(str(exc).split(";")[0])
    heal_steps=10 is a healing option but heal=False
    """

    model: str = field(
        metadata={
            "help": "minilm, smollm2, or a local Hugging Face model folder",
            "positional": True,
        }
    )
    output: str = field(metadata={"help": "folder to write", "metavar": "DIR", "required": True})
    budget: int | float | str | None = field(
        default=None,
        metadata={
            "help": "TT parameters of the targeted layers: a fraction (50%, 0.5) of their dense "
            "size, or a count (2M)",
            "type": parse_budget,
        },
    )
    eps: float | None = field(
        default=None, metadata={"help": "per-layer relative error target instead", "type": float}
    )
    calibration: str | None = field(
        default=None,
        metadata={
            "help": "tweets, chatterbot, or a .txt/.csv/.jsonl file (default: the model's "
            "packaged data: tweets for encoders, chatterbot for causal LMs)",
            "metavar": "DATA",
            "type": str,
        },
    )
    calibration_size: int = field(default=256, metadata={"help": "calibration examples"})
    method: str = field(
        default="output",
        metadata={
            "help": "output: calibration-aware (whitened) decomposition; weight: plain TT-SVD",
            "choices": ("output", "weight"),
        },
    )
    layout: str = field(
        default="auto",
        metadata={"help": "TT layout", "choices": ("auto", "split", "interleaved")},
    )
    allocation: str = field(
        default="proportional",
        metadata={
            "help": "how the budget is shared between layers",
            "choices": ("proportional", "global"),
        },
    )
    targets: list[str] | None = field(
        default=None,
        metadata={
            "help": "module names or suffixes to compress (default: all linear layers but heads)",
            "nargs": "+",
            "metavar": "NAME",
            "type": str,
        },
    )
    heal: bool = field(
        default=False,
        metadata={"help": "distil the original into the TT cores", "group": "healing"},
    )
    heal_seconds: float | None = _heal("healing time limit", default_text="300", type=float)
    heal_steps: int | None = _heal("healing steps at most", default_text="2000", type=int)
    heal_lr: float | None = _heal("healing learning rate", default_text="0.001", type=float)
    heal_layerwise: bool | None = _heal(
        "refit each TT layer to the original's layer outputs before distilling (off: on "
        "MiniLM at 50% it lowered the cosine reached in the same time)",
        default_text="--no-heal-layerwise",
        type=bool,
    )
    heal_hidden: str | None = _heal(
        "distil the last hidden states only, or every layer's (encoders)",
        default_text="all",
        choices=("last", "all"),
    )
    heal_schedule: str | None = _heal(
        "learning rate after the warm-up: constant, or decayed to 0 by the time limit",
        default_text="cosine",
        choices=("constant", "cosine"),
    )
    heal_size: int | None = _heal(
        "healing texts at most (tweets: the training split, then the rest of the corpus)",
        default_text=str(HEAL_SIZE),
        type=int,
    )
    heal_cache_gb: float | None = _heal(
        "memory for the original's outputs, kept so each is computed once (0: none kept)",
        default_text=str(HEAL_CACHE_GB),
        type=float,
    )
    eval_size: int = field(default=600, metadata={"help": "held-out examples measured"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads", "type": int})
    progress: bool | None = field(
        default=None,
        metadata={
            "help": "progress bars on stderr (default: when stderr is a terminal)",
            "type": bool,
        },
    )

    def __post_init__(self) -> None:
        for name in ("model", "output"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, name, value)
            if not isinstance(value, str) or not value:
                raise InvalidInputError(f"{name}={value!r} must be a non-empty string or path.")
        if self.budget is not None:
            self.budget = parse_budget(self.budget)
        if self.budget is None and self.eps is None:
            raise InvalidInputError(
                "give budget='50%' (a fraction of the targeted layers' dense size, or a count "
                "such as budget=2M) or eps=0.1 (a per-layer error target)."
            )
        if self.eps is not None:
            _check_real(self, "eps", low=0.0, high=1.0)
        if not isinstance(self.heal, bool):
            raise InvalidInputError(f"heal={self.heal!r} must be True or False.")
        given = [n for n in HEAL_DEFAULTS if getattr(self, n) is not None]
        if given and not self.heal:
            shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in given)
            raise InvalidInputError(
                f"{shown} is a healing option but heal=False; add heal=True to heal, or leave "
                "the healing options out."
            )
        for name in ("calibration_size", "eval_size"):
            _check_int(self, name)
        for name in ("heal_steps", "heal_size"):
            if getattr(self, name) is not None:
                _check_int(self, name)
        if self.threads is not None:
            _check_int(self, "threads")
        if self.heal_seconds is not None:
            _check_real(self, "heal_seconds", low=0.0)
        if self.heal_lr is not None:
            _check_real(self, "heal_lr", low=0.0)
        if self.heal_cache_gb is not None:
            _check_real(self, "heal_cache_gb", low=0.0, closed=True)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise InvalidInputError(
                    f"{f.name}={value!r} is not one of {', '.join(choices)}; choose one."
                )
        for name in ("heal_layerwise", "progress"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise InvalidInputError(f"{name}={value!r} must be True or False.")
        if self.targets is not None and (
            isinstance(self.targets, str)
            or not self.targets
            or not all(isinstance(t, str) and t for t in self.targets)
        ):
            raise InvalidInputError(
                f"targets={self.targets!r} must be a non-empty list of module names or suffixes."
            )

    def healing(self, name: str) -> Any:
        """The value of healing option ``name``: as given, else its default."""
        value = getattr(self, name)
        return HEAL_DEFAULTS[name] if value is None else value


def _check_int(config: CompressConfig, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name}={value!r} must be an integer >= 1.")


def _check_real(
    config: CompressConfig, name: str, *, low: float, high: float = math.inf, closed: bool = False
) -> None:
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if closed else value > low) and value <= high
    if not ok:
        bound = f">= {low:g}" if closed else f"> {low:g}"
        upper = "" if high == math.inf else f" and <= {high:g}"
        raise InvalidInputError(f"{name}={value!r} must be a finite number {bound}{upper}.")


# ---------------------------------------------------------------- files, before any work
def model_folder(name: str) -> Path | None:
    """The local folder ``name`` names, or ``None`` for a packaged model name."""
    from ..finetune.assets import canonical_model_name

    if canonical_model_name(name) is not None:
        return None
    folder = Path(name)
    if not folder.is_dir():
        raise InvalidInputError(
            f"unknown model {name!r}: not a packaged model (minilm, smollm2) and no such "
            "folder. Give a packaged name or a local Hugging Face model folder."
        )
    return folder


def check_output(output: str | Path, model: str | Path | None = None) -> Path:
    """``output`` as a folder this run can write: not a file, not the model's own folder, and
    under a folder that exists and is writable (checked before any work)."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output={str(out)!r} is a file; give a folder.")
    if model is not None and out.resolve() == Path(model).resolve():
        raise InvalidInputError(
            f"output={str(out)!r} is the model's own folder; the compressed files and the "
            "tokenizer would be written over the model's. Give another folder."
        )
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise InvalidInputError(
            f"output={str(out)!r} cannot be created: {existing} is a file. Give a folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"output={str(out)!r} cannot be written: {existing} is not writable. Give a "
            "folder you can write to."
        )
    return out


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
            raise InvalidInputError(
                f"unknown model {name!r}: not a packaged model (minilm, smollm2) and no such "
                "folder. Give a packaged name or a local Hugging Face model folder."
            )
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read a model config in {folder}: {exc}") from None
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
        raise InvalidInputError(
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
            raise InvalidInputError(f"{p} has no 'text' column (columns: {list(rows[0])}).")
        texts = [str(r["text"]).strip() for r in rows]
    elif suffix == ".jsonl":
        texts = []
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{p}, line {i}: not JSON ({exc.msg}).") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise InvalidInputError(f"{p}, line {i}: expected an object with a 'text' string.")
            texts.append(rec["text"].strip())
    else:
        raise InvalidInputError(f"calibration file {p} must be .txt, .csv, .tsv or .jsonl.")
    texts = [t for t in texts if t]
    if not texts:
        raise InvalidInputError(f"{p} holds no text.")
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
        raise InvalidInputError(
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
    from .measure import forward_cost, mean_cosine, sentence_embeddings, tokenize_batches

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
    from ..finetune.chat_tokens import CausalDataset, make_collator
    from ..finetune.lm_eval import evaluate_lm
    from .measure import forward_cost

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


# ---------------------------------------------------------------- the job
def run_compress(config: CompressConfig, *, echo: Callable[[str], Any] = print) -> dict:
    """Run ``ttdecomp compress``: load, compress, save, heal (and save again), measure, report.

    ``echo`` receives the progress lines (``print`` by default). Returns the record written
    to ``output/report.json``. If healing is interrupted (``KeyboardInterrupt``), the
    compression saved before healing stays in ``output`` and the interrupt propagates.

    Raises
    ------
    InvalidInputError
        A bad option, model, calibration or output (before any work where it can be known).

    Examples
    --------
    >>> run_compress(CompressConfig("no-such-model", output="out", budget="50%"))
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: unknown model 'no-such-model': not a packaged model ...
    """
    if not isinstance(config, CompressConfig):
        raise InvalidInputError(
            f"run_compress needs a CompressConfig, got {type(config).__name__}."
        )
    import torch

    from .heal import heal
    from .model import compress_model

    out = check_output(config.output, model_folder(config.model))
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    model, tokenizer, kind = load_model(config.model)
    data = config.calibration or ("chatterbot" if kind == "causal" else "tweets")
    heal_size = config.healing("heal_size")
    sizes = (config.calibration_size, heal_size, config.eval_size)
    if kind == "encoder":
        from .measure import tokenize_batches

        cal_texts, heal_texts, held = encoder_texts(data, sizes)
        calibration = tokenize_batches(tokenizer, cal_texts, batch_size=32)
        heal_data = tokenize_batches(tokenizer, heal_texts, batch_size=32) if config.heal else []
    else:
        splits, _ = causal_data(data)
        calibration = causal_batches(tokenizer, splits.train[: config.calibration_size])
        heal_data = causal_batches(tokenizer, splits.train[:heal_size]) if config.heal else []
        held = splits.test[: config.eval_size]
    original = copy.deepcopy(model)
    compressed, report = compress_model(
        model,
        config.budget,
        eps=config.eps,
        target_modules=config.targets or "all-linear",
        calibration=calibration,
        method=config.method,
        layout=config.layout,
        allocation=config.allocation,
        inplace=True,
        progress=bool(config.progress),
    )
    echo(str(report))
    record: dict[str, Any] = {
        "model": config.model,
        "kind": kind,
        "calibration": data,
        "budget": config.budget,
        "report": report.to_dict(),
        "heal": None,
        "measured": None,
    }
    healed = None
    if config.heal:
        _save(compressed, tokenizer, report, {**record, "heal": "not finished"}, out)
        echo(f"saved the compression in {out}; healing (Ctrl-C keeps it as saved)")
        t0 = time.perf_counter()
        try:
            healed = heal(
                compressed,
                original,
                heal_data,
                steps=config.healing("heal_steps"),
                max_seconds=config.healing("heal_seconds"),
                lr=config.healing("heal_lr"),
                layerwise=config.healing("heal_layerwise"),
                hidden=config.healing("heal_hidden"),
                schedule=config.healing("heal_schedule"),
                cache_bytes=int(config.healing("heal_cache_gb") * 2**30),
            )
        except KeyboardInterrupt:
            echo(
                f"healing interrupted: the compression saved before healing is in {out} "
                "(reload it with ttdecomp.compress.load_compressed)"
            )
            raise
        echo(
            f"healing: {healed.steps} steps in {time.perf_counter() - t0:.0f} s, loss "
            f"{healed.loss_first:.4f} -> {healed.loss_last:.4f}"
        )
        if healed.refit is not None and healed.refit.layers:
            done = healed.refit.layers
            before = sum(r.error_before for r in done) / len(done)
            after = sum(r.error_after for r in done) / len(done)
            echo(
                f"layer-wise refit: {len(done)} layers in {healed.refit.seconds:.0f} s, mean "
                f"output error {before:.3f} -> {after:.3f}"
            )
    if kind == "encoder":
        measured = measure_encoder(original, compressed, tokenizer, held)
        echo(
            f"model: mean cosine of sentence embeddings to the original's "
            f"{measured['cosine']:.4f} on {measured['texts']} held-out texts"
        )
    else:
        measured = measure_causal(original, compressed, tokenizer, held, dense_ppl=None)
        echo(
            f"model: held-out perplexity {measured['perplexity']:.2f} (dense "
            f"{measured['dense_perplexity']:.2f}) on {measured['dialogues']} dialogues"
        )
    echo(
        f"forward, batch of 32: {measured['time_ratio']:.2f}x the dense time, peak memory "
        f"{measured['peak_ratio']:.2f}x, parameters {measured['param_bytes'] / 2**20:.1f} MiB "
        f"(dense {measured['dense_param_bytes'] / 2**20:.1f} MiB)"
    )
    record["heal"] = None if healed is None else dataclasses.asdict(healed)
    record["measured"] = measured
    _save(compressed, tokenizer, report, record, out)
    echo(f"wrote {out}")
    return record


def _save(compressed: Any, tokenizer: Any, report: Any, record: dict, out: Path) -> None:
    from .serialization import save_compressed

    save_compressed(compressed, out, report)
    tokenizer.save_pretrained(out)
    write_files(
        [
            (out / "report.json", (json.dumps(record, indent=2) + "\n").encode()),
            (out / "report.txt", (str(report) + "\n").encode()),
        ]
    )
