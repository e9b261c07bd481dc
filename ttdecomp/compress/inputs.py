"""The inputs of ``ttdecomp compress``: the model, its texts, and the output folder.

A model is a packaged name, a local Hugging Face folder or a Hub id (:func:`load_model`);
calibration, healing and held-out texts come from the packaged data or a
``.txt``/``.csv``/``.jsonl`` file (:func:`encoder_texts`), dialogues for causal LMs
(:func:`causal_data`, :func:`causal_batches`); :func:`check_output` checks the folder to
write before any work.
"""

from __future__ import annotations

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
    """The local folder ``name`` names (checked: config, weights, tokenizer), or ``None`` for a
    packaged name or a Hub id (:func:`ttdecomp.assets.resolve_model`)."""
    from ..assets.loader import resolve_model
    from ..assets.registry import canonical_model_name

    if canonical_model_name(name) is not None and not Path(name).exists():
        return None
    source = resolve_model(name)
    return source.path if source.kind == "folder" else None


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
def load_model(
    name: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[Any, Any, str]:
    """``(model, tokenizer, kind)`` for a packaged name, a local folder or a Hub id (at
    ``revision``; its own code only with ``trust_remote_code``); kind is ``"encoder"`` or
    ``"causal"`` (:func:`ttdecomp.assets.model_task`). Float32, eval mode."""
    from ..assets.loader import check_model_folder, load_pretrained, load_tokenizer, resolve_model
    from ..assets.quantized import describe_quantization

    remote = {"revision": revision, "trust_remote_code": trust_remote_code}
    source = resolve_model(name, **remote)
    saved = check_model_folder(source.path, weights=False).get("quantization_config")
    if saved is not None:
        raise InvalidInputError(
            f"{name!r} is saved quantized ({describe_quantization(saved)}); compress factorises "
            "full-precision weights into TT-matrices. Give the model's full-precision checkpoint."
        )
    kind = "causal" if source.task == "causal" else "encoder"
    model = load_pretrained(source, task=kind, **remote)
    return model, load_tokenizer(source, pad_with_eos=True, **remote), kind


def read_texts(path: str | Path) -> list[str]:
    """Texts of a ``.txt`` (one per line), ``.csv`` or ``.jsonl`` (a ``text`` column) file."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(
            f"calibration {str(path)!r} is neither a packaged data set (tweets, chatterbot) nor "
            "a file; give --calibration tweets or a .txt/.csv/.jsonl file."
        )
    if p.suffix.lower() == ".txt":
        texts = [t.strip() for t in p.read_text(encoding="utf-8-sig").splitlines()]
    else:
        from ..assets.text_files import read_records

        texts = []
        for line, rec in read_records(p):  # strict UTF-8, ragged rows refused
            if not isinstance(rec.get("text"), str):
                raise InvalidInputError(
                    f"{p}, line {line}: expected a 'text' column holding a string."
                )
            texts.append(rec["text"].strip())
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
    from ..assets.chat_tokens import CausalDataset, make_collator

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
    from ..assets.dialogues import load_data, split_dialogues

    dialogues, source = load_data(data)
    return split_dialogues(dialogues, validation=0.1, test=0.1, seed=0), source
