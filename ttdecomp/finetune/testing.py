"""Small, self-contained inputs for testing ``ttdecomp finetune`` (no packaged assets needed).

:func:`tiny_classifier_folder` writes a Hugging Face model folder (a 2-layer BERT classifier
with a character-level WordPiece vocabulary and no dropout) that ``--model`` accepts, and
:func:`toy_sentiment_csv` a learnable two-class CSV. The test-suite and the documentation use
them; they are not meant for real training.
"""

from __future__ import annotations

import csv
import os
import random
import string
from pathlib import Path

__all__ = ["tiny_classifier_folder", "toy_sentiment_csv"]

_POSITIVE = ("great", "love", "good", "happy", "nice", "fun", "safe", "cool", "best", "wow")
_NEGATIVE = ("bad", "hate", "awful", "sad", "ugly", "boring", "unsafe", "worst", "no", "meh")
_FILLER = ("the", "car", "ride", "was", "today", "it", "so", "my", "drive", "is")


def tiny_classifier_folder(path: str | os.PathLike, *, seed: int = 0, hidden: int = 32) -> Path:
    """Write a tiny BERT sequence classifier (random weights, dropout 0) with its tokenizer.

    Examples
    --------
    >>> import tempfile
    >>> folder = tiny_classifier_folder(tempfile.mkdtemp())
    >>> sorted(p.name for p in folder.iterdir())[:2]
    ['config.json', 'model.safetensors']
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = sorted(set(_POSITIVE + _NEGATIVE + _FILLER))
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars]
    vocab += [f"##{c}" for c in string.ascii_lowercase + string.digits]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(path))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(str(path))
    return path


def toy_sentiment_csv(path: str | os.PathLike, n: int = 400, *, seed: int = 0) -> Path:
    """A CSV (``text,label``) of ``n`` short distinct texts whose label is their sentiment word.

    Examples
    --------
    >>> import tempfile, os
    >>> p = toy_sentiment_csv(os.path.join(tempfile.mkdtemp(), "toy.csv"), n=10)
    >>> p.read_text().splitlines()[0]
    'text,label'
    """
    rng = random.Random(seed)
    path = Path(path)
    seen: set[str] = set()
    rows = []
    while len(rows) < n:
        label = len(rows) % 2
        word = rng.choice(_POSITIVE if label else _NEGATIVE)
        filler = rng.sample(_FILLER, 3)
        text = " ".join([*filler[:2], word, filler[2], str(rng.randrange(10**6))])
        if text not in seen:
            seen.add(text)
            rows.append((text, "positive" if label else "negative"))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path
