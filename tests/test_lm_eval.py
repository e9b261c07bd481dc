"""evaluate_lm's held-out loss: the chunked cross-entropy equals the whole-logits one."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ttdecomp.adapters.testing import tiny_model  # noqa: E402
from ttdecomp.assets.chat_tokens import IGNORE_INDEX, CausalDataset, CausalLMCollator  # noqa: E402
from ttdecomp.finetune.tasks import lm_eval  # noqa: E402


def _examples(vocab: int, n: int = 5) -> CausalDataset:
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(n):
        length = 4 + 3 * k
        ids = torch.randint(1, vocab, (length,), generator=g).tolist()
        labels = [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels})
    return CausalDataset.from_examples(out)


def _reference(model, data, collator) -> float:
    """The mean reply-token NLL from whole-batch logits, one example at a time."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(len(data)):
            batch = collator([data[i]])
            labels = batch.pop("labels")
            logits = model(**batch).logits[0, :-1].double()
            target = labels[0, 1:]
            keep = target != IGNORE_INDEX
            total += float(
                torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            )
            tokens += int(keep.sum())
    return total / tokens


@pytest.mark.parametrize("chunk_values", [1, 7 * 1000, 1 << 22])
def test_chunked_loss_equals_the_whole_logits_loss(monkeypatch, chunk_values):
    model = tiny_model("llama").eval()
    vocab = model.config.vocab_size
    data = _examples(vocab)
    collator = CausalLMCollator(0)
    monkeypatch.setattr(lm_eval, "_NLL_CHUNK_VALUES", chunk_values)  # 1 row per chunk, a few, all
    got = lm_eval.evaluate_lm(model, data, collator, batch_size=3)
    want = _reference(model, data, collator)
    assert got["loss"] == pytest.approx(want, rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(want), rel=1e-6)
    assert got["tokens"] == sum(
        sum(1 for t in data[i]["labels"][1:] if t != IGNORE_INDEX) for i in range(len(data))
    )
