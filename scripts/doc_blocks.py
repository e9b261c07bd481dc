"""Generated blocks in markdown files: the text between ``<!-- KIND:NAME:begin -->`` and
``<!-- KIND:NAME:end -->``, replaced atomically (the scripts that generate docs tables use it)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


class BlockError(ValueError):
    """A file without the block's markers (what was given, what is expected)."""


def _markers(kind: str, block: str) -> tuple[str, str]:
    return f"<!-- {kind}:{block}:begin -->", f"<!-- {kind}:{block}:end -->"


def write_block(
    path: str | os.PathLike, block: str, text: str, *, kind: str, error: type = BlockError
) -> None:
    """Replace the text between the block's markers in ``path`` (a temporary file, renamed)."""
    path = Path(path)
    begin, end = _markers(kind, block)
    content = path.read_text(encoding="utf-8")
    if (
        content.count(begin) != 1
        or content.count(end) != 1
        or content.index(begin) > content.index(end)
    ):
        raise error(
            f"{path} must hold {begin} and then {end} once each; add them where the table goes."
        )
    head, rest = content.split(begin)
    _, tail = rest.split(end)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{head}{begin}\n{text}\n{end}{tail}")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_block(path: str | os.PathLike, block: str, *, kind: str, error: type = BlockError) -> str:
    """The text between the block's markers in ``path`` (what :func:`write_block` wrote)."""
    content = Path(path).read_text(encoding="utf-8")
    begin, end = _markers(kind, block)
    if begin not in content or end not in content:
        raise error(f"{path} has no {begin} ... {end} block.")
    return content.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def run(name: str, make: Callable[[], str], write: Callable[[str], None] | None) -> int:
    """A table script's end: print the table (and write it), or one error line and exit 2."""
    try:
        text = make()
        if write is not None:
            write(text)
    except (BlockError, OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0
