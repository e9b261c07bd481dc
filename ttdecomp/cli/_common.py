"""What the sub-commands of ``ttdecomp`` share."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

__all__ = ["progress_default", "warnings_as_lines"]


def progress_default(flag: bool | None) -> bool:
    """``--progress/--no-progress`` when given, else: bars when stderr is a terminal and tqdm
    is installed."""
    if flag is not None:
        return flag
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return sys.stderr.isatty()


@contextlib.contextmanager
def warnings_as_lines(command: str) -> Iterator[None]:
    """Print the library's warnings raised inside as ``ttdecomp COMMAND: warning: ...`` lines
    on stderr, once each (not Python's file:line format meant for developers)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            seen = set()
            for w in caught:
                text = str(w.message)
                if text not in seen:
                    seen.add(text)
                    print(f"ttdecomp {command}: warning: {text}", file=sys.stderr)
