"""The files ttdecomp writes and reads back: atomic writes, JSON records, (record + tensors) pairs.

Every save of the package goes through here, so every one keeps the same promises:

- **Atomic.** A file is written to a temporary file in its own folder (same file system), flushed
  to disk (``fsync``) and renamed over the target (``os.replace``): a reader sees the old file or
  the new one, never half of one. :func:`write_files` writes several files all-or-nothing up to
  the renames; :func:`replace_folder` swaps a whole folder.
- **Never through a symbolic link**, never into a path whose parent is a file.
- **Strict JSON records.** :func:`read_json` names the file and the line, column and byte of an
  error, and refuses duplicate keys, ``NaN``/``Infinity`` and absurd nesting.
- **Versioned pairs.** :func:`save_pair` writes a JSON record and a safetensors file that share
  one ``save_id``; :func:`load_pair` refuses a pair from two different saves (a rename
  interrupted by a kill) and a record of another format version.

Examples
--------
>>> import tempfile, os
>>> from ttdecomp._files import read_json, write_json
>>> path = os.path.join(tempfile.mkdtemp(), "record.json")
>>> write_json(path, {"rows": [1, 2]})
>>> read_json(path)
{'rows': [1, 2]}
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = [
    "MAX_JSON_DEPTH",
    "check_nesting",
    "check_target",
    "load_pair",
    "read_json",
    "replace_folder",
    "save_pair",
    "write_files",
    "write_json",
    "write_with",
]

#: The deepest nesting :func:`read_json` accepts (ttdecomp's own records nest less than 10).
MAX_JSON_DEPTH = 64

ErrorClass = type[Exception]


def check_target(path: Path, error: ErrorClass = InvalidInputError) -> None:
    """Refuse a target that is a symbolic link or a folder, or whose parent is a symbolic
    link or a file."""
    for p in (path.parent, path):
        if p.is_symlink():
            raise error(
                f"{p} is a symbolic link; ttdecomp never writes through a symbolic link (it could "
                "overwrite a file outside the save folder). Remove the link or save elsewhere."
            )
    for p in (path.parent, *path.parent.parents):
        if p.exists() and not p.is_dir():
            raise error(
                f"cannot save into {path.parent}: {p} is a file, not a folder. Choose a folder."
            )
    if path.is_dir():
        raise error(f"cannot write {path}: it is a folder. Remove it or save elsewhere.")


def write_files(
    files: Sequence[tuple[str | os.PathLike, bytes]], *, error: ErrorClass = InvalidInputError
) -> None:
    """Write ``[(path, bytes), ...]`` atomically: every temporary first, then the renames in order.

    Temporaries are created with ``O_EXCL`` in each target's folder (so the rename stays on one
    file system and never follows a link) and flushed to disk. If anything fails before the
    first rename, the temporaries and the folders this call created are removed and the
    previous files are untouched; ``error`` (an exception class) names the target, the reason,
    and which targets were already replaced when a rename failed. A file keeps its permission
    bits; a new one gets ``0o644``.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_files([(folder / "a.bin", b"1"), (folder / "b.txt", b"two")])
    >>> sorted(p.name for p in folder.iterdir()), (folder / "b.txt").read_text()
    (['a.bin', 'b.txt'], 'two')
    """
    pairs = [(Path(path), data) for path, data in files]
    for path, _ in pairs:
        check_target(path, error)
    created: list[Path] = []
    temps: list[tuple[str, Path]] = []
    replaced: list[Path] = []
    current: Path | None = None
    try:
        for path, data in pairs:
            current, folder = path, path.parent
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            created.extend(reversed(missing))
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
            temps.append((tmp, path))
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; keep the file's mode, else 0644
                os.fchmod(fd, path.stat().st_mode & 0o777 if path.is_file() else 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in temps:
            current = path
            check_target(path, error)
            os.replace(tmp, path)
            replaced.append(path)
    except OSError as exc:
        _clean([t for t in temps if t[1] not in replaced], [] if replaced else created)
        if replaced:
            done = ", ".join(str(p) for p in replaced)
            state = (
                f"{done} {'was' if len(replaced) == 1 else 'were'} replaced already, the other "
                "files are unchanged, so the set is mixed: save again"
            )
        else:
            state = "the previous files there, if any, are unchanged"
        raise error(
            f"cannot write {current} ({exc.strerror or exc}); {state}. Check that the folder is "
            "writable and the disk has space."
        ) from None
    except BaseException:
        _clean([t for t in temps if t[1] not in replaced], [] if replaced else created)
        raise


def _clean(temps: Sequence[tuple[str, Path]], created: Sequence[Path]) -> None:
    for tmp, _ in temps:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


def write_with(
    path: str | os.PathLike,
    write: Callable[[Path], Any],
    *,
    error: ErrorClass = InvalidInputError,
) -> None:
    """Atomically write ``path`` with a writer that takes a file name (``fig.savefig``,
    ``safetensors.numpy.save_file``): ``write(tmp)`` fills a temporary beside ``path``,
    which is flushed to disk and renamed over it.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "hello.txt"
    >>> write_with(path, lambda tmp: tmp.write_text("hello"))
    >>> path.read_text()
    'hello'
    """
    path = Path(path)
    check_target(path, error)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if hasattr(os, "chmod"):
            os.chmod(tmp, path.stat().st_mode & 0o777 if path.is_file() else 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise error(
            f"cannot write {path} ({exc.strerror or exc}); the previous file there, if any, is "
            "unchanged. Check that the folder is writable and the disk has space."
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def replace_folder(
    folder: str | os.PathLike,
    write: Callable[[Path], Any],
    *,
    error: ErrorClass = InvalidInputError,
) -> None:
    """Replace ``folder`` as a whole: ``write(tmp)`` fills a fresh folder beside it, which then
    takes its place (the old one is moved aside first, and back if the swap fails).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "adapter"
    >>> replace_folder(folder, lambda tmp: (tmp / "a.txt").write_text("1"))
    >>> replace_folder(folder, lambda tmp: (tmp / "b.txt").write_text("2"))
    >>> sorted(p.name for p in folder.iterdir())
    ['b.txt']
    """
    folder = Path(folder)
    check_target(folder / "_", error)
    if folder.is_symlink():
        raise error(f"{folder} is a symbolic link; ttdecomp never writes through one.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    aside: Path | None = None
    try:
        write(tmp)
        if folder.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, aside / folder.name)
        try:
            os.replace(tmp, folder)
        except BaseException:
            if aside is not None:
                os.replace(aside / folder.name, folder)
            raise
    except OSError as exc:
        raise error(
            f"cannot write {folder} ({exc.strerror or exc}); the previous folder there, if any, "
            "is unchanged. Check that the folder is writable and the disk has space."
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def write_json(
    path: str | os.PathLike,
    data: Any,
    *,
    sort_keys: bool = False,
    error: ErrorClass = InvalidInputError,
) -> None:
    """Write ``data`` as indented JSON (no ``NaN``/``Infinity``), atomically.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "r.json"
    >>> write_json(path, {"b": 1, "a": [1.5]})
    >>> print(path.read_text(), end="")
    {
      "b": 1,
      "a": [
        1.5
      ]
    }
    """
    text = json.dumps(data, indent=2, allow_nan=False, sort_keys=sort_keys) + "\n"
    write_files([(path, text.encode())], error=error)


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_nesting(value: Any, source: str) -> Any:
    """Return ``value`` (a parsed JSON or YAML document) if it nests at most
    :data:`MAX_JSON_DEPTH` deep; else raise :class:`~ttdecomp.errors.InvalidInputError` naming
    ``source``.

    Examples
    --------
    >>> check_nesting({"a": [1, 2]}, "run.yaml")
    {'a': [1, 2]}
    >>> check_nesting([[[]]] * 1, "x.json") == [[[]]]
    True
    """
    depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise InvalidInputError(
            f"{source} nests {depth} levels deep; ttdecomp's files nest at most "
            f"{MAX_JSON_DEPTH}. Is it the right file?"
        )
    return value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(
    path: str | os.PathLike,
    *,
    error: ErrorClass = InvalidInputError,
    what: str = "a JSON file",
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """The JSON value in ``path``, read strictly; ``error`` names the file and what is wrong.

    Refused: a missing or unreadable file, bytes that are not UTF-8 (a byte-order mark is
    accepted), invalid JSON (the line, column and byte are named), a key given twice in one
    object, ``NaN``/``Infinity``, nesting deeper than ``max_depth``. ``what`` says what the
    file should be, for the message ("a ttdecomp results file").

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "r.json"
    >>> _ = path.write_text('{"a": 1, "a": 2}')
    >>> try:
    ...     read_json(path)
    ... except InvalidInputError as err:
    ...     print(str(err).split(": ", 1)[1])
    the key 'a' appears twice in one object; expected a JSON file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path} does not exist; expected {what}.") from None
    except OSError as exc:
        raise error(f"{path} could not be read ({exc.strerror or exc}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: byte {exc.start} is not UTF-8 ({exc.reason}); expected {what}."
        ) from None
    try:
        value = json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except _DuplicateKey as exc:
        raise error(
            f"{path}: the key {exc.args[0]!r} appears twice in one object; expected {what}."
        ) from None
    except json.JSONDecodeError as exc:
        byte = len(text[: exc.pos].encode())
        raise error(
            f"{path}: {exc.msg} at line {exc.lineno}, column {exc.colno} (byte {byte}); it is "
            f"not valid JSON (expected {what}; truncated or edited by hand?)."
        ) from None
    except ValueError as exc:
        raise error(f"{path}: {exc}; expected {what}.") from None
    except RecursionError:
        raise error(f"{path} nests deeper than {max_depth} levels; expected {what}.") from None
    if _depth(value) > max_depth:
        raise error(f"{path} nests deeper than {max_depth} levels; expected {what}.")
    return value


def save_pair(
    weights_path: str | os.PathLike,
    record_path: str | os.PathLike,
    record: Mapping[str, Any],
    tensors: Mapping[str, Any],
    *,
    metadata: Mapping[str, str] | None = None,
    error: ErrorClass = InvalidInputError,
) -> str:
    """Save torch ``tensors`` (safetensors) and ``record`` (sorted JSON) as one versioned pair.

    Both files get one fresh ``save_id`` (in the record and in the safetensors metadata, beside
    ``metadata`` and ``"format": "pt"``); weights are renamed into place before the record
    (:func:`write_files`). The record should carry its own ``format_version``. Returns the
    ``save_id``; :func:`load_pair` reads the pair back.

    Examples
    --------
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = save_pair(folder / "w.safetensors", folder / "r.json", {"format_version": 1},
    ...               {"x": torch.ones(2)})
    >>> record, tensors = load_pair(folder / "r.json", folder / "w.safetensors", format_version=1)
    >>> record["format_version"], tensors["x"].tolist()
    (1, [1.0, 1.0])
    """
    from safetensors.torch import save

    save_id = uuid.uuid4().hex
    full = {**record, "save_id": save_id}
    meta = {"format": "pt", **(metadata or {}), "save_id": save_id}
    weights = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, meta)
    text = json.dumps(full, indent=2, sort_keys=True) + "\n"
    write_files([(weights_path, weights), (record_path, text.encode())], error=error)
    return save_id


def load_pair(
    record_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    *,
    format_version: int,
    error: ErrorClass = InvalidInputError,
    what: str = "a ttdecomp record",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a pair written by :func:`save_pair`: ``(record, tensors)`` (torch tensors).

    Refuses a missing file, a record that is not a strict JSON object (:func:`read_json`) of
    ``format_version``, a weights file safetensors cannot read, and a pair whose ``save_id``
    differ (the files of two saves).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load

    record_path, weights_path = Path(record_path), Path(weights_path)
    for p in (record_path, weights_path):
        if not p.is_file():
            raise error(f"{p} does not exist; expected {what} ({record_path.name} and "
                        f"{weights_path.name}).")  # fmt: skip
    record = read_json(record_path, error=error, what=what)
    if not isinstance(record, dict) or record.get("format_version") != format_version:
        found = record.get("format_version") if isinstance(record, dict) else None
        raise error(
            f"{record_path} is not {what} of format {format_version} (format_version "
            f"{found!r}); it was written by another program or another version of ttdecomp."
        )
    try:
        tensors = load(weights_path.read_bytes())
        with safe_open(str(weights_path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{weights_path} is not a readable safetensors file ({exc}).") from None
    if meta.get("save_id") != record.get("save_id"):
        raise error(
            f"{record_path} and {weights_path} come from different saves (save_id differs); "
            "save again."
        )
    return record, tensors
