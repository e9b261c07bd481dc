"""Selecting modules by names, name suffixes, bounded regexes or ``"all-linear"``.

The adapters' configs and :func:`~ttdecomp.compress.compress_model` select modules the same
way, as PEFT does, but strictly: a list entry matches a module whose name equals it, ends with
``"." + entry``, or fully matches it as a regular expression; a plain string is a regular
expression against full module names; ``"all-linear"`` is every linear layer except the output
head. **Every entry (targets and exclusions) must select at least one module**, otherwise
:class:`TargetModulesError` is raised. :func:`select_modules` does all of it.

A regex from a config file is untrusted input: Python's ``re`` backtracks, so
:func:`check_regex` refuses patterns whose matching time is not bounded, and
:func:`check_patterns` checks a whole target list.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import InvalidInputError
from .kinds import is_linear, output_head

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
    "entry_matches",
    "match_modules",
    "module_suffixes",
    "select_modules",
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


def entry_matches(entry: str, name: str) -> bool:
    """Does a list entry select ``name``: equal, a ``"." + entry`` suffix, or a full regex match?

    Examples
    --------
    >>> entry_matches("q", "layer.0.q"), entry_matches("q", "layer.0.qq")
    (True, False)
    """
    if name == entry or name.endswith("." + entry):
        return True
    try:
        return re.fullmatch(entry, name) is not None
    except re.error:
        return False


def module_suffixes(names: Sequence[str]) -> list[str]:
    """The distinct last parts of module names, sorted (at most 25), for error messages."""
    return sorted({n.rsplit(".", 1)[-1] for n in names})[:25]


def _examples(names: Sequence[str]) -> list[str]:
    return sorted(names, key=len)[-3:] if names else []


def match_modules(patterns: str | Sequence[str], names: Sequence[str], what: str) -> set[str]:
    """The names ``patterns`` select; every entry must select one.

    A string is a regex matched against full names; a sequence holds names, name suffixes
    or regexes. ``what`` names the option in the error.

    Examples
    --------
    >>> sorted(match_modules(["q"], ["layer.0.q", "layer.0.k", "layer.1.q"], "target_modules"))
    ['layer.0.q', 'layer.1.q']
    """
    key = patterns if isinstance(patterns, str) else tuple(patterns)
    return set(_match_memo(key, tuple(names), what))


@functools.lru_cache(maxsize=64)
def _match_memo(patterns: str | tuple[str, ...], names: tuple[str, ...], what: str) -> frozenset:
    # memoised: loading many adapters matches the same patterns against the same names
    check_patterns(patterns if isinstance(patterns, str) else list(patterns), what)
    if isinstance(patterns, str):
        hit = {n for n in names if re.fullmatch(patterns, n)}
        if not hit:
            raise TargetModulesError(
                f"{what}={patterns!r} (a regex matched against full module names) matches no "
                f"module. Module names look like {_examples(names)}."
            )
        return frozenset(hit)
    hit: set[str] = set()
    for entry in patterns:
        found = {n for n in names if entry_matches(entry, n)}
        if not found:
            raise TargetModulesError(
                f"{what} entry {entry!r} matches no module (PEFT would ignore this silently). "
                f"Module name suffixes available here include {module_suffixes(names)}; fix or "
                "remove the entry."
            )
        hit |= found
    return frozenset(hit)


def select_modules(
    model: nn.Module,
    target_modules: str | Sequence[str] | None = "all-linear",
    *,
    exclude_modules: str | Sequence[str] | None = None,
    modules: Mapping[str, nn.Module] | None = None,
    skip: Sequence[str] = (),
    kind: Callable[[nn.Module], bool] = is_linear,
    kind_name: str = "nn.Linear or transformers Conv1D",
) -> dict[str, nn.Module]:
    """The modules ``target_modules`` selects, minus ``exclude_modules``, in model order.

    Parameters
    ----------
    model : nn.Module
        The model (its output head is never part of ``"all-linear"``).
    target_modules : "all-linear", str or sequence of str
        ``"all-linear"`` (or ``None``): every module of ``kind`` except the output head and
        modules with a name part in ``skip``. A string: a regex matched against full names
        (``re.fullmatch``). A sequence: names, name suffixes (``"query"`` matches
        ``encoder.layer.0.attention.self.query``) or regexes. Regexes must be bounded
        (:func:`check_regex`).
    exclude_modules : str or sequence of str, optional
        Left out of the selection; every entry must match a module too.
    modules : mapping, optional
        ``{name: module}`` to select from (default: ``model.named_modules()`` without the
        root), e.g. the adapters' view where a wrapper stands for the layer it wraps.
    skip : sequence of str
        Name parts (``"lm_head"``, ``"classifier"``) that ``"all-linear"`` leaves out.
    kind, kind_name
        The kind of module that may be selected, and its name for the error message.

    Raises
    ------
    TargetModulesError
        An entry that matches nothing, a selection holding a module of another kind, an
        unbounded regex, or nothing left to select.

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> list(select_modules(m)), list(select_modules(m, ["2"])), list(select_modules(m, "[02]"))
    (['0', '2'], ['2'], ['0', '2'])
    >>> list(select_modules(m, exclude_modules=["0"]))
    ['2']
    """
    if modules is None:
        modules = {n: mod for n, mod in model.named_modules() if n}
    names = list(modules)
    if target_modules is None or target_modules == "all-linear":
        head = output_head(model)
        chosen = {
            n
            for n, mod in modules.items()
            if kind(mod) and mod is not head and not any(p in skip for p in n.split("."))
        }
        if not chosen:
            raise TargetModulesError(
                f"target_modules='all-linear' but the model has no {kind_name} layers "
                "outside its output head; nothing to select."
            )
        select_all = True
    else:
        if not isinstance(target_modules, str) and (
            not isinstance(target_modules, Sequence)
            or not target_modules
            or not all(isinstance(e, str) and e for e in target_modules)
        ):
            raise TargetModulesError(
                f"target_modules must be 'all-linear', a regex or a non-empty list of module "
                f"names, got {target_modules!r}."
            )
        chosen = match_modules(target_modules, names, "target_modules")
        select_all = False
    if exclude_modules is not None:
        chosen -= match_modules(exclude_modules, names, "exclude_modules")
    wrong = sorted(n for n in chosen if not kind(modules[n]))
    if wrong and not select_all:
        kinds = sorted({type(modules[n]).__name__ for n in wrong})
        raise TargetModulesError(
            f"target_modules={target_modules!r} selects {wrong[:5]} of type {kinds}; only "
            f"{kind_name} layers can be selected. Name the layers inside, e.g. "
            f"{module_suffixes([n for n, mod in modules.items() if kind(mod)])[:6]}."
        )
    if not chosen:
        raise TargetModulesError(
            f"after exclude_modules={exclude_modules!r} no module is left of target_modules="
            f"{target_modules!r}. Loosen the exclusions."
        )
    return {n: modules[n] for n in names if n in chosen}
