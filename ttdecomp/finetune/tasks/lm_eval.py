"""Held-out loss, perplexity and a greedy reply of a causal LM on chat examples.

:func:`evaluate_lm` gives the mean negative log-likelihood per reply token (in nats, so it does
not depend on batching) and its exponential, the perplexity; :func:`generate_reply` answers a
prompt greedily.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ...assets.chat_tokens import IGNORE_INDEX, CausalDataset, CausalLMCollator, prompt_text
from ...errors import InvalidInputError

__all__ = ["evaluate_lm", "generate_reply"]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


#: Vocabulary-wide float32 values one chunk of :func:`_summed_nll` allocates at most (16 MiB).
_NLL_CHUNK_VALUES = 1 << 22


def _summed_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (float64) of ``logits[..., V]`` against ``target`` (-100 ignored).

    In chunks of rows, so the float32 copy and the log-softmax of the whole ``(rows, V)``
    logits are never allocated at once: beside the logits themselves, at most
    :data:`_NLL_CHUNK_VALUES` values (on a 49,152-token vocabulary and 8 × 64 tokens, 16 MiB
    instead of twice 96 MiB).
    """
    vocab = int(logits.shape[-1])
    flat = logits.reshape(-1, vocab)  # a view where the logits are contiguous
    flat_target = target.reshape(-1)
    rows = max(1, _NLL_CHUNK_VALUES // vocab)
    total = torch.zeros((), dtype=torch.float64, device=logits.device)
    for i in range(0, int(flat.shape[0]), rows):
        # a chunk whose targets are all ignored sums to 0 (reduction="sum")
        total += torch.nn.functional.cross_entropy(
            flat[i : i + rows].float(),
            flat_target[i : i + rows],
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).double()
    return total


def evaluate_lm(
    model: Any, dataset: CausalDataset, collator: CausalLMCollator, *, batch_size: int = 8
) -> dict[str, float]:
    """Held-out loss and perplexity of ``model`` on the reply tokens of ``dataset``.

    ``loss`` is the mean negative log-likelihood per reply token in nats (summed over every
    reply token of every example, then divided by their number, so it does not depend on the
    batching), ``perplexity`` is ``exp(loss)``. Examples are batched by length to limit padding.

    Parameters
    ----------
    model : nn.Module
        A causal LM (or an adapter wrapper around one) returning ``.logits``.
    dataset : CausalDataset
    collator : CausalLMCollator
    batch_size : int
        Examples per forward pass (memory: ``batch_size × length × vocabulary`` float32 logits).

    Returns
    -------
    dict
        ``loss``, ``perplexity`` and ``tokens`` (the reply tokens counted).

    Examples
    --------
    >>> import torch
    >>> class Uniform(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.zeros(1))
    ...     def forward(self, input_ids, attention_mask):
    ...         return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 10)})
    >>> data = CausalDataset.from_examples(
    ...     [{"input_ids": [1, 2, 3], "attention_mask": [1] * 3, "labels": [-100, 2, 3]}]
    ... )
    >>> out = evaluate_lm(Uniform(), data, CausalLMCollator(0))
    >>> round(out["perplexity"], 6), out["tokens"]
    (10.0, 2)
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}.")
    if len(dataset) == 0:
        raise InvalidInputError("cannot evaluate on an empty dataset.")
    was_training = model.training
    model.eval()
    device = _device(model)
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    total = torch.zeros((), dtype=torch.float64)
    tokens = 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = collator([dataset[i] for i in order[start : start + batch_size]])
            labels = batch.pop("labels").to(device)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits  # (B, T, V): position t predicts token t + 1
            # the target of the last position is none; no slice of the logits, so no copy
            target = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)
            total += _summed_nll(logits, target).cpu()
            tokens += int((target != IGNORE_INDEX).sum())
            del logits
    model.train(was_training)
    if tokens == 0:
        raise InvalidInputError("the dataset has no reply tokens (every label is -100).")
    loss = float(total) / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens}


def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    max_new_tokens: int = 32,
) -> str:
    """The model's greedy reply to ``messages`` (chat template applied), special tokens removed.

    Stops at the end-of-turn token or after ``max_new_tokens`` tokens.

    Examples
    --------
    >>> generate_reply(model, tokenizer, [{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    'Hello! How can I help you today?'
    """
    from transformers import GenerationConfig

    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise InvalidInputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    templated = bool(getattr(tokenizer, "chat_template", None))
    text = prompt_text(tokenizer, messages)
    inputs = tokenizer(text, add_special_tokens=not templated, return_tensors="pt")
    # the ids and the mask only: a tokenizer may add token_type_ids, which a decoder such as
    # Llama refuses in generate
    inputs = {
        k: inputs[k].to(_device(model)) for k in ("input_ids", "attention_mask") if k in inputs
    }
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=config)
    model.train(was_training)
    new = out[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True).strip()
