"""The Task registry and the Job protocol: what a fine-tuning task is, and how one is chosen.

A task (sequence classification, causal-LM fine-tuning on dialogues) is one :class:`Task`
object registered with :func:`register_task`. It declares its metric and how the
validation-chosen state is selected, the model class it loads, its default targets, its
default and ``--quick`` settings, and how the report shows it; :meth:`Task.prepare` loads and
checks the data once and returns a :class:`Job`, whose :meth:`Job.run` is one (method, seed)
run. Nothing outside ``tasks/`` names a task.

:func:`detect_task` chooses the task from the data and the model before anything is loaded:
a packaged data set has its task, a task may claim a data file (dialogue JSONL for the causal
LM, labelled CSV for classification), and otherwise the model decides (a packaged model has
its task, a local folder the one its ``config.json`` names); the fallback is the task
registered with ``fallback = True`` (classification).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ...assets import registry as assets
from ...errors import InvalidInputError, InvalidOptionError

__all__ = [
    "Job",
    "Task",
    "check_max_length",
    "detect_task",
    "get_task",
    "register_task",
    "task_names",
    "unregister_task",
]

_REGISTRY: dict[str, Task] = {}

# where Hugging Face configs keep the longest input a model's position embeddings cover
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")


def check_max_length(max_length: int, model_config: Any, model: str) -> None:
    """Refuse ``max_length`` above the positions the model can embed, before any training.

    A longer input fails deep inside the first forward pass (an index error in the position
    embedding) or, for models with relative positions, silently runs out of what the model was
    trained on. Models that declare no limit pass.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> check_max_length(128, SimpleNamespace(max_position_embeddings=512), "m")
    >>> too_long = SimpleNamespace(max_position_embeddings=512)
    >>> check_max_length(1024, too_long, "m")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ttdecomp.errors.InvalidOptionError: max_length 1024 is more tokens than m can take ...
    """
    for name in _POSITION_LIMITS:
        limit = getattr(model_config, name, None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            if max_length > limit:
                raise InvalidOptionError(
                    f"max_length {max_length} is more tokens than {model} can take (its {name} "
                    f"is {limit}); give max_length {limit} or less.",
                    option="max_length",
                )
            return


class Job(Protocol):
    """What :meth:`Task.prepare` returns: data and tokenizer loaded once, shared by every run.

    Attributes
    ----------
    model_dir : Path
        The model folder each run loads fresh.
    targets : list of str
        The adapted layers.
    datasets : dict
        ``train``/``validation``/``test`` datasets (``len()`` gives examples).
    fingerprint : str
        A hash of the splits (``--resume`` checks it).
    settings : dict
        Every method's :class:`~ttdecomp.finetune.methods.MethodSettings` as the runs use them:
        the configuration's, with a matched rank derived
        (:func:`~ttdecomp.finetune.resolve_settings`).
    """

    model_dir: Path
    targets: list[str]
    datasets: dict[str, Any]
    settings: dict[str, Any] | None

    @property
    def fingerprint(self) -> str: ...

    def describe(self) -> dict[str, Any]:
        """The ``data`` entry of ``results.json``."""
        ...

    def run(self, settings: Any, train: Any, run_dir: Path, **options: Any) -> dict[str, Any]:
        """One (method, seed) row; ``options``: ``on_evaluate``, ``final``."""
        ...

    def finalize(self, document: dict[str, Any]) -> None:
        """Add what the task adds to the finished ``results.json`` document."""
        ...


class Task:
    """One fine-tuning task: declared settings, the metric, the model class, the report's view.

    Subclass it, set the class attributes and override :meth:`prepare` (and
    :meth:`claims_data` / :meth:`table` where the defaults do not fit), then
    :func:`register_task` an instance.

    Attributes
    ----------
    name : str
        The registry key, recorded in ``results.json`` (``"classification"``, ``"causal"``).
    metric : str
        The row's validation metric (``val_accuracy``, ``val_loss``): what a search optimises.
    test_metric : str
        Its test counterpart.
    larger_is_better : bool
        Direction of ``metric``.
    selection : str
        What :func:`~ttdecomp.finetune.train.fit` selects the state by (``accuracy``, ``loss``).
    trains_head : bool
        Whether the model has a head trained beside every adapter (classification).
    peft_task_type : str
        PEFT's ``task_type`` (``SEQ_CLS``, ``CAUSAL_LM``).
    defaults, quick, search_quick : dict
        ``sizes``, ``epochs``, ``max_steps``, ``max_length``, ``batch_size``: the protocol, its
        ``--quick`` version, and ``ttdecomp search --quick``'s.
    shared_eval_batch : bool
        Evaluate with the training batch size (a causal LM's logits are large).
    split_own_data : bool
        A user's data (not packaged) is split in proportion, not by ``defaults["sizes"]``.
    fallback : bool
        The task of data and models no task claims.
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    metric: ClassVar[str] = "val_accuracy"
    test_metric: ClassVar[str] = "test_accuracy"
    larger_is_better: ClassVar[bool] = True
    selection: ClassVar[str] = "accuracy"
    trains_head: ClassVar[bool] = True
    peft_task_type: ClassVar[str] = "SEQ_CLS"
    defaults: ClassVar[Mapping[str, Any]] = {}
    quick: ClassVar[Mapping[str, Any]] = {}
    search_quick: ClassVar[Mapping[str, Any]] = {}
    shared_eval_batch: ClassVar[bool] = False
    split_own_data: ClassVar[bool] = False
    fallback: ClassVar[bool] = False

    def auto_model_class(self) -> Any:
        """The ``transformers`` auto class the task's models load with."""
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def claims_data(self, data: str) -> bool:
        """Whether ``data`` (not a packaged name) is this task's data whatever the model."""
        return False

    def default_targets(self, model_config: Any) -> list[str]:
        """The layers adapted when ``--targets`` is not given: the adapters' per-model default
        (:data:`~ttdecomp.adapters.DEFAULT_TARGETS`, the query and value projections)."""
        from ...adapters import DEFAULT_TARGETS

        model_type = getattr(model_config, "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise InvalidInputError(
                f"no default targets for model type {model_type!r} (known: "
                f"{', '.join(sorted(DEFAULT_TARGETS))}); name the query and value projections "
                "with --targets (e.g. q_proj,v_proj)."
            )
        return list(DEFAULT_TARGETS[model_type][0])

    def prepare(self, config: Any, model_path: Path, *, progress: bool = False) -> Job:
        """Load and check data, tokenizer and targets of ``config`` once; nothing is trained."""
        raise NotImplementedError(f"task {self.name!r} does not implement prepare()")

    def scores(self, row: Mapping[str, Any]) -> str:
        """`` (validation 91.0%, test 90.5%)``: a finished row in one line."""
        parts = []
        for key, label in ((self.metric, "validation"), (self.test_metric, "test")):
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parts.append(f"{label} {self.format_value(value)}")
        return f" ({', '.join(parts)})" if parts else ""

    def format_value(self, value: float) -> str:
        """One metric value as the report prints it."""
        return f"{100 * value:.1f}%" if self.larger_is_better else f"{value:.3f}"

    #: Scale of the metric in figures (100: percent).
    figure_scale: ClassVar[float] = 100.0
    #: The figure's axis label of ``test_metric``.
    figure_label: ClassVar[str] = "test accuracy (%)"

    def table(self, pm: Any) -> tuple[list[str], Any]:
        """The report's task columns: ``(header, cells(summary))``; ``pm(summary, key, scale,
        digits)`` formats mean ± std."""
        return ["val acc %", "test acc %"], lambda s: [
            pm(s, self.metric, 100),
            pm(s, self.test_metric, 100),
        ]

    def finalize(self, job: Any, document: dict[str, Any]) -> None:
        """Add what the task adds to a finished ``results.json`` (default: nothing)."""
        finish = getattr(job, "finalize", None)
        if finish is not None:
            finish(document)

    def __repr__(self) -> str:
        return f"<Task {self.name!r}>"


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add ``task`` to the registry under ``task.name``; return it."""
    if not isinstance(task, Task):
        raise InvalidInputError(
            f"register_task expects a Task instance; got {type(task).__name__}."
        )
    if not isinstance(task.name, str) or not task.name:
        raise InvalidInputError(f"task name {task.name!r} must be a non-empty string.")
    if task.name in _REGISTRY and not replace:
        raise InvalidInputError(
            f"a task named {task.name!r} is registered already; pass replace=True to replace it."
        )
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove the task ``name`` from the registry (what a test registered)."""
    if name not in _REGISTRY:
        raise InvalidInputError(f"no task named {name!r} is registered.")
    del _REGISTRY[name]


def task_names() -> tuple[str, ...]:
    """Every registered task, in registration order.

    Examples
    --------
    >>> task_names()[:2]
    ('classification', 'causal')
    """
    return tuple(_REGISTRY)


def get_task(name: Any) -> Task:
    """The registered task ``name``, or an error listing the known ones."""
    task = _REGISTRY.get(name) if isinstance(name, str) else None
    if task is None:
        raise InvalidInputError(f"unknown task {name!r}; expected one of {', '.join(_REGISTRY)}.")
    return task


def _fallback() -> Task:
    for task in _REGISTRY.values():
        if task.fallback:
            return task
    raise InvalidInputError("no fallback task is registered (register one with fallback=True).")


def _data_task(data: str) -> Task | None:
    """The task a data set or file names by itself, or ``None``."""
    base = data.partition(":")[0]
    if base in assets.DATA:
        return get_task(assets.DATA[base].task)
    for task in _REGISTRY.values():
        if task.claims_data(data):
            return task
    return None


def _folder_task(folder: Path) -> Task:
    """The task of a local model folder: the assets' reading of its ``config.json``
    (:func:`ttdecomp.assets.loader.model_task`: causal-LM architectures or model types)."""
    from ...assets.loader import model_task

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return _fallback()
    if not isinstance(config, dict):
        return _fallback()
    return get_task(model_task(config))


def detect_task(model: str, data: str) -> Task:
    """The task of a comparison before any weights are loaded.

    The data's own task (packaged data, or a file a task claims) wins; otherwise the model's:
    a packaged model's task, or a local folder's (its ``config.json``). A Hub id or an unknown
    model is the fallback task here (loading it reports what is wrong).

    Examples
    --------
    >>> detect_task("minilm", "tweets").name, detect_task("smollm2", "chatterbot").name
    ('classification', 'causal')
    """
    task = _data_task(data)
    return task if task is not None else _model_task(model)


def _model_task(model: str) -> Task:
    """A packaged model's task, a local folder's (its ``config.json``), else the fallback."""
    key = assets.canonical_model_name(model)
    if key is not None:
        return get_task(assets.MODELS[key].task)
    if (Path(model) / "config.json").is_file():
        return _folder_task(Path(model))
    return _fallback()


# a packaged pair per built-in task, for messages
_EXAMPLE_PAIR = {
    "classification": "--model minilm --data tweets",
    "causal": "--model smollm2 --data chatterbot",
}


def default_data(model: str, task: str | None = None) -> str:
    """The packaged data a comparison trains on when ``--data`` is not given.

    The packaged data of the task asked for, else of the model's task: a packaged model's, or a
    local folder's (its ``config.json``); a Hub id or an unknown model gets the fallback task's
    (loading reports a mismatch with a fix).

    Examples
    --------
    >>> default_data("minilm"), default_data("smollm2"), default_data("minilm", task="causal")
    ('tweets', 'chatterbot', 'chatterbot')
    """
    wanted = get_task(task) if task is not None else _model_task(model)
    for name, asset in assets.DATA.items():
        if asset.task == wanted.name:
            return name
    raise InvalidInputError(
        f"no packaged data for the {wanted.name} task; give --data (a file of your own, a "
        "folder saved by datasets, or a Hub dataset id)."
    )


def check_pairing(model: str, data: str, model_task: Task, data_task: Task, packaged: bool) -> None:
    """A model made for one task given data of another: refuse where it cannot switch.

    A task that puts a new head on the model (classification) takes any local model, e.g. a
    causal LM as a sequence classifier; the packaged models, and a classifier asked to
    generate, cannot switch.
    """
    if model_task is data_task:
        return
    if packaged or not data_task.trains_head:
        own = _data_task(data)
        if own is not None and own is not data_task:  # the task came from --task
            raise InvalidInputError(
                f"--task {data_task.name} was given, but --model {model} is a "
                f"{model_task.name} model and --data {data} is {own.name} data; drop --task "
                f"(the data's task is {own.name}), or give a {data_task.name} model and data "
                f"(e.g. {_EXAMPLE_PAIR.get(data_task.name, '--model and --data')})."
            )
        raise InvalidInputError(
            f"--model {model} is a {model_task.name} model but --data {data} is "
            f"{data_task.name} data; use --model minilm with classification data or --model "
            "smollm2 with --data chatterbot."
        )
