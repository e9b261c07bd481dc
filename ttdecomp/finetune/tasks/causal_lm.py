"""The causal-LM task: one (method, seed) run on dialogues (evaluate, adapt, fit, test, reply).

The causal path of ``ttdecomp finetune`` (``--model smollm2 --data chatterbot``): every assistant
turn of the dialogues is an example whose loss is on the reply tokens only
(:func:`~ttdecomp.assets.chat_tokens.tokenize_dialogues`). A row reports the held-out loss
(mean negative log-likelihood per reply token, in nats) and perplexity (its exponential) of the
base model before training and of the validation-chosen state after, on validation and test;
test is evaluated once after training. The method's adapter is saved, then merged into the
weights where the method allows it (TT-LoRA, LoRA, LoRETTA-rep; LoRETTA-adp is non-linear and
stays unmerged), and the model answers one held-out prompt greedily: the ``reply`` of the row.

Methods: ``tt-lora``, ``lora`` (PEFT), ``loretta-rep``, ``loretta-adp``; ``head-only`` is refused
(a causal LM has no separate head). Default targets: the adapters' per-model query and value
projections (``q_proj`` and ``v_proj`` for Llama-family models such as SmolLM2).
:class:`CausalLMTask` is the registered task (``"causal"``: metric ``val_loss``, the state of
lowest validation loss).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from ...assets.chat_tokens import CausalDataset, make_collator, tokenize_splits
from ...assets.dialogues import DialogueSplits, reply_prompt
from ...assets.loader import load_pretrained
from ...errors import InvalidInputError
from ..methods import (
    MethodSettings,
    apply_method,
    dry_run,
    get_method,
    guarded,
    methods_for,
    resolve_settings,
    save_adapted,
)
from ..quantization import base_description, check_job_base
from ..train import TrainSettings, fit, is_main_process, resolve_device
from .lm_eval import evaluate_lm, generate_reply
from .registry import Task, check_max_length

__all__ = [
    "CAUSAL_SPLIT",
    "DEFAULT_CAUSAL_TARGETS",
    "CausalJob",
    "CausalLMTask",
    "evaluate_base",
    "prepare_causal",
    "run_causal",
]

#: The layers ``run_causal`` adapts when called without ``targets``: the query and value
#: projections of a Llama-family attention block (a comparison takes the model's own default).
DEFAULT_CAUSAL_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")


def _check_method(method: str) -> None:
    spec = get_method(method)
    if not spec.supports(TASK.name):
        raise InvalidInputError(
            f"{spec.why_not(TASK.name)}; choose among {', '.join(methods_for(TASK.name))} "
            "(--methods)."
        )


def evaluate_base(
    model: Any,
    tokenizer: Any,
    datasets: Mapping[str, CausalDataset],
    *,
    prompt: Sequence[Mapping[str, str]] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The ``*_before`` entries of a row: the base model's held-out loss, perplexity and reply.

    The same for every method and seed, so an orchestrator computes it once and passes it to
    :func:`run_causal` as ``before``.

    Returns
    -------
    dict
        ``val_loss_before``, ``val_perplexity_before``, ``test_loss_before``,
        ``test_perplexity_before`` and (when ``prompt`` is given) ``reply_before``.

    Examples
    --------
    >>> before = evaluate_base(model, tokenizer, datasets)  # doctest: +SKIP
    >>> sorted(before)  # doctest: +SKIP
    ['test_loss_before', 'test_perplexity_before', 'val_loss_before', 'val_perplexity_before']
    """
    collator = make_collator(tokenizer)
    out: dict[str, Any] = {}
    for short, name in (("val", "validation"), ("test", "test")):
        metrics = evaluate_lm(model, datasets[name], collator, batch_size=batch_size)
        out[f"{short}_loss_before"] = metrics["loss"]
        out[f"{short}_perplexity_before"] = metrics["perplexity"]
    if prompt is not None:
        out["reply_before"] = generate_reply(
            model, tokenizer, prompt, max_new_tokens=max_new_tokens
        )
    return out


def load_causal(
    model_dir: Any, seed: int, *, quantization_config: Any = None, device: Any = None
) -> Any:
    """A causal LM from ``model_dir``, seeded: :func:`ttdecomp.assets.load_pretrained`.

    A base quantized (``quantization_config``, ``--quantize``) or saved quantized is placed on
    ``device`` as it loads, and its bitsandbytes 4-bit layers are guarded
    (:func:`~ttdecomp.adapters.guard_4bit_backward`) before any evaluation: the causal runs
    evaluate the base before the adapter is added.
    """
    return guarded(
        load_pretrained(
            model_dir,
            task=TASK.name,
            seed=seed,
            quantization_config=quantization_config,
            device=device,
        )
    )


def run_causal(
    *,
    model_dir: str | os.PathLike[str],
    tokenizer: Any,
    splits: DialogueSplits,
    settings: MethodSettings,
    train: TrainSettings,
    run_dir: str | os.PathLike[str],
    targets: Sequence[str] = DEFAULT_CAUSAL_TARGETS,
    max_length: int = 128,
    datasets: Mapping[str, CausalDataset] | None = None,
    before: Mapping[str, Any] | None = None,
    prompt: Sequence[Mapping[str, str]] | None = None,
    max_new_tokens: int = 32,
    eval_batch_size: int = 8,
    on_evaluate: Any = None,
    final: bool = True,
    quantization_config: Any = None,
) -> dict[str, Any]:
    """Fine-tune a causal LM with one method and one seed and return its row.

    Steps: load ``model_dir`` fresh (seeded); evaluate the base model on validation and test
    (unless ``before`` is given); apply the method to ``targets``; train with
    :func:`~ttdecomp.finetune.train.fit`, choosing the state of lowest validation loss;
    evaluate that state on validation and, once, on test; save the adapter to
    ``run_dir/adapter`` (:func:`~ttdecomp.finetune.methods.save_adapted`); merge it where the
    method allows (``merge_and_unload``) and generate a greedy reply to ``prompt``.

    Parameters
    ----------
    model_dir : path
        The base model's folder (for SmolLM2:
        :func:`~ttdecomp.assets.smollm2.smollm2_checkpoint`).
    tokenizer : transformers tokenizer
        Its chat template formats the examples.
    splits : DialogueSplits
        From :func:`~ttdecomp.assets.dialogues.split_dialogues`.
    settings : MethodSettings
        The method (``tt-lora``, ``lora``, ``loretta-rep`` or ``loretta-adp``) and its rank,
        alpha, learning rate (``settings.lr`` is used; ``train.lr`` is ignored) and TT shape.
    train : TrainSettings
        Epochs or steps, batch size, seed, device, progress.
    run_dir : path
        The row's folder: ``adapter/`` is written there (and a scratch ``trainer/``).
    targets : sequence of str
        Layers to adapt; default ``q_proj``, ``v_proj``.
    max_length : int
        Tokens per example (ignored when ``datasets`` is given).
    datasets : mapping, optional
        ``train``/``validation``/``test`` :class:`CausalDataset` from :func:`tokenize_splits`,
        reused across runs.
    before : mapping, optional
        :func:`evaluate_base` of the base model, reused across runs; computed when missing.
    prompt : sequence of messages, optional
        What the fine-tuned model answers; default :func:`reply_prompt` of the test split.
    max_new_tokens : int
        Length limit of the reply.
    eval_batch_size : int
        Examples per forward pass when evaluating.
    on_evaluate : callable, optional
        Passed to :func:`~ttdecomp.finetune.train.fit` (a search reports to its pruner there).
    final : bool
        ``False`` for a search trial: no base-model evaluation, no test evaluation, nothing
        saved, no reply; the row has the validation loss of the chosen state.
    quantization_config : transformers quantization config, optional
        Load the base quantized (``FinetuneConfig.quantization_config()``); the method trains
        beside the frozen quantized base (and ``before`` is the quantized base's).

    Returns
    -------
    dict
        JSON-ready: ``method``, ``seed``, ``adapter_params``, ``extra_params``;
        ``val_loss_before``, ``val_perplexity_before``, ``test_loss_before``,
        ``test_perplexity_before``; ``val_loss``, ``val_perplexity``, ``test_loss``,
        ``test_perplexity`` (after, at the validation-chosen state); ``best_epoch``,
        ``best_step``, ``steps``, ``history`` (its ``val_loss`` is ``Trainer``'s, averaged per
        example); ``train_seconds``, ``step_seconds``, ``peak_step_bytes``; ``prompt``,
        ``reply``, ``reply_merged`` (whether the reply came from the merged model),
        ``reply_before`` when computed here or given; ``eval_tokens`` (reply tokens per split);
        ``settings``.

    Raises
    ------
    InvalidInputError
        For ``head-only`` or an unknown method (before anything is loaded), a model folder that
        cannot be loaded, or a target that matches no layer.

    Examples
    --------
    >>> from ttdecomp.finetune.methods import default_settings
    >>> run_causal(model_dir=".", tokenizer=None, splits=None, run_dir=".",
    ...            settings=default_settings("head-only"), train=TrainSettings(lr=1e-3))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: head-only ... a causal LM has no separate head to train; ...
    """
    _check_method(settings.method)
    run_dir = Path(run_dir)
    if datasets is None:
        datasets = tokenize_splits(tokenizer, splits, max_length=max_length)
    if prompt is None:
        prompt = reply_prompt(splits.test)
    collator = make_collator(tokenizer)
    model = load_causal(
        model_dir,
        train.seed,
        quantization_config=quantization_config,
        device=resolve_device(train.device),
    )
    row: dict[str, Any] = {"method": settings.method, "seed": train.seed}
    if not final:
        before = {}
    if before is None:
        before = evaluate_base(
            model,
            tokenizer,
            datasets,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            batch_size=eval_batch_size,
        )
    from transformers import set_seed

    set_seed(train.seed)  # the adapter's initialisation: the same whether or not before was given
    adapted = apply_method(model, settings, targets=list(targets), task=TASK)
    row.update(adapter_params=adapted.adapter_params, extra_params=adapted.extra_params)
    row.update(before)
    _, result = fit(
        adapted,
        datasets["train"],
        datasets["validation"],
        collator=collator,
        settings=replace(train, lr=settings.lr),
        selection=TASK.selection,
        output_dir=run_dir / "trainer",
        on_evaluate=on_evaluate,
    )
    if not final:  # a search trial: what validation chose, nothing else
        row.update(
            val_loss=result.best.get("val_loss"),
            best_epoch=result.best.get("epoch"),
            best_step=result.best.get("step"),
            steps=result.steps,
            history=result.history,
            train_seconds=result.train_seconds,
            step_seconds=result.step_seconds,
            settings=settings.to_dict(),
        )
        return row
    for short, name in (("val", "validation"), ("test", "test")):  # test once, chosen state
        metrics = evaluate_lm(adapted.model, datasets[name], collator, batch_size=eval_batch_size)
        row[f"{short}_loss"] = metrics["loss"]
        row[f"{short}_perplexity"] = metrics["perplexity"]
    if is_main_process():
        save_adapted(adapted, run_dir / "adapter")
    merged = get_method(settings.method).mergeable
    final = adapted.model.merge_and_unload() if merged else adapted.model
    row.update(
        best_epoch=result.best.get("epoch"),
        best_step=result.best.get("step"),
        steps=result.steps,
        history=result.history,
        train_seconds=result.train_seconds,
        step_seconds=result.step_seconds,
        peak_step_bytes=result.peak_step_bytes,
        prompt=[dict(m) for m in prompt],
        reply=generate_reply(final, tokenizer, prompt, max_new_tokens=max_new_tokens),
        reply_merged=merged,
        eval_tokens={n: datasets[n].n_label_tokens for n in ("validation", "test")},
        settings=settings.to_dict(),
    )
    return row


# ---------------------------------------------------------------------- the orchestrator's job
#: Causal split when the configuration gives none: validation and test fractions of the
#: distinct dialogues, the rest trains (English chatterbot: 718 / 90 / 90).
CAUSAL_SPLIT = (0.1, 0.1)
_BEFORE_KEYS = (
    "val_loss_before",
    "val_perplexity_before",
    "test_loss_before",
    "test_perplexity_before",
    "reply_before",
)


class CausalJob:
    """Data, tokenizer and checkpoint loaded once, shared by every causal-LM run of a comparison.

    Made by :func:`prepare_causal`; :meth:`run` is one (method, seed) row
    (:func:`run_causal`), the base model's evaluation is computed in the first run and reused.
    """

    def __init__(
        self,
        model_dir: Path,
        tokenizer: Any,
        splits: DialogueSplits,
        source: str,
        datasets: dict[str, CausalDataset],
        targets: list[str],
        max_length: int,
        n_left_out: int,
        quantization_config: Any = None,
    ) -> None:
        self.model_dir, self.tokenizer, self.splits = model_dir, tokenizer, splits
        self.quantization_config = quantization_config
        self.source, self.datasets, self.targets = source, datasets, targets
        self.max_length, self.n_left_out = max_length, n_left_out
        self.prompt = reply_prompt(splits.test)
        self.settings: dict[str, MethodSettings] | None = None
        self.before: dict[str, Any] | None = None
        self.trainable: dict[str, dict[str, int]] | None = None  # set by prepare_causal
        #: how the frozen base is stored when quantized (the banner): ``base_description``
        self.base: str | None = None  # set by prepare_causal

    @property
    def fingerprint(self) -> str:
        """A hash of the three splits' dialogues (``--resume`` checks it)."""
        import hashlib

        text = json.dumps([self.splits.train, self.splits.validation, self.splits.test])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """The ``data`` entry of ``results.json``."""
        from dataclasses import asdict

        return {
            "source": self.source,
            "sizes": self.splits.sizes,
            "duplicates_removed": self.splits.n_duplicates,
            "train_left_out": self.n_left_out,
            "split_seed": self.splits.seed,
            "max_length": self.max_length,
            "tokenized": {name: asdict(d.report) for name, d in self.datasets.items()},
            "fingerprint": self.fingerprint,
            "targets": self.targets,
            "prompt": self.prompt,
        }

    def model_config(self) -> Any:
        """The model's configuration (no weights read)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(self.model_dir))

    def run(
        self, settings: MethodSettings, train: TrainSettings, run_dir: Path, **options: Any
    ) -> dict[str, Any]:
        """One (method, seed) row: :func:`run_causal` on the shared data (``options``:
        ``on_evaluate``, ``final``)."""
        row = run_causal(
            model_dir=self.model_dir,
            tokenizer=self.tokenizer,
            splits=self.splits,
            settings=settings,
            train=train,
            run_dir=run_dir,
            targets=self.targets,
            datasets=self.datasets,
            before=self.before,
            prompt=self.prompt,
            quantization_config=self.quantization_config,
            **options,
        )
        if self.before is None and options.get("final", True):
            self.before = {k: row[k] for k in _BEFORE_KEYS if k in row}
        return row

    def finalize(self, document: dict[str, Any]) -> None:
        """Add the replies (the base model's and every run's) to ``results.json``."""
        rows = document.get("rows", [])
        document["replies"] = {
            "prompt": self.prompt,
            "before": next((r["reply_before"] for r in rows if "reply_before" in r), None),
            "after": {f"{r['method']}-seed{r['seed']}": r.get("reply") for r in rows},
        }


def prepare_causal(config: Any, model_path: Path, *, progress: bool = True) -> CausalJob:
    """Load and check everything a causal-LM comparison needs, before any training.

    Parameters
    ----------
    config : FinetuneConfig
        ``data``, ``methods``, ``targets`` (default ``q_proj``, ``v_proj``), ``max_length``,
        ``sizes`` (train cap, validation, test counts; the classification defaults mean
        :data:`CAUSAL_SPLIT`) and ``method_settings()`` are read.
    model_path : path
        SmolLM2's GGUF file (the clean checkpoint is made or found by
        :func:`~ttdecomp.assets.smollm2.smollm2_checkpoint`) or a local causal-LM folder.
    progress : bool
        Loading progress bars.

    Raises
    ------
    InvalidInputError
        For ``head-only`` or unknown methods, data that is not dialogues, an empty split, or a
        target that matches no layer (checked on a weightless copy of the model).

    Examples
    --------
    >>> job = prepare_causal(FinetuneConfig(model="smollm2", data="chatterbot"),
    ...                      assets.model_path("smollm2"))  # doctest: +SKIP
    >>> job.splits.sizes  # doctest: +SKIP
    {'train': 718, 'validation': 90, 'test': 90}
    """
    import random

    from transformers import AutoConfig, AutoTokenizer

    from ...assets.dialogues import load_data, split_dialogues
    from ...assets.smollm2 import smollm2_checkpoint

    settings = config.method_settings()
    for method in settings:
        _check_method(method)
    dialogues, source = load_data(config.data)
    sizes = tuple(config.sizes) if config.sizes is not None else None
    if sizes is None:
        splits = split_dialogues(dialogues, validation=CAUSAL_SPLIT[0], test=CAUSAL_SPLIT[1])
        n_left_out = 0
    else:
        splits = split_dialogues(dialogues, validation=sizes[1], test=sizes[2])
        train = list(splits.train)
        n_left_out = max(0, len(train) - sizes[0])
        if n_left_out:  # a seeded subset of the training dialogues, in their order
            keep = sorted(random.Random(0).sample(range(len(train)), sizes[0]))
            splits = DialogueSplits(
                [train[i] for i in keep],
                splits.validation,
                splits.test,
                n_duplicates=splits.n_duplicates,
                seed=splits.seed,
            )
    model_path = Path(model_path)
    if model_path.is_file() and model_path.suffix == ".gguf":
        model_path = smollm2_checkpoint(progress=progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        model_config = AutoConfig.from_pretrained(str(model_path))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"cannot load the model or tokenizer in {model_path}: {exc}"
        ) from None
    check_max_length(config.max_length, model_config, config.model)
    check_job_base(config, model_config)
    targets = list(config.targets or TASK.default_targets(model_config))
    settings = resolve_settings(
        model_config, settings, targets=targets, task=TASK, budget=config.budget_settings()
    )
    trainable = dry_run(model_config, settings, targets=targets, task=TASK)  # no weights read
    datasets = tokenize_splits(tokenizer, splits, max_length=config.max_length)
    job = CausalJob(
        model_path,
        tokenizer,
        splits,
        source,
        datasets,
        targets,
        config.max_length,
        n_left_out,
        quantization_config=config.quantization_config(),
    )
    job.trainable = trainable  # for the start banner
    job.base = base_description(model_config, job.quantization_config)
    job.settings = settings  # a matched rank derived (resolve_settings)
    return job


def _is_dialogue_file(data: str) -> bool:
    """A ``.jsonl`` file whose first record has ``messages`` or ``prompt`` (not ``text``)."""
    path = Path(data)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        record = json.loads(first) if first else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and ("messages" in record or "prompt" in record)


class CausalLMTask(Task):
    """Causal-LM fine-tuning on dialogues: held-out loss and perplexity, a reply, a merge."""

    name = "causal"
    display_name = "causal LM"
    metric = "val_loss"
    test_metric = "test_loss"
    larger_is_better = False
    selection = "loss"
    trains_head = False
    peft_task_type = "CAUSAL_LM"
    shared_eval_batch = True
    #: ``sizes`` None splits the dialogues by :data:`CAUSAL_SPLIT`; one epoch of batch 8.
    defaults: ClassVar = {"sizes": None, "epochs": 1, "max_steps": None, "max_length": 128,
                          "batch_size": 8}  # fmt: skip
    quick: ClassVar = {"sizes": (64, 16, 16), "epochs": 1, "max_steps": 8, "max_length": 64,
                       "batch_size": 8}  # fmt: skip
    search_quick: ClassVar = {}  # ``ttdecomp finetune --quick``'s settings
    figure_scale = 1.0
    figure_label = "test loss"

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def claims_data(self, data: str) -> bool:
        return _is_dialogue_file(data)

    def prepare(self, config: Any, model_path: Path, *, progress: bool = False) -> CausalJob:
        return prepare_causal(config, model_path, progress=progress)

    def table(self, pm: Any) -> tuple[list[str], Any]:
        def cells(s: dict[str, Any]) -> list[str]:
            return [
                f"{pm(s, 'test_loss_before', digits=3)} → {pm(s, 'test_loss', digits=3)}",
                f"{pm(s, 'test_perplexity_before')} → {pm(s, 'test_perplexity')}",
            ]

        return ["test loss", "test ppl"], cells

    def scores(self, row: Any) -> str:
        for key, label in (("val_loss", "validation loss"), ("test_loss", "test loss")):
            if isinstance(row.get(key), (int, float)):
                return f" ({label} {row[key]:.3f})"
        return ""


#: The registered instance (``tasks/__init__.py`` registers it).
TASK = CausalLMTask()
