"""Training batches computed in chunks of like length: the same gradient, less padding."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from ttdecomp.finetune.batching import chunk_by_length, length_chunked  # noqa: E402
from ttdecomp.finetune.testing import tiny_classifier_folder  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "good",
    "a very good and long happy text about nothing in particular at all",
    "bad day",
    "this is fine and fun",
    "awful awful awful awful awful",
    "ok",
    "not great, not terrible, somewhere in between the two of them",
    "meh",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tiny_classifier_folder(tmp_path_factory.mktemp("tiny") / "model")
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(TEXTS)
    rows = [{"input_ids": ids, "labels": i % 2} for i, ids in enumerate(enc["input_ids"])]
    batch = DataCollatorWithPadding(tok)(rows)
    return folder, batch


def gradients(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_chunks_cover_every_row_once_without_cutting_a_real_token(tiny):
    _, batch = tiny
    chunks = chunk_by_length(batch, 4, overhead=0)
    assert len(chunks) > 1
    assert sum(w for _, w in chunks) == pytest.approx(1.0)
    real = int(batch["attention_mask"].sum())
    assert sum(int(c["attention_mask"].sum()) for c, _ in chunks) == real
    padded = sum(c["input_ids"].numel() for c, _ in chunks)
    assert padded < batch["input_ids"].numel()
    # every row of the batch appears in exactly one chunk, with its tokens unchanged
    rows = [
        tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"])
    ]
    got = [
        tuple(r[m.bool()].tolist())
        for c, _ in chunks
        for r, m in zip(c["input_ids"], c["attention_mask"])
    ]
    assert sorted(got) == sorted(rows) and len(got) == len(TEXTS)
    labels = sorted(int(x) for c, _ in chunks for x in c["labels"])
    assert labels == sorted(int(x) for x in batch["labels"])


def test_left_padding_keeps_the_real_tokens():
    mask = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1]])
    batch = {"input_ids": mask * 5, "attention_mask": mask, "labels": torch.arange(4)}
    chunks = chunk_by_length(batch, 2, overhead=0)
    assert [c["input_ids"].shape[1] for c, _ in chunks] == [1, 3]
    assert all(int(c["attention_mask"].sum()) == int(mask[c["labels"]].sum()) for c, _ in chunks)


def test_token_level_labels_are_not_chunked():
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    batch = {"input_ids": mask, "attention_mask": mask, "labels": mask.clone()}
    assert len(chunk_by_length(batch, 4, overhead=0)) == 1
    no_mask = {"input_ids": mask, "labels": torch.tensor([0, 1])}
    assert len(chunk_by_length(no_mask, 4, overhead=0)) == 1


@pytest.mark.parametrize("max_chunks", [2, 3, 8])
def test_chunked_training_step_has_the_whole_batch_gradient(tiny, tmp_path, max_chunks):
    folder, batch = tiny
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=8
    )
    grads = []
    for trainer_class in (Trainer, length_chunked(Trainer, max_chunks)):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        trainer = trainer_class(model=model, args=args)
        trainer.create_optimizer_and_scheduler(num_training_steps=1)
        trainer.current_gradient_accumulation_steps = 1  # what Trainer.train sets per step
        loss = trainer.training_step(model, dict(batch))
        grads.append((float(loss), gradients(model)))
    (loss_whole, whole), (loss_chunked, chunked) = grads
    assert loss_chunked == pytest.approx(loss_whole, rel=1e-5)
    assert whole.keys() == chunked.keys() and whole
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
