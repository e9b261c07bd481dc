"""What the sub-commands of ``ttdecomp`` share: progress default, Ctrl-C and error handling."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator

from ..errors import TTError
from ._options import error_message

__all__ = ["progress_default", "run_job", "warnings_as_lines"]


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


def run_job(
    command: str,
    parser: argparse.ArgumentParser,
    body: Callable[[Callable[[], bool]], int],
    *,
    interrupted: Callable[[], str],
    speak: bool = True,
) -> int:
    """Run ``body(should_stop)``; Ctrl-C and SIGTERM stop it cleanly; return the exit status.

    ``should_stop()`` is true once a signal came (:func:`ttdecomp.runs.pool.stop_on_signals`).
    An interrupt prints ``interrupted()`` (what was kept) and returns 130; a
    :class:`~ttdecomp.errors.TTError` is one line on stderr, with the option it names written
    as its flag, and returns 2. ``speak=False`` (a torchrun process other than rank 0) prints
    nothing.
    """
    from ..runs.pool import stop_on_signals

    try:
        with stop_on_signals() as should_stop:
            return body(should_stop)
    except KeyboardInterrupt:
        if speak:
            print(f"\nttdecomp {command}: interrupted. {interrupted()}", file=sys.stderr)
        return 130
    except (TTError, FileNotFoundError) as exc:
        if speak:
            print(f"ttdecomp {command}: error: {error_message(exc, parser)}", file=sys.stderr)
        return 2


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
