"""What the sub-commands of ``ttdecomp`` share."""

from __future__ import annotations

import sys

__all__ = ["progress_default"]


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
