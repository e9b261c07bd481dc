"""Small, self-contained inputs for testing ``ttdecomp finetune`` (no packaged assets needed).

:func:`tiny_classifier_folder` writes a Hugging Face model folder (a 2-layer BERT classifier
with a character-level WordPiece vocabulary and no dropout) that ``--model`` accepts,
:func:`tiny_causal_folder` a 2-layer GPT-2 with the same tokenizer, and
:func:`toy_sentiment_csv` a learnable two-class CSV. :func:`hub_model` and :func:`hub_dataset`
copy such a folder or data files into a Hugging Face cache (``$HF_HOME/hub``) laid out as the
Hub lays it out, so ``--model org/name`` and ``--data org/dataset`` run offline. The
test-suite and the documentation use them; they are not meant for real training.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import string
from collections.abc import Mapping
from pathlib import Path

from ..errors import InvalidInputError

__all__ = [
    "hub_dataset",
    "hub_model",
    "tiny_causal_folder",
    "tiny_classifier_folder",
    "toy_sentiment_csv",
]

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
    >>> from transformers import AutoTokenizer
    >>> AutoTokenizer.from_pretrained(folder).tokenize("the ride was great")
    ['the', 'ride', 'was', 'great']
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = sorted(set(_POSITIVE + _NEGATIVE + _FILLER))
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars]
    vocab += [f"##{c}" for c in string.ascii_lowercase + string.digits]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config_file = path / "tokenizer_config.json"
    config_file.write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    # read back from vocab.txt (transformers 5 ignores BertTokenizerFast(vocab_file=...) and
    # would give a tokenizer of the special tokens only: every word [UNK])
    tokenizer = AutoTokenizer.from_pretrained(str(path))
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


def tiny_causal_folder(path: str | os.PathLike, *, seed: int = 0, hidden: int = 32) -> Path:
    """Write a tiny GPT-2 causal LM (random weights) with the character-level tokenizer.

    Examples
    --------
    >>> import json, tempfile
    >>> folder = tiny_causal_folder(tempfile.mkdtemp())
    >>> json.loads((folder / "config.json").read_text())["architectures"]
    ['GPT2LMHeadModel']
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    tiny_classifier_folder(path, seed=seed, hidden=hidden)  # for its tokenizer files
    for name in ("config.json", "model.safetensors"):
        (path / name).unlink()
    torch.manual_seed(seed)
    vocab = len((path / "vocab.txt").read_text().splitlines())
    config = GPT2Config(
        vocab_size=vocab, n_positions=128, n_embd=hidden, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(str(path))
    return path


def _snapshot(hf_home: str | os.PathLike, kind: str, repo_id: str, revision: str) -> Path:
    """A fresh snapshot folder ``$HF_HOME/hub/<kind>s--org--name/snapshots/<sha>`` with its ref."""
    if repo_id.count("/") != 1:
        raise InvalidInputError(f"repo_id must be org/name; got {repo_id!r}")
    repo = Path(hf_home) / "hub" / f"{kind}s--{repo_id.replace('/', '--')}"
    sha = hashlib.sha1(f"{kind}:{repo_id}:{revision}".encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def hub_model(
    hf_home: str | os.PathLike, repo_id: str, folder: str | os.PathLike, *, revision: str = "main"
) -> Path:
    """Copy a model folder into the Hub cache under ``hf_home`` as ``repo_id`` at ``revision``.

    The layout is the Hub's (``hub/models--org--name/refs/<revision>`` holding a commit hash,
    ``snapshots/<hash>/`` the files), so with ``HF_HOME=hf_home`` and ``HF_HUB_OFFLINE=1``
    ``from_pretrained(repo_id)`` and ``--model repo_id`` load it without a network.

    Examples
    --------
    >>> import tempfile
    >>> home = tempfile.mkdtemp()
    >>> snap = hub_model(home, "org/tiny", tiny_classifier_folder(tempfile.mkdtemp()))
    >>> snap.relative_to(home).parts[:3]
    ('hub', 'models--org--tiny', 'snapshots')
    """
    snapshot = _snapshot(hf_home, "model", repo_id, revision)
    for item in Path(folder).iterdir():
        if item.is_file():
            shutil.copy2(item, snapshot / item.name)
    return snapshot


def hub_dataset(
    hf_home: str | os.PathLike,
    repo_id: str,
    files: Mapping[str, str | os.PathLike],
    *,
    revision: str = "main",
) -> Path:
    """Copy data files into the Hub cache under ``hf_home`` as the dataset ``repo_id``.

    ``files`` maps a path inside the repository (e.g. ``"data/train.csv"``,
    ``"data/test.csv"``: ``datasets`` names the splits after the files) to a local file.

    Examples
    --------
    >>> import tempfile, os
    >>> home, tmp = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> csv_file = toy_sentiment_csv(os.path.join(tmp, "t.csv"), n=10)
    >>> snap = hub_dataset(home, "org/toy", {"data/train.csv": csv_file})
    >>> (snap / "data" / "train.csv").is_file()
    True
    """
    snapshot = _snapshot(hf_home, "dataset", repo_id, revision)
    for inside, local in files.items():
        target = snapshot / inside
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(local, target)
    return snapshot
