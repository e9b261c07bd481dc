"""Dialogues as causal-LM training examples: chat-formatted tokens with the prompt masked.

:func:`tokenize_dialogues` turns every assistant turn of a dialogue into one example whose labels
are ``-100`` on the prompt, so the loss is the reply's; an overlong example is cut in a fixed
order (oldest history, then the reply's tail, then the prompt's left) and every cut is counted
in a :class:`TokenizeReport`. :class:`CausalDataset` holds the examples of one split and
:class:`CausalLMCollator` pads a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError
from .dialogues import Dialogue, DialogueSplits

__all__ = [
    "IGNORE_INDEX",
    "CausalDataset",
    "CausalLMCollator",
    "TokenizeReport",
    "make_collator",
    "prompt_text",
    "tokenize_dialogues",
    "tokenize_splits",
]

IGNORE_INDEX = -100


def prompt_text(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """The text a model is given to produce the next assistant turn after ``messages``.

    With a chat template: the template applied with ``add_generation_prompt=True``. Without one:
    ``"role: content"`` lines followed by ``"assistant:"``.

    Examples
    --------
    >>> class NoTemplate:
    ...     chat_template = None
    >>> prompt_text(NoTemplate(), [{"role": "user", "content": "Hi"}])
    'user: Hi\\nassistant:'
    """
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _reply_text(tokenizer: Any, messages: Sequence[Mapping[str, str]], prompt: str) -> str:
    """The text the template adds for the last (assistant) message, end-of-turn included."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(list(messages), tokenize=False)
        if not full.startswith(prompt):
            raise InvalidInputError(
                "the tokenizer's chat template does not render a conversation as its "
                "generation prompt followed by the reply, so prompt and reply tokens cannot be "
                "told apart; use a tokenizer whose template has add_generation_prompt."
            )
        return full[len(prompt) :]
    return " " + messages[-1]["content"] + (tokenizer.eos_token or "")


@dataclass
class TokenizeReport:
    """What :func:`tokenize_dialogues` had to cut to respect ``max_length``.

    Attributes
    ----------
    n_examples : int
        Examples made (one per assistant turn that follows a user turn).
    n_history_trimmed : int
        Examples whose oldest turns were left out of the prompt.
    n_prompt_truncated : int
        Examples whose prompt tokens were still cut from the left (the last resort).
    n_reply_truncated : int
        Examples whose reply tokens were cut at the end.
    n_reply_tokens : int
        Reply (loss) tokens over all examples.
    """

    n_examples: int = 0
    n_history_trimmed: int = 0
    n_prompt_truncated: int = 0
    n_reply_truncated: int = 0
    n_reply_tokens: int = 0

    def summary(self) -> str:
        """One line for a log, e.g. ``"2,106 examples, 14,020 reply tokens; cut: ..."``."""
        return (
            f"{self.n_examples:,} examples, {self.n_reply_tokens:,} reply tokens; cut to fit: "
            f"{self.n_history_trimmed} history, {self.n_prompt_truncated} prompt, "
            f"{self.n_reply_truncated} reply"
        )


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def tokenize_dialogues(
    tokenizer: Any, dialogues: Sequence[Dialogue], *, max_length: int = 128
) -> tuple[list[dict[str, list[int]]], TokenizeReport]:
    """One causal-LM example per assistant turn, with the loss on the reply only.

    For the assistant message at position ``k``, the prompt is :func:`prompt_text` of messages
    ``0..k-1`` and the reply is what the chat template adds for message ``k`` (for SmolLM2:
    the text, ``<|im_end|>`` and a newline). They are tokenized separately (as at generation
    time) and concatenated; ``labels`` copies ``input_ids`` with the prompt set to ``-100``.

    An example longer than ``max_length`` is cut, in this order, and counted in the report:
    the oldest turns of the history are left out (the system message and the last user turn
    stay); then the reply is cut at the end to the larger of the room the prompt leaves and half
    of ``max_length``; then the prompt is cut from the left.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
    dialogues : sequence of Dialogue
    max_length : int
        Tokens per example, at least 8.

    Returns
    -------
    examples : list of dict
        ``input_ids``, ``attention_mask`` and ``labels`` lists (unpadded; pad with
        :class:`CausalLMCollator`).
    report : TokenizeReport

    Raises
    ------
    InvalidInputError
        For ``max_length`` below 8 or no assistant turn to learn.

    Examples
    --------
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tok = AutoTokenizer.from_pretrained(folder)  # doctest: +SKIP
    >>> examples, report = tokenize_dialogues(tok, load_chatterbot()[:2])  # doctest: +SKIP
    >>> report.n_examples  # doctest: +SKIP
    2
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
        raise InvalidInputError(f"max_length must be an int of at least 8, got {max_length!r}.")
    templated = bool(getattr(tokenizer, "chat_template", None))
    report = TokenizeReport()
    examples = []
    for dialogue in dialogues:
        for k, message in enumerate(dialogue):
            if message["role"] != "assistant" or k == 0 or dialogue[k - 1]["role"] != "user":
                continue
            history = list(dialogue[:k])
            text = prompt_text(tokenizer, history)
            reply = _encode(tokenizer, _reply_text(tokenizer, dialogue[: k + 1], text), False)
            prompt = _encode(tokenizer, text, not templated)
            trimmed = False
            first = 1 if history[0]["role"] == "system" else 0
            while len(prompt) + len(reply) > max_length and len(history) - first > 1:
                del history[first]
                trimmed = True
                prompt = _encode(tokenizer, prompt_text(tokenizer, history), not templated)
            if len(prompt) + len(reply) > max_length:
                keep = max(max_length - len(prompt), max_length - max_length // 2)
                if keep < len(reply):
                    reply = reply[:keep]
                    report.n_reply_truncated += 1
                if len(prompt) + len(reply) > max_length:
                    prompt = prompt[len(prompt) + len(reply) - max_length :]
                    report.n_prompt_truncated += 1
            report.n_history_trimmed += trimmed
            report.n_examples += 1
            report.n_reply_tokens += len(reply)
            ids = prompt + reply
            examples.append(
                {
                    "input_ids": ids,
                    "attention_mask": [1] * len(ids),
                    "labels": [IGNORE_INDEX] * len(prompt) + reply,
                }
            )
    if not examples:
        raise InvalidInputError(
            "the dialogues hold no assistant turn after a user turn, so there is nothing to "
            "train on."
        )
    return examples, report


class CausalLMCollator:
    """Right-pad examples from :func:`tokenize_dialogues` into a batch of tensors.

    ``input_ids`` are padded with ``pad_token_id``, ``attention_mask`` with 0 and ``labels``
    with -100, so padding never counts in the loss.

    Parameters
    ----------
    pad_token_id : int

    Examples
    --------
    >>> a = {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]}
    >>> b = {"input_ids": [7], "attention_mask": [1], "labels": [7]}
    >>> batch = CausalLMCollator(0)([a, b])
    >>> batch["labels"].tolist()
    [[-100, 6], [7, -100]]
    """

    def __init__(self, pad_token_id: int) -> None:
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise InvalidInputError(
                f"pad_token_id must be an int, got {pad_token_id!r}; set tokenizer.pad_token "
                "(e.g. to its eos token) first."
            )
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {
            key: torch.tensor(
                [list(f[key]) + [pad] * (width - len(f[key])) for f in features], dtype=torch.long
            )
            for key, pad in pads.items()
        }


class CausalDataset:
    """Tokenised dialogue examples (``input_ids``, ``attention_mask``, ``labels``), unpadded.

    A map-style dataset (``len`` and indexing) that ``torch.utils.data.DataLoader`` and
    ``transformers.Trainer`` take as they are; it needs no torch itself.

    Parameters
    ----------
    dialogues : sequence of Dialogue
    tokenizer : transformers tokenizer
    max_length : int
        Tokens per example; what had to be cut is in :attr:`report`.

    Examples
    --------
    >>> data = CausalDataset.from_examples(
    ...     [{"input_ids": [1, 2], "attention_mask": [1, 1], "labels": [-100, 2]}]
    ... )
    >>> len(data), data.n_label_tokens
    (1, 1)
    """

    def __init__(self, dialogues: Sequence[Dialogue], tokenizer: Any, max_length: int) -> None:
        self.features, self.report = tokenize_dialogues(tokenizer, dialogues, max_length=max_length)

    @classmethod
    def from_examples(cls, features: list[dict[str, list[int]]]) -> CausalDataset:
        """A dataset of already tokenised examples."""
        out = cls.__new__(cls)
        out.features = list(features)
        out.report = TokenizeReport(
            n_examples=len(out.features),
            n_reply_tokens=sum(sum(t != IGNORE_INDEX for t in f["labels"]) for f in out.features),
        )
        return out

    @property
    def n_label_tokens(self) -> int:
        """Tokens the loss is taken over (reply tokens)."""
        return self.report.n_reply_tokens

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]


def tokenize_splits(
    tokenizer: Any, splits: DialogueSplits, *, max_length: int = 128
) -> dict[str, CausalDataset]:
    """Tokenise the three splits once, to share across every (method, seed) run.

    Each dataset's ``report`` says what ``max_length`` cut (log it: nothing is cut silently).

    Examples
    --------
    >>> datasets = tokenize_splits(tokenizer, splits, max_length=128)  # doctest: +SKIP
    >>> datasets["train"].report.summary()  # doctest: +SKIP
    '803 examples, 12,994 reply tokens; cut to fit: 9 history, 0 prompt, 24 reply'
    """
    return {
        name: CausalDataset(getattr(splits, name), tokenizer, max_length)
        for name in ("train", "validation", "test")
    }


def make_collator(tokenizer: Any) -> CausalLMCollator:
    """The padding collator for ``tokenizer`` (its pad token, else its end-of-sequence token).

    Examples
    --------
    >>> class Tok:
    ...     pad_token_id, eos_token_id = None, 2
    >>> make_collator(Tok()).pad_token_id
    2
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise InvalidInputError(
            f"the tokenizer ({type(tokenizer).__name__}) has neither a pad nor an end-of-sequence "
            "token; set tokenizer.pad_token before fine-tuning."
        )
    return CausalLMCollator(int(pad))
