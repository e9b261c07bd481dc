"""The inputs of ``ttdecomp compress``: the model, its texts, and the output folder.

A model is a packaged name or a local Hugging Face folder (:func:`load_model`); calibration,
healing and held-out texts come from the packaged data or a ``.txt``/``.csv``/``.jsonl`` file
(:func:`encoder_texts`), dialogues for causal LMs (:func:`causal_data`,
:func:`causal_batches`); :func:`check_output` checks the folder to write before any work.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

__all__ = [
    "causal_batches",
    "causal_data",
    "check_output",
    "encoder_texts",
    "load_model",
    "model_folder",
    "read_texts",
]


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
