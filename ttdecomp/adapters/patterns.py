"""Target patterns: the error for a pattern that selects nothing, and bounded regexes.

The adapters' configs select modules by names, name suffixes and regular expressions, as PEFT
does. A regex from a config file is untrusted input: Python's ``re`` backtracks, so
:func:`check_regex` refuses patterns whose matching time is not bounded, and
:func:`check_patterns` checks a whole target list.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError

try:  # the pattern parser of the re module (Python 3.11+), sre_parse before
    import re._parser as _sre_parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parser  # type: ignore[no-redef]

__all__ = [
    "MAX_PATTERN_LENGTH",
    "MAX_UNBOUNDED_REPEATS",
    "TargetModulesError",
    "check_patterns",
    "check_regex",
]


class TargetModulesError(InvalidInputError):
    """A target, exclusion or modules-to-save pattern that selects nothing (or the wrong kind).

    Examples
    --------
    >>> import torch
    >>> from ttdecomp.adapters import TargetModulesError, TTLoRAConfig, get_tt_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8))
    >>> try:
    ...     get_tt_model(net, TTLoRAConfig(target_modules=["q_proj"]))
    ... except TargetModulesError:
    ...     print("q_proj matches nothing")
    q_proj matches nothing
    """


#: Longest pattern accepted, and most unbounded quantifiers in one pattern: with module names of
#: at most a few hundred characters, matching then costs at most a polynomial of low degree.
MAX_PATTERN_LENGTH = 1000
MAX_UNBOUNDED_REPEATS = 4


def check_regex(pattern: str, name: str) -> None:
    """Refuse a pattern that is invalid or whose matching time is not bounded.

    Python's ``re`` backtracks: a repeated group that itself contains a repeat or an
    alternation (``(a+)+``, ``(a|aa)*``) or a backreference can take exponential time on a
    module name, so a crafted config would hang injection or ``from_pretrained``. Such patterns,
    patterns longer than :data:`MAX_PATTERN_LENGTH` characters and patterns with more than
    :data:`MAX_UNBOUNDED_REPEATS` unbounded quantifiers are refused. Possessive quantifiers
    (``*+``, ``++``) and atomic groups (``(?>...)``, Python 3.11+) never backtrack into a repeat
    and are accepted around anything.
    """
    _check_regex(pattern, name)


@functools.lru_cache(maxsize=256)
def _check_regex(pattern: str, name: str) -> None:
    # memoised (a refusal raises, so only accepted patterns are remembered): every adapter
    # loaded parses its config's patterns again
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise TargetModulesError(
            f"{name} pattern of {len(pattern)} characters is longer than the "
            f"{MAX_PATTERN_LENGTH} characters accepted; list module names instead."
        )
    try:
        parsed = _sre_parser.parse(pattern)
    except re.error as exc:
        raise TargetModulesError(
            f"{name} entry {pattern!r} is not a valid regular expression ({exc}). Strings are "
            "matched as module names, name suffixes or regexes against full module names."
        ) from None
    problem = _regex_problem(list(parsed), [0])
    if problem:
        raise TargetModulesError(
            f"{name} pattern {pattern!r} {problem}; patterns are bounded so that matching (also "
            "of a config read from a file) cannot hang. Use a possessive quantifier (*+, ++) or "
            "an atomic group (?>...), or list module names."
        )


_REPEATS = {_sre_parser.MAX_REPEAT, _sre_parser.MIN_REPEAT}
_POSSESSIVE = getattr(_sre_parser, "POSSESSIVE_REPEAT", None)


def _regex_problem(items: list, n_unbounded: list[int]) -> str | None:
    """Why a parsed pattern could backtrack badly, or ``None``."""
    for op, av in items:
        if op in (_sre_parser.GROUPREF, _sre_parser.GROUPREF_EXISTS):
            return "uses a backreference (matching can take exponential time)"
        if op in _REPEATS or op == _POSSESSIVE:
            _, hi, body = av
            if op in _REPEATS and hi > 1:
                if hi == _sre_parser.MAXREPEAT:
                    n_unbounded[0] += 1
                    if n_unbounded[0] > MAX_UNBOUNDED_REPEATS:
                        return (
                            f"has more than {MAX_UNBOUNDED_REPEATS} unbounded quantifiers "
                            "(matching time grows as a high power of the name length)"
                        )
                if _is_ambiguous(list(body)):
                    return (
                        "repeats a group that itself holds a repeat or an alternation, which can "
                        "backtrack exponentially"
                    )
            problem = _regex_problem(list(body), n_unbounded)
        else:
            problem = None
            for sub in _subpatterns(op, av):
                problem = problem or _regex_problem(list(sub), n_unbounded)
        if problem:
            return problem
    return None


def _subpatterns(op: Any, av: Any) -> list:
    if op == _sre_parser.SUBPATTERN:
        return [av[-1]]
    if op == _sre_parser.BRANCH:
        return list(av[1])
    if op in (_sre_parser.ASSERT, _sre_parser.ASSERT_NOT):
        return [av[1]]
    if op == getattr(_sre_parser, "ATOMIC_GROUP", None):
        return [av]
    return []


def _is_ambiguous(items: list) -> bool:
    """Does a repeat's body hold a (backtracking) repeat or an alternation?"""
    for op, av in items:
        if op == _sre_parser.BRANCH:
            return True
        if op in _REPEATS and av[1] > 1:
            return True
        if op in _REPEATS or op == _POSSESSIVE:
            continue
        if any(_is_ambiguous(list(sub)) for sub in _subpatterns(op, av)):
            return True
    return False


def check_patterns(
    value: Any, name: str, *, allow_all_linear: bool = False, regex: bool = True
) -> None:
    """Targets are ``None``, a regex string, or a non-empty sequence of non-empty strings."""
    if value is None or isinstance(value, str):
        if isinstance(value, str) and value != "all-linear" and regex:
            check_regex(value, name)
        if value == "all-linear" and not allow_all_linear:
            raise TargetModulesError(f"{name} does not accept 'all-linear'; list module names.")
        return
    if not isinstance(value, Sequence) or not value:
        raise TargetModulesError(
            f"{name} must be None, a regex string or a non-empty list of module names; "
            f"got {value!r}."
        )
    for item in value:
        if not isinstance(item, str) or not item:
            raise TargetModulesError(
                f"{name} entries must be non-empty strings; got {item!r} in {list(value)!r}."
            )
        if regex:
            check_regex(item, name)
