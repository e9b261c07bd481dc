"""``ttdecomp._files``: atomic writes, strict JSON records, versioned (record + tensors) pairs."""

from __future__ import annotations

import json
import os

import pytest

from ttdecomp import _files
from ttdecomp.errors import InvalidInputError


def test_write_json_is_byte_compatible_with_the_old_results_writer(tmp_path):
    data = {"rows": [{"method": "lora", "acc": 0.5}], "é": "ü"}
    _files.write_json(tmp_path / "r.json", data)
    # what finetune.report.write_json_atomic wrote before: json.dump(indent=2) + "\n"
    assert (tmp_path / "r.json").read_text() == json.dumps(data, indent=2) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left


def test_write_json_refuses_nan_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    _files.write_json(path, {"a": 1})
    with pytest.raises(ValueError, match="Out of range float"):
        _files.write_json(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1, "a": 2}', "the key 'a' appears twice"),
        ('{"rows": [1, 2,', "line 1, column 16 (byte 15)"),
        ('{"a": NaN}', "NaN is not a JSON number"),
        ("[" * 100 + "]" * 100, "nests deeper than 64 levels"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper than 64 levels"),
    ],
)
def test_read_json_is_strict_and_names_the_file(tmp_path, text, message):
    path = tmp_path / "r.json"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=r"r\.json") as info:
        _files.read_json(path)
    assert message in str(info.value)


def test_read_json_names_the_byte_of_bad_utf8_and_accepts_a_bom(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InvalidInputError, match="byte 7 is not UTF-8"):
        _files.read_json(path)
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert _files.read_json(path) == {"a": 1}
    with pytest.raises(InvalidInputError, match="does not exist; expected a results file"):
        _files.read_json(tmp_path / "missing.json", what="a results file")


def test_a_failed_rename_after_another_says_the_set_is_mixed(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    _files.write_files([(a, b"old a"), (b, b"old b")])
    real = os.replace

    def second_fails(src, dst):
        if str(dst) == str(b):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(InvalidInputError) as info:
        _files.write_files([(a, b"new a"), (b, b"new b")])
    message = str(info.value)
    # before: "the previous files there, if any, are unchanged" although a was replaced
    assert "unchanged" not in message.split("the other files are unchanged")[0]
    assert f"{a} was replaced already" in message and "save again" in message
    assert (a.read_bytes(), b.read_bytes()) == (b"new a", b"old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary left


def test_a_failed_first_rename_says_nothing_changed(tmp_path, monkeypatch):
    a = tmp_path / "a"
    _files.write_files([(a, b"old")])

    def fails(src, dst):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", fails)
    with pytest.raises(InvalidInputError, match="previous files there, if any, are unchanged"):
        _files.write_files([(a, b"new")])
    assert a.read_bytes() == b"old"


def test_replace_folder_swaps_whole_folders_and_keeps_the_old_one_on_failure(tmp_path):
    folder = tmp_path / "adapter"
    _files.replace_folder(folder, lambda tmp: (tmp / "old.txt").write_text("1"))

    def broken(tmp):
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _files.replace_folder(folder, broken)
    assert [p.name for p in folder.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left


def test_write_with_refuses_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "fig.png").symlink_to(victim)
    with pytest.raises(InvalidInputError, match="symbolic link"):
        _files.write_with(tmp_path / "fig.png", lambda tmp: tmp.write_text("x"))
    assert victim.read_text() == "precious"


def test_pairs_round_trip_and_refuse_mixed_saves_and_other_versions(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    w, r = tmp_path / "w.safetensors", tmp_path / "r.json"
    _files.save_pair(w, r, {"format_version": 2, "b": 1}, {"x": torch.arange(3.0)})
    record, tensors = _files.load_pair(r, w, format_version=2)
    assert record["b"] == 1 and tensors["x"].tolist() == [0.0, 1.0, 2.0]
    assert r.read_text() == json.dumps(record, indent=2, sort_keys=True) + "\n"
    with pytest.raises(InvalidInputError, match="format 3"):
        _files.load_pair(r, w, format_version=3)
    old = w.read_bytes()
    _files.save_pair(w, tmp_path / "other.json", {"format_version": 2}, {"x": torch.ones(3)})
    with pytest.raises(InvalidInputError, match="different saves"):
        _files.load_pair(r, w, format_version=2)
    w.write_bytes(old)
    assert _files.load_pair(r, w, format_version=2)[0] == record
