"""The folder cache the packaged models are assembled into (SmolLM2's clean copy, MPNet's unzip).

One place for what every cached asset needs: where the cache is (``$TTDECOMP_CACHE`` or
``~/.cache/ttdecomp``), one process at a time building it (an advisory lock beside the folder),
a folder that is neither empty nor written here refused rather than replaced, and the finished
folder moved into place with a rename, so a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .._files import replace_folder
from ..errors import InvalidInputError

__all__ = [
    "SOURCE_FILE",
    "build_once",
    "cache_lock",
    "cache_root",
    "check_cache_dir",
    "is_cache",
    "write_folder",
]

#: The record a cached folder carries of what it was made from.
SOURCE_FILE = "ttdecomp_source.json"


def cache_root() -> Path:
    """``$TTDECOMP_CACHE`` when set, else ``~/.cache/ttdecomp``."""
    root = os.environ.get("TTDECOMP_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ttdecomp"


def is_cache(folder: Path, source: Mapping[str, Any]) -> bool:
    """True when ``folder`` is a complete cache made from ``source`` (its record matches)."""
    try:
        record = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record == dict(source) and (folder / "config.json").is_file()


def check_cache_dir(folder: Path, what: str) -> None:
    """Refuse to replace a folder that is neither empty nor a cache this package wrote."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InvalidInputError(
            f"cache_dir {folder} is a file; expected a folder for the {what} checkpoint. "
            "Pass another cache_dir or remove the file."
        )
    if any(folder.iterdir()) and not (folder / SOURCE_FILE).is_file():
        raise InvalidInputError(
            f"cache_dir {folder} is not empty and holds no {SOURCE_FILE}, so it is not a "
            f"{what} checkpoint cached by ttdecomp and will not be overwritten. Pass an empty "
            "or new folder as cache_dir."
        )


@contextlib.contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """One process at a time builds or reads ``folder`` (an advisory lock beside it, POSIX).

    Without it two processes that find no cache (test workers, search workers) would both
    write it, and one could move the folder away while the other reads it.
    """
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): the atomic rename still protects a reader
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_folder(folder: Path, fill: Callable[[Path], None], source: Mapping[str, Any]) -> None:
    """Make ``folder`` atomically: ``fill`` a temporary folder beside it, record, rename."""

    def write(tmp: Path) -> None:
        fill(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(dict(source)), encoding="utf-8")

    replace_folder(folder, write)


def build_once(
    folder: Path, source: Mapping[str, Any], fill: Callable[[Path], None], what: str
) -> Path:
    """``folder`` holding what ``fill`` writes, built only when no cache of ``source`` is there."""
    check_cache_dir(folder, what)
    with cache_lock(folder):
        if not is_cache(folder, source):
            write_folder(folder, fill, source)
    return folder
