"""Model-level measurements of a compressed encoder: sentence embeddings and their agreement.

:func:`sentence_embeddings` mean-pools an encoder's last hidden states over the tokens of
each text (the sentence-transformers recipe of all-MiniLM-L6-v2, without its final
normalisation); :func:`mean_cosine` compares two sets of embeddings row by row;
:func:`forward_cost` times a forward pass and measures its peak memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from .inputs import causal_batches

__all__ = [
    "forward_cost",
    "mean_cosine",
    "measure_causal",
    "measure_encoder",
    "sentence_embeddings",
    "tokenize_batches",
]


def tokenize_batches(
    tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32, max_length: int = 128
) -> list[dict[str, torch.Tensor]]:
    """``texts`` as padded batches of ``tokenizer`` output (``model(**batch)`` inputs).

    Texts are sorted by length first, to limit padding (the batches are for calibration or
    training, where the order does not matter; :func:`sentence_embeddings` restores it).
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError("texts must be a sequence of strings.")
    if not texts:
        raise InvalidInputError("texts is empty.")
    texts = sorted(texts, key=len)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        out.append(dict(enc))
    return out


def sentence_embeddings(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 32
) -> torch.Tensor:
    """Mean-pooled last hidden states, ``(len(texts), hidden)`` float32, in ``texts`` order.

    Examples
    --------
    >>> emb = sentence_embeddings(encoder, tokenizer, ["a tweet", "another"])  # doctest: +SKIP
    >>> emb.shape  # doctest: +SKIP
    torch.Size([2, 384])
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = tokenize_batches(tokenizer, [texts[i] for i in order], batch_size=batch_size)
    # tokenize_batches sorts by len() again: stable, so the order above is kept
    rows = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in batches:
            hidden = model(**batch).last_hidden_state.float()  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            rows.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))  # (B, H)
    model.train(was_training)
    emb = torch.cat(rows)
    out = torch.empty_like(emb)
    out[torch.tensor(order)] = emb
    return out


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of the rows of ``a`` and ``b``.

    Examples
    --------
    >>> mean_cosine(torch.eye(3), torch.eye(3))
    1.0
    """
    if a.shape != b.shape:
        raise InvalidInputError(f"embeddings of shapes {tuple(a.shape)} and {tuple(b.shape)}.")
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).mean())


def forward_cost(model: nn.Module, batch: Any, *, repeats: int = 5) -> dict[str, float]:
    """Time and memory of one ``no_grad`` forward pass on ``batch``.

    Returns ``seconds`` (median of ``repeats`` calls after one warm-up call),
    ``peak_bytes`` (the largest total of tensor memory allocated during the call above what
    was held before it: the torch profiler's allocation events, summed in time order) and
    ``param_bytes`` (the model's parameters and buffers).

    Examples
    --------
    >>> cost = forward_cost(torch.nn.Linear(64, 64), torch.randn(32, 64), repeats=2)
    >>> cost["peak_bytes"] >= 32 * 64 * 4, cost["param_bytes"]
    (True, 16640.0)
    """
    from torch.profiler import ProfilerActivity, profile

    def call() -> Any:
        return model(**batch) if isinstance(batch, dict) else model(batch)

    was_training = model.training
    model.eval()
    times = []
    with torch.no_grad():
        call()
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = call()
            del out
    model.train(was_training)
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage),
        key=lambda e: e.time_range.start,
    )
    total = peak = 0
    for e in events:
        total += e.self_cpu_memory_usage
        peak = max(peak, total)
    times.sort()
    params = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {
        "seconds": times[len(times) // 2],
        "peak_bytes": float(peak),
        "param_bytes": float(params),
    }


# ---------------------------------------------------------------- measurements
def measure_encoder(
    original: Any, compressed: Any, tokenizer: Any, texts: list[str]
) -> dict[str, float]:
    """Mean cosine of mean-pooled embeddings, and forward time/peak memory ratios (batch 32)."""
    ref = sentence_embeddings(original, tokenizer, texts)
    got = sentence_embeddings(compressed, tokenizer, texts)
    batch = tokenize_batches(tokenizer, texts[:32], batch_size=32)[0]
    dense, small = forward_cost(original, batch), forward_cost(compressed, batch)
    return {
        "cosine": mean_cosine(ref, got),
        "texts": len(texts),
        **_ratios(dense, small),
    }


def _ratios(dense: dict[str, float], small: dict[str, float]) -> dict[str, float]:
    return {
        "forward_s": small["seconds"],
        "dense_forward_s": dense["seconds"],
        "time_ratio": small["seconds"] / dense["seconds"],
        "peak_bytes": small["peak_bytes"],
        "dense_peak_bytes": dense["peak_bytes"],
        "peak_ratio": small["peak_bytes"] / max(dense["peak_bytes"], 1.0),
        "param_bytes": small["param_bytes"],
        "dense_param_bytes": dense["param_bytes"],
    }


def measure_causal(
    original: Any,
    compressed: Any,
    tokenizer: Any,
    dialogues: list,
    *,
    dense_ppl: float | None,
    dense_cost: dict[str, float] | None = None,
    cost_batch: int = 32,
    repeats: int = 5,
) -> dict[str, float]:
    """Held-out perplexity (reply tokens) of both models, and the forward ratios on a batch
    of ``cost_batch`` dialogues (median of ``repeats``); ``dense_ppl`` and ``dense_cost``
    (this function's ``"dense_cost"``) skip measuring the original again."""
    from ..assets.chat_tokens import CausalDataset, make_collator
    from ..finetune.tasks.lm_eval import evaluate_lm

    data = CausalDataset(dialogues, tokenizer, 128)
    collate = make_collator(tokenizer)
    if dense_ppl is None:
        dense_ppl = evaluate_lm(original, data, collate)["perplexity"]
    ppl = evaluate_lm(compressed, data, collate)["perplexity"]
    batch = causal_batches(tokenizer, dialogues[:cost_batch], batch_size=cost_batch)[0]
    if dense_cost is None:
        dense_cost = forward_cost(original, batch, repeats=repeats)
    small = forward_cost(compressed, batch, repeats=repeats)
    return {
        "perplexity": ppl,
        "dense_perplexity": dense_ppl,
        "dialogues": len(dialogues),
        "dense_cost": dense_cost,
        **_ratios(dense_cost, small),
    }
