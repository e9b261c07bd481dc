"""Dialogues for causal-LM fine-tuning: loading, a leak-free split, and chat-formatted tokens.

A *dialogue* is a tuple of messages ``{"role": ..., "content": ...}``: an optional leading
``system`` message, then ``user`` and ``assistant`` turns. Sources:

- :func:`load_chatterbot`: the ``chatterbot-corpus`` package (English: 2,025 well-formed
  conversations, 898 distinct: ``tech_support.yml`` repeats 10 of them 1,050 times), turns
  alternating user / assistant, read with PyYAML's ``BaseLoader`` so that a turn such as
  ``yes`` stays the string ``"yes"``;
- :func:`load_dialogues_jsonl`: a JSONL file of ``{"prompt": ..., "reply": ...}`` or
  ``{"messages": [...]}`` lines.

:func:`split_dialogues` deduplicates and splits them into train / validation / test so that no
turn text appears in two splits, and :func:`tokenize_dialogues` turns every assistant turn into a
training example whose labels are ``-100`` on the prompt, so the loss is the reply's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, TTWarning
from .text_files import read_text

__all__ = [
    "Dialogue",
    "DialogueSplits",
    "chatterbot_languages",
    "load_chatterbot",
    "load_data",
    "load_dialogues_jsonl",
    "reply_prompt",
    "split_dialogues",
]

Dialogue = tuple[dict[str, str], ...]
_ROLES = ("system", "user", "assistant")
_CHATTERBOT_INSTALL = "pip install pyyaml && pip install --no-deps chatterbot-corpus"


def _chatterbot_data_dir() -> Path:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or importlib.util.find_spec("yaml") is None:
        raise InvalidInputError(
            "the chatterbot dialogues need the packages chatterbot-corpus and pyyaml, which are "
            f"not both installed. Install them with:\n{_CHATTERBOT_INSTALL}"
        )
    for folder in spec.submodule_search_locations or []:
        if (Path(folder) / "data").is_dir():
            return Path(folder) / "data"
    raise InvalidInputError(
        f"the installed chatterbot_corpus package has no data folder; reinstall it with:\n"
        f"{_CHATTERBOT_INSTALL}"
    )


def chatterbot_languages() -> list[str]:
    """The languages the installed ``chatterbot-corpus`` has dialogues for.

    Examples
    --------
    >>> "english" in chatterbot_languages()
    True
    """
    return sorted(p.name for p in _chatterbot_data_dir().iterdir() if p.is_dir())


def _alternating(turns: Sequence[str]) -> Dialogue:
    return tuple(
        {"role": "user" if i % 2 == 0 else "assistant", "content": turn}
        for i, turn in enumerate(turns)
    )


def load_chatterbot(language: str = "english", *, strict: bool = False) -> list[Dialogue]:
    """The conversations of ``chatterbot-corpus`` in one language, in file order.

    Turns alternate user / assistant, starting with the user; a conversation with an odd number
    of turns ends on a user turn, which is context but never a training target.

    The corpus holds a few entries that a YAML indentation slip turned into one string instead
    of a list of turns (English: one, in ``trivia.yml``; Ukrainian: nine). They are left out
    with a :class:`~ttdecomp.errors.TTWarning` naming each, or raise with ``strict=True``.

    Parameters
    ----------
    language : str
        A folder of ``chatterbot_corpus/data``, e.g. ``"english"``, ``"spanish"``.
    strict : bool
        Raise on a malformed entry instead of leaving it out with a warning.

    Returns
    -------
    list of Dialogue
        Every well-formed conversation of every ``*.yml`` file, files in name order (duplicates
        kept: :func:`split_dialogues` removes them).

    Raises
    ------
    InvalidInputError
        When the package is missing (with the ``pip install`` line), the language unknown (the
        known ones are listed), a file is not a corpus file, or (``strict``) an entry is
        malformed (the file and conversation are named).

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     dialogues = load_chatterbot()
    >>> len(dialogues), dialogues[0][0]["role"], dialogues[0][1]["role"], len(caught)
    (2025, 'user', 'assistant', 1)
    """
    import yaml

    known = chatterbot_languages()
    if language not in known:
        raise InvalidInputError(
            f"chatterbot-corpus has no language {language!r}; expected one of {', '.join(known)}."
        )
    dialogues: list[Dialogue] = []
    malformed: list[str] = []
    for path in sorted((_chatterbot_data_dir() / language).glob("*.yml")):
        with open(path, encoding="utf-8") as handle:
            document = yaml.load(handle, Loader=yaml.BaseLoader)
        conversations = document.get("conversations") if isinstance(document, dict) else None
        if not isinstance(conversations, list):
            raise InvalidInputError(
                f"{path} has no 'conversations' list; it is not a chatterbot-corpus file."
            )
        for k, turns in enumerate(conversations):
            if not (
                isinstance(turns, list)
                and len(turns) >= 2
                and all(isinstance(t, str) and t.strip() for t in turns)
            ):
                where = f"{path.name}, conversation {k}: {str(turns)[:60]!r}"
                if strict:
                    raise InvalidInputError(
                        f"{path}, conversation {k}: expected a list of two or more non-empty "
                        f"strings, got {turns!r}. Pass strict=False to leave it out."
                    )
                malformed.append(where)
                continue
            dialogues.append(_alternating([t.strip() for t in turns]))
    if malformed:
        warnings.warn(
            f"left out {len(malformed)} malformed chatterbot-corpus {language} entr"
            f"{'y' if len(malformed) == 1 else 'ies'} (not a list of two or more turns): "
            + "; ".join(malformed),
            TTWarning,
            stacklevel=2,
        )
    if not dialogues:
        raise InvalidInputError(f"chatterbot-corpus has no conversations for {language!r}.")
    return dialogues


def _check_messages(messages: Any, where: str) -> Dialogue:
    """Validate one ``messages`` list; returns it as a Dialogue."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError(f"{where}: 'messages' must be a non-empty list, got {messages!r}.")
    checked = []
    for i, message in enumerate(messages):
        if not (
            isinstance(message, Mapping)
            and set(message) >= {"role", "content"}
            and message["role"] in _ROLES
            and isinstance(message["content"], str)
            and message["content"].strip()
        ):
            raise InvalidInputError(
                f"{where}, message {i}: expected {{'role': one of {list(_ROLES)}, 'content': a "
                f"non-empty string}}, got {message!r}."
            )
        if message["role"] == "system" and i > 0:
            raise InvalidInputError(f"{where}, message {i}: a system message may only come first.")
        checked.append({"role": message["role"], "content": message["content"]})
    if not any(
        m["role"] == "assistant" and i > 0 and checked[i - 1]["role"] != "system"
        for i, m in enumerate(checked)
    ):
        raise InvalidInputError(
            f"{where}: no assistant message follows a user message, so there is no reply to "
            "train on."
        )
    return tuple(checked)


def load_dialogues_jsonl(path: str | os.PathLike[str]) -> list[Dialogue]:
    """Read dialogues from a JSONL file, one dialogue per line.

    Each non-blank line is a JSON object, either ``{"prompt": str, "reply": str}`` (one user
    turn and its assistant reply) or ``{"messages": [{"role": ..., "content": ...}, ...]}`` with
    roles ``system`` (first only), ``user`` and ``assistant``, holding at least one assistant
    message after a user message.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    list of Dialogue
        In file order.

    Raises
    ------
    InvalidInputError
        When the file is missing or empty, or a line is not valid JSON or has neither form (the
        line number and what it held are in the message).

    Examples
    --------
    >>> import json, tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    ...     _ = f.write(json.dumps({"prompt": "Hi", "reply": "Hello!"}) + "\\n")
    >>> load_dialogues_jsonl(f.name)
    [({'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'})]
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            f"dialogue file {path} does not exist (or is not a file); expected a JSONL file of "
            '{"prompt": ..., "reply": ...} or {"messages": [...]} lines.'
        )
    dialogues: list[Dialogue] = []
    # strict UTF-8: a latin-1 byte is named by its line and byte
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInputError(
                f"{where} is not valid JSON ({error.msg}): {line.strip()[:80]!r}."
            ) from None
        if isinstance(record, dict) and "messages" in record:
            dialogues.append(_check_messages(record["messages"], where))
        elif isinstance(record, dict) and {"prompt", "reply"} <= set(record):
            prompt, reply = record["prompt"], record["reply"]
            if not all(isinstance(t, str) and t.strip() for t in (prompt, reply)):
                raise InvalidInputError(
                    f"{where}: 'prompt' and 'reply' must be non-empty strings, got "
                    f"{prompt!r} and {reply!r}."
                )
            dialogues.append(_alternating([prompt, reply]))
        else:
            raise InvalidInputError(
                f"{where}: expected an object with 'prompt' and 'reply', or with "
                f"'messages'; got {line.strip()[:80]!r}."
            )
    if not dialogues:
        raise InvalidInputError(f"dialogue file {path} holds no dialogues (it is empty).")
    return dialogues


@dataclass(frozen=True)
class DialogueSplits:
    """Train / validation / test dialogues from :func:`split_dialogues`.

    Attributes
    ----------
    train, validation, test : list of Dialogue
    n_duplicates : int
        Dialogues dropped because an identical one (same turns, whitespace and case aside) came
        earlier.
    seed : int
        The seed the split was drawn with.
    """

    train: list[Dialogue]
    validation: list[Dialogue]
    test: list[Dialogue]
    n_duplicates: int = 0
    seed: int = 0
    sizes: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        sizes = {"train": len(self.train), "validation": len(self.validation)}
        object.__setattr__(self, "sizes", {**sizes, "test": len(self.test)})


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def _resolve_size(size: float | int, n: int, name: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise InvalidInputError(
            f"{name} must be a fraction in (0, 1) or a count of dialogues, got {size!r}."
        )
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise InvalidInputError(
                f"{name}={size} as a fraction must lie in (0, 1); pass an int for a count."
            )
        return max(1, round(size * n))
    if not 1 <= size < n:
        raise InvalidInputError(f"{name}={size} dialogues: expected 1 to {n - 1} (of {n}).")
    return size


def split_dialogues(
    dialogues: Sequence[Dialogue],
    *,
    validation: float | int = 0.1,
    test: float | int = 0.1,
    seed: int = 0,
) -> DialogueSplits:
    """Split dialogues into train / validation / test with no turn text shared between splits.

    Identical dialogues (turns equal up to whitespace and case) are kept once. Dialogues that
    share any user or assistant turn text (``"Hi, How is it going?"`` opens 7 English chatterbot
    conversations) are grouped, and whole groups are assigned: the groups are shuffled with
    ``seed`` and each goes to test, else validation, while it fits within that split's size,
    else to train. So validation and test hold at most the requested number of dialogues (a few
    fewer when a group would overshoot) and train the rest. System messages are not turn text.

    Parameters
    ----------
    dialogues : sequence of Dialogue
    validation, test : float or int
        A fraction of the distinct dialogues in (0, 1), or a count.
    seed : int
        Seeds the shuffle: the same inputs and seed give the same split.

    Returns
    -------
    DialogueSplits

    Raises
    ------
    InvalidInputError
        For a size out of range, or when a split would be empty.

    Examples
    --------
    >>> pairs = [(f"question {i}", f"answer {i}") for i in range(10)] + [("question 0", "again")]
    >>> dialogues = [({"role": "user", "content": q}, {"role": "assistant", "content": a})
    ...              for q, a in pairs]
    >>> splits = split_dialogues(dialogues, validation=2, test=2, seed=0)
    >>> splits.sizes
    {'train': 7, 'validation': 2, 'test': 2}
    """
    distinct: list[Dialogue] = []
    seen: set[tuple[tuple[str, str], ...]] = set()
    for dialogue in dialogues:
        key = tuple((m["role"], _key(m["content"])) for m in dialogue)
        if key not in seen:
            seen.add(key)
            distinct.append(dialogue)
    n = len(distinct)
    if n < 3:
        raise InvalidInputError(
            f"{n} distinct dialogue(s) cannot make train, validation and test splits; "
            "expected at least 3."
        )
    n_test = _resolve_size(test, n, "test")
    n_validation = _resolve_size(validation, n, "validation")
    if n_test + n_validation >= n:
        raise InvalidInputError(
            f"validation ({n_validation}) + test ({n_test}) dialogues leave none of {n} to train."
        )
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, dialogue in enumerate(distinct):
        for message in dialogue:
            if message["role"] == "system":
                continue
            text = _key(message["content"])
            if text in owner:
                parent[find(i)] = find(owner[text])
            else:
                owner[text] = i
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    ordered = sorted(groups.values())
    random.Random(seed).shuffle(ordered)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for group in ordered:
        if len(parts["test"]) + len(group) <= n_test:
            parts["test"].extend(group)
        elif len(parts["validation"]) + len(group) <= n_validation:
            parts["validation"].extend(group)
        else:
            parts["train"].extend(group)
    for name, indices in parts.items():
        if not indices:
            raise InvalidInputError(
                f"the {name} split is empty: the dialogues form {len(groups)} groups sharing "
                "text, too few or too large for the requested sizes. Ask for larger "
                "validation/test sizes or provide more distinct dialogues."
            )
    return DialogueSplits(
        *([distinct[i] for i in sorted(parts[name])] for name in ("train", "validation", "test")),
        n_duplicates=len(dialogues) - n,
        seed=seed,
    )


def reply_prompt(dialogues: Sequence[Dialogue]) -> list[dict[str, str]]:
    """The messages before the first assistant turn of the first dialogue that has one.

    The held-out prompt a run answers (use the test split).

    Examples
    --------
    >>> reply_prompt([({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"})])
    [{'role': 'user', 'content': 'Hi'}]
    """
    for dialogue in dialogues:
        for k, message in enumerate(dialogue):
            if message["role"] == "assistant" and k > 0 and dialogue[k - 1]["role"] == "user":
                return [dict(m) for m in dialogue[:k]]
    raise InvalidInputError("no dialogue holds an assistant turn after a user turn to prompt.")


def load_data(data: str) -> tuple[list[Dialogue], str]:
    """Dialogues of ``--data``: ``chatterbot``, ``chatterbot:<language>`` or a JSONL file.

    Returns the dialogues and a description of their source.

    Examples
    --------
    >>> dialogues, source = load_data("chatterbot")  # doctest: +SKIP
    >>> load_data("tweets.csv")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: causal-LM data must be chatterbot, chatterbot:<language> \
or a .jsonl file of {"prompt", "reply"} or {"messages"} lines; got 'tweets.csv'.
    """
    if data == "chatterbot" or data.startswith("chatterbot:"):
        language = data.partition(":")[2] or "english"
        return load_chatterbot(language), f"chatterbot-corpus ({language})"
    if Path(data).suffix.lower() == ".jsonl":
        return load_dialogues_jsonl(data), str(Path(data))
    raise InvalidInputError(
        "causal-LM data must be chatterbot, chatterbot:<language> or a .jsonl file of "
        f'{{"prompt", "reply"}} or {{"messages"}} lines; got {data!r}.'
    )
