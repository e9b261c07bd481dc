"""The learning-rate schedules of ``fit``: warm-up, then constant, linear or cosine decay."""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
)

from ttdecomp.errors import InvalidInputError  # noqa: E402
from ttdecomp.finetune import (  # noqa: E402
    FinetuneConfig,
    TrainSettings,
    apply_method,
    default_settings,
    fit,
    load_classification,
)
from ttdecomp.finetune.classify import TextDataset, accuracy  # noqa: E402
from ttdecomp.finetune.testing import tiny_classifier_folder, toy_sentiment_csv  # noqa: E402
from ttdecomp.finetune.train import warmup_steps  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schedule")
    folder = tiny_classifier_folder(tmp / "model")
    splits = load_classification(toy_sentiment_csv(tmp / "toy.csv", n=120), sizes=(40, 16, 16))
    tok = AutoTokenizer.from_pretrained(folder)
    train, val = (TextDataset(r, tok, max_length=16) for r in (splits.train, splits.validation))
    return folder, tok, train, val, tmp


def trained_lrs(data, lr_schedule, warmup_ratio):
    """The learning rate of every step 0..10 of a 2-epoch run of 5 steps an epoch."""
    folder, tok, train, val, tmp = data
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    adapted = apply_method(model, default_settings("lora"), targets=["query", "value"])
    settings = TrainSettings(
        lr=4e-3,
        epochs=2,
        batch_size=8,
        progress=False,
        lr_schedule=lr_schedule,
        warmup_ratio=warmup_ratio,
    )
    trainer, result = fit(
        adapted,
        train,
        val,
        collator=DataCollatorWithPadding(tok),
        settings=settings,
        output_dir=tmp / f"trainer-{lr_schedule}-{warmup_ratio}",
        compute_metrics=accuracy,
    )
    assert result.steps == 10
    per_group = [
        [4e-3 * factor(step) for step in range(11)] for factor in trainer.lr_scheduler.lr_lambdas
    ]
    assert all(lrs == per_group[0] for lrs in per_group)  # decayed or not, one schedule
    return per_group[0]


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected"),
    [
        ("constant", 0.0, [4e-3] * 11),
        ("constant", 0.2, [0.0, 2e-3] + [4e-3] * 9),
        ("linear", 0.0, [4e-3 * (10 - s) / 10 for s in range(11)]),
        (
            "cosine",
            0.2,
            [0.0, 2e-3] + [2e-3 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 11)],
        ),
    ],
)
def test_fit_follows_the_schedule(data, schedule, warmup, expected):
    assert trained_lrs(data, schedule, warmup) == pytest.approx(expected, abs=1e-12)


def test_warmup_steps_round_up():
    assert warmup_steps(0.1, 128) == 13
    assert warmup_steps(0.25, 8) == 2
    assert warmup_steps(0.0, 8) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr_schedule": "exponential"}, "lr_schedule must be one of constant, linear, cosine"),
        ({"lr_schedule": "Cosine"}, "lr_schedule must be one of"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio must be a finite number in \[0, 1\)"),
        ({"warmup_ratio": -0.1}, r"warmup_ratio must be a finite number in \[0, 1\)"),
        ({"warmup_ratio": True}, r"warmup_ratio must be a finite number in \[0, 1\)"),
        ({"warmup_ratio": "0.1"}, r"warmup_ratio must be a finite number in \[0, 1\)"),
    ],
)
def test_bad_schedules_fail_fast(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        TrainSettings(lr=1e-3, **kwargs)
    with pytest.raises(InvalidInputError, match=message):
        FinetuneConfig(**kwargs)


def test_config_passes_the_schedule_and_names_it_in_its_identity():
    config = FinetuneConfig(lr_schedule="cosine", warmup_ratio=0.1)
    train = config.train_settings(0)
    assert (train.lr_schedule, train.warmup_ratio) == ("cosine", 0.1)
    assert config.identity()["lr_schedule"] == "cosine"
    # a constant run's identity is the one saved before schedules existed (--resume still works)
    assert "lr_schedule" not in FinetuneConfig().identity()
    with pytest.raises(InvalidInputError, match="lr_schedule must be one of"):
        TrainSettings(lr=1e-3, lr_schedule=None)


def test_the_schedule_can_differ_per_method():
    config = FinetuneConfig(lr_schedule={"tt-lora": "cosine"}, warmup_ratio={"tt-lora": 0.1})
    tt, lora = (config.train_settings(0, method=m) for m in ("tt-lora", "lora"))
    assert (tt.lr_schedule, tt.warmup_ratio) == ("cosine", 0.1)
    assert (lora.lr_schedule, lora.warmup_ratio) == ("constant", 0.0)
    assert config.identity()["lr_schedule"] == {"tt-lora": "cosine"}
    with pytest.raises(InvalidInputError, match="lr_schedule must be one of"):
        FinetuneConfig(lr_schedule={"lora": "step"})
    with pytest.raises(InvalidInputError, match="not among the methods run"):
        FinetuneConfig(methods=["lora"], warmup_ratio={"tt-lora": 0.1})
