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
from .._validation import check_bool
from ..errors import InvalidInputError
from ..planner import parse_budget
from .inputs import (
    causal_batches,
    causal_data,
    check_output,
    encoder_texts,
    load_model,
    model_folder,
)
from .measure import measure_causal, measure_encoder

__all__ = ["HEAL_CACHE_GB", "HEAL_DEFAULTS", "HEAL_SIZE", "CompressConfig", "run_compress"]

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
    heal_steps=10 is a healing option, given without heal=True
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
            "help": "module names or suffixes to compress",
            "default_text": "all linear layers but heads",
            "list": True,
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
    revision: str | None = field(
        default=None,
        metadata={"help": "a Hub model's branch, tag or commit", "type": str, "group": "Hub"},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "run the Python code a Hub model ships (only for repositories you trust)",
            "group": "Hub",
        },
    )
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads", "type": int})
    progress: bool | None = field(
        default=None,
        metadata={
            "help": "progress bars on stderr (default: when stderr is a terminal)",
            "type": bool,
        },
    )

    def __post_init__(self) -> None:
        check_bool(self.trust_remote_code, "trust_remote_code")
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision):
            raise InvalidInputError(
                f"revision={self.revision!r} must be a branch, tag or commit name, or None."
            )
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
                f"{shown} is a healing option, given without heal=True; add heal=True to heal, "
                "or leave the healing options out."
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
    model, tokenizer, kind = load_model(
        config.model, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
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
