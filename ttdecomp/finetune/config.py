"""What defines a fine-tuning comparison: :class:`FinetuneConfig` and its defaults.

The protocol per task (sizes, epochs, length, batch; and their ``--quick`` versions) is each
registered task's (:mod:`ttdecomp.finetune.tasks`), the methods' settings each registered
method's (:mod:`ttdecomp.finetune.methods`). :class:`FinetuneConfig` fills in what is not given
from them, checks every option before any work, and derives each method's settings and each
run's training settings.

Each field's command-line help and the default tables live in
:mod:`~ttdecomp.finetune.options` (:data:`DEFAULTS`, :data:`QUICK`, :data:`PRECISIONS` and
:data:`REPORT_TO` are re-exported here); the per-method options (one value for every method
or ``{method: value}``) are resolved by :mod:`~ttdecomp.finetune.overrides`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._validation import check_bool, check_choice, check_int, check_real
from ..assets import registry as assets
from ..errors import InvalidInputError, InvalidOptionError
from . import overrides
from .methods import DEFAULT_METHODS, MethodSettings, check_method, get_method, methods_for
from .options import (
    DEFAULTS,
    INT_LIMITS,
    OPTIONS,
    PRECISIONS,
    QUICK,
    REPORT_TO,
    SOURCE_DEFAULTS,
)
from .quantization import (
    BNB_4BIT_COMPUTE_DTYPES,
    BNB_4BIT_TYPES,
    QUANTIZE,
    check_quantize,
    quantization_config,
)
from .tasks import Task, default_data, detect_task, get_task
from .train import TrainSettings

__all__ = [
    "BNB_4BIT_TYPES",
    "DEFAULTS",
    "PRECISIONS",
    "QUANTIZE",
    "QUICK",
    "REPORT_TO",
    "FinetuneConfig",
]


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning comparison (``ttdecomp finetune``'s options).

    Parameters
    ----------
    model : str
        A packaged model (``minilm``, ``smollm2``) or the path of a local Hugging Face folder.
    data : str, optional
        A packaged data set (``tweets``, ``chatterbot``), a CSV/JSONL file with ``text`` and
        ``label`` columns, or a folder saved by 🤗 ``datasets``. Default: the packaged data of
        ``task``, else of the model's task (``tweets``; ``chatterbot`` for a causal LM such as
        ``smollm2``): :func:`~ttdecomp.finetune.tasks.default_data`.
    methods : sequence of str
        Registered methods (:func:`~ttdecomp.finetune.methods.method_names`); default
        ``tt-lora`` and ``lora``.
    seeds : sequence of int
        One run per seed and method; the table shows mean ± std over seeds.
    rank, alpha, lr : value or dict of method to value, optional
        Override the methods' recommended settings (``Method.defaults``: TT-LoRA rank 4,
        α 16, lr 1e-2; LoRA r 8, α 16, lr 2e-3): one value for every method that has the
        setting, or a dict per method (``{"tt-lora": 5e-3, "lora": 1e-3}``).
    tt_shape : sequence of int, optional
        TT-LoRA's flat shape (input factors then output factors) for every target.
    epochs, max_steps, batch_size, max_length, eval_every, weight_decay, lr_schedule, warmup_ratio
        Training (see :class:`~ttdecomp.finetune.train.TrainSettings`); ``max_length`` in tokens;
        ``lr_schedule`` and ``warmup_ratio`` take one value for every method or a dict per
        method (``{"tt-lora": "cosine"}``; a method not named keeps ``"constant"`` and ``0``).
    targets : sequence of str, optional
        Target modules; default: the query and value projections of the model.
    sizes : (int, int, int), optional
        Train / validation / test sizes when the data is split here. Default: the packaged
        data's own sizes; a user's data is split 70/10/20% of its usable rows per class
        (``--quick``: of at most 620 rows).
    device : str
        ``auto`` (the default): CUDA, then MPS, then CPU; under ``torchrun`` each process
        takes the GPU of its ``LOCAL_RANK``.
    precision : {"auto", "fp32", "bf16", "fp16"}
        Mixed precision of training; ``auto`` is bf16 on a GPU that supports it, else fp32.
    gradient_checkpointing : bool
        Recompute activations in the backward pass: less memory, more time.
    report_to : {"none", "tensorboard", "wandb"}
        Where the ``Trainer`` also logs (the run's own ``train_log.jsonl`` is always written).
    quick : bool
        The fast end-to-end check: the task's ``quick`` sizes, epochs and length unless given.
    revision : str, optional
        A Hub model's branch, tag or commit.
    trust_remote_code : bool
        Run a Hub model's own Python code (off by default).
    data_config : str, optional
        A Hub dataset's configuration (e.g. ``sst2`` of ``glue``).
    text_column, label_column : str
        The columns of the text and the label in a file or dataset.
    quantize : {"none", "4bit", "8bit", "int8"}
        Load the base model quantized (:data:`QUANTIZE`); every method trains beside the frozen
        quantized base (LoRA through PEFT: QLoRA on ``4bit``). Needs ``ttdecomp[quantized]``.
        A model saved quantized (bitsandbytes 4-/8-bit, torchao int8) is that base without
        this option; another kind is refused
        (:func:`~ttdecomp.finetune.quantization.check_saved_quantization`).
    bnb_4bit_quant_type : {"nf4", "fp4"}
        The 4-bit data type (``--quantize 4bit`` only), as transformers names it.
    bnb_4bit_compute_dtype : {"float32", "bfloat16", "float16"}
        What the 4-bit matmuls compute in (``--quantize 4bit`` only).
    task : str, optional
        A registered task (:func:`~ttdecomp.finetune.tasks.task_names`); default: chosen from
        the data and the model (:func:`~ttdecomp.finetune.tasks.detect_task`).

    Every field is also a ``ttdecomp finetune`` option (``batch_size`` is ``--batch-size``;
    ``sizes`` is ``--train-size``, ``--val-size`` and ``--test-size``). An invalid value
    raises :class:`~ttdecomp.errors.InvalidOptionError` naming the field.

    Examples
    --------
    >>> FinetuneConfig(lr={"tt-lora": 1e-2}).method_settings()["tt-lora"].lr
    0.01
    """

    model: str = field(default="minilm", metadata=OPTIONS["model"])
    data: str | None = field(default=None, metadata=OPTIONS["data"])
    methods: Sequence[str] = field(default=DEFAULT_METHODS, metadata=OPTIONS["methods"])
    seeds: Sequence[int] = field(default=(0,), metadata=OPTIONS["seeds"])
    rank: Any = field(default=None, metadata=OPTIONS["rank"])
    alpha: Any = field(default=None, metadata=OPTIONS["alpha"])
    lr: Any = field(default=None, metadata=OPTIONS["lr"])
    tt_shape: Sequence[int] | None = field(default=None, metadata=OPTIONS["tt_shape"])
    epochs: int | None = field(default=None, metadata=OPTIONS["epochs"])
    max_steps: int | None = field(default=None, metadata=OPTIONS["max_steps"])
    batch_size: int | None = field(default=None, metadata=OPTIONS["batch_size"])
    max_length: int | None = field(default=None, metadata=OPTIONS["max_length"])
    eval_every: int | None = field(default=None, metadata=OPTIONS["eval_every"])
    weight_decay: float = field(default=0.01, metadata=OPTIONS["weight_decay"])
    lr_schedule: Any = field(default="constant", metadata=OPTIONS["lr_schedule"])
    warmup_ratio: Any = field(default=0.0, metadata=OPTIONS["warmup_ratio"])
    targets: Sequence[str] | None = field(default=None, metadata=OPTIONS["targets"])
    sizes: tuple[int, int, int] | None = field(default=None, metadata=OPTIONS["sizes"])
    device: str = field(default="auto", metadata=OPTIONS["device"])
    precision: str = field(default="auto", metadata=OPTIONS["precision"])
    gradient_checkpointing: bool = field(default=False, metadata=OPTIONS["gradient_checkpointing"])
    report_to: str = field(default="none", metadata=OPTIONS["report_to"])
    # None is accepted from Python and read as "none"
    quantize: str = field(default="none", metadata=OPTIONS["quantize"])
    bnb_4bit_quant_type: str = field(default="nf4", metadata=OPTIONS["bnb_4bit_quant_type"])
    bnb_4bit_compute_dtype: str = field(
        default="float32", metadata=OPTIONS["bnb_4bit_compute_dtype"]
    )
    quick: bool = field(default=False, metadata=OPTIONS["quick"])
    revision: str | None = field(default=None, metadata=OPTIONS["revision"])
    trust_remote_code: bool = field(default=False, metadata=OPTIONS["trust_remote_code"])
    data_config: str | None = field(default=None, metadata=OPTIONS["data_config"])
    text_column: str = field(default="text", metadata=OPTIONS["text_column"])
    label_column: str = field(default="label", metadata=OPTIONS["label_column"])
    task: str | None = field(default=None, metadata=OPTIONS["task"])

    def __post_init__(self) -> None:
        if self.data is None:  # the packaged data of the task (or the model's task)
            self.data = default_data(self.model, self.task)
        if self.task is None:
            self.task = detect_task(self.model, self.data).name
        try:
            task = get_task(self.task)
        except InvalidInputError as exc:
            raise InvalidOptionError(str(exc), option="task") from None
        if isinstance(self.methods, str):
            self.methods = [m for m in self.methods.split(",") if m]
        self.methods = [check_method(m) for m in self.methods]
        for m in self.methods:
            if not get_method(m).supports(task.name):
                raise InvalidInputError(
                    f"{get_method(m).why_not(task.name)}; choose among "
                    f"{', '.join(methods_for(task.name))} (--methods)."
                )
        if not self.methods:
            raise InvalidOptionError(
                "methods is empty; expected e.g. tt-lora,lora.", option="methods"
            )
        if len(set(self.methods)) != len(self.methods):
            raise InvalidOptionError(
                f"methods {self.methods} lists a method twice.", option="methods"
            )
        if isinstance(self.seeds, (str, bytes)) or not isinstance(self.seeds, Sequence):
            raise InvalidOptionError(
                f"seeds must be a list of non-negative integers, e.g. 0,1,2; got {self.seeds!r}.",
                option="seeds",
            )
        seeds = [check_int(s, "seeds", low=0) for s in self.seeds]
        if not seeds:
            raise InvalidOptionError("seeds is empty; expected e.g. 0,1,2.", option="seeds")
        if len(set(seeds)) != len(seeds):
            raise InvalidOptionError(f"seeds {seeds} lists a seed twice.", option="seeds")
        self.seeds = seeds
        check_bool(self.quick, "quick")
        check_bool(self.gradient_checkpointing, "gradient_checkpointing")
        check_choice(self.precision, "precision", PRECISIONS)
        check_choice(self.report_to, "report_to", REPORT_TO)
        if self.quantize is None:  # the Python API's "no quantization"
            self.quantize = "none"
        check_choice(self.quantize, "quantize", tuple(QUANTIZE))
        check_choice(self.bnb_4bit_quant_type, "bnb_4bit_quant_type", BNB_4BIT_TYPES)
        check_choice(self.bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype", BNB_4BIT_COMPUTE_DTYPES)
        self._check_quantize()
        check_real(self.weight_decay, "weight_decay", low=0, high=1, high_open=True)
        for name, high in INT_LIMITS.items():
            check_int(getattr(self, name), name, low=1, high=high, optional=True)
        defaults = task.quick if self.quick else task.defaults
        given_steps = self.max_steps is not None or self.epochs is not None
        # a user's data is split in proportion where the task says so (not the packaged sizes)
        own_data = task.split_own_data and self.data.partition(":")[0] not in assets.DATA
        for name, value in defaults.items():
            if name == "sizes" and own_data:
                continue  # a user's data is split in proportion (finetune.data.FRACTIONS)
            if getattr(self, name) is None and not (name == "max_steps" and given_steps):
                setattr(self, name, value)
        if self.sizes is not None:
            sizes = tuple(self.sizes)
            if len(sizes) != 3:
                raise InvalidOptionError(
                    f"sizes must be (train, validation, test); got {sizes}.", option="sizes"
                )
            for v in sizes:
                check_int(v, "sizes", low=1, optional=True)
            if any(v is None for v in sizes):
                if defaults["sizes"] is None:
                    raise InvalidInputError(
                        "dialogue data is split 80/10/10% unless all three sizes are given; "
                        "give --train-size, --val-size and --test-size together."
                    )
                sizes = tuple(d if v is None else v for v, d in zip(sizes, defaults["sizes"]))
            self.sizes = sizes
        check_int(self.max_length, "max_length", low=2, high=8192)
        if self.targets is not None:
            self.targets = [t for t in self.targets if t]
            if not self.targets:
                raise InvalidOptionError("targets is empty; give module names.", option="targets")
        if self.tt_shape is not None:
            self.tt_shape = [check_int(s, "tt_shape", low=1) for s in self.tt_shape]
        self.method_settings()  # validates rank/alpha/lr/tt_shape for every method
        for method in self.methods:  # and the schedule of each
            self.train_settings(self.seeds[0], method=method)

    def _check_quantize(self) -> None:
        check_quantize(
            self.quantize,
            self.methods,
            bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=self.bnb_4bit_compute_dtype,
        )

    def quantization_config(self) -> Any:
        """The transformers quantization config of ``quantize`` (None for a full-precision base):
        ``ttdecomp.finetune.quantization.quantization_config`` of these options.

        Examples
        --------
        >>> FinetuneConfig().quantization_config() is None
        True
        >>> FinetuneConfig(quantize="8bit").quantization_config().load_in_8bit
        True
        """
        return quantization_config(
            self.quantize,
            task=self.task,
            bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=self.bnb_4bit_compute_dtype,
        )

    @property
    def task_spec(self) -> Task:
        """The registered :class:`~ttdecomp.finetune.tasks.Task` of :attr:`task`."""
        return get_task(self.task)

    def method_settings(self) -> dict[str, MethodSettings]:
        """The validated settings of every method (defaults with the overrides applied):
        :func:`ttdecomp.finetune.overrides.method_settings`."""
        return overrides.method_settings(self)

    def budget_settings(self) -> dict[str, MethodSettings]:
        """The settings of the methods a run method's rank is matched to, when they do not run
        themselves (``--methods lora-matched`` alone: TT-LoRA's, with ``--rank tt-lora=N`` and
        ``--tt-shape`` applied), for :func:`~ttdecomp.finetune.resolve_settings`.

        Examples
        --------
        >>> FinetuneConfig(methods=["lora-matched"], rank={"tt-lora": 2}).budget_settings()
        {'tt-lora': MethodSettings(method='tt-lora', lr=0.01, rank=2, alpha=16.0, tt_shape=None)}
        """
        return overrides.budget_settings(self)

    def train_settings(
        self, seed: int, *, progress: bool = False, method: str | None = None
    ) -> TrainSettings:
        """Training settings of one run (the learning rate is each method's own); ``method``
        picks its schedule when ``lr_schedule`` or ``warmup_ratio`` is given per method."""
        schedule = overrides.schedule_for(self, method)
        return TrainSettings(
            lr=1e-3,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            **schedule,
            seed=seed,
            device=self.device,
            precision=self.precision,
            gradient_checkpointing=self.gradient_checkpointing,
            report_to=self.report_to,
            eval_every=self.eval_every,
            eval_batch_size=self.batch_size if self.task_spec.shared_eval_batch else None,
            progress=progress,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every option as resolved (defaults filled in), JSON-ready: what ``results.json``
        records under ``config.options``; :meth:`from_dict` gives the same configuration back.

        Examples
        --------
        >>> c = FinetuneConfig(quick=True)
        >>> c.to_dict()["epochs"]
        3
        >>> FinetuneConfig.from_dict(c.to_dict()) == c
        True
        """
        out = dataclasses.asdict(self)
        for name in ("methods", "seeds", "tt_shape", "targets", "sizes"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FinetuneConfig:
        """The configuration :meth:`to_dict` wrote (unknown keys are an error)."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(
                f"a fine-tuning configuration must be a mapping; got {type(data).__name__}."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"unknown fine-tuning options {unknown}; expected some of {sorted(known)}."
            )
        values = dict(data)
        if values.get("sizes") is not None:
            values["sizes"] = tuple(values["sizes"])
        return cls(**values)

    def identity(self) -> dict[str, Any]:
        """What must match for ``--resume`` to reuse finished rows (not methods or seeds)."""
        return {
            "model": self.model,
            "data": self.data,
            "sizes": list(self.sizes) if self.sizes is not None else None,
            "epochs": self.epochs if self.max_steps is None else None,
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "eval_every": self.eval_every,
            "weight_decay": self.weight_decay,
            "targets": list(self.targets) if self.targets is not None else None,
            # recorded only when set, so that folders written before still resume
            **{
                name: getattr(self, name)
                for name, default in SOURCE_DEFAULTS.items()
                if getattr(self, name) != default
            },
            # named only when not the constant schedule, so runs saved before it still resume
            **(
                {
                    "lr_schedule": overrides.plain(self.lr_schedule),
                    "warmup_ratio": overrides.plain(self.warmup_ratio),
                }
                if (self.lr_schedule, self.warmup_ratio) != ("constant", 0.0)
                else {}
            ),
        }
