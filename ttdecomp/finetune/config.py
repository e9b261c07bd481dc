"""What defines a fine-tuning comparison: :class:`FinetuneConfig` and its defaults.

The protocol per task (sizes, epochs, length, batch; and their ``--quick`` versions) is each
registered task's (:mod:`ttdecomp.finetune.tasks`), the methods' settings each registered
method's (:mod:`ttdecomp.finetune.methods`). :class:`FinetuneConfig` fills in what is not given
from them, checks every option before any work, and derives each method's settings and each
run's training settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..assets import registry as assets
from ..errors import InvalidInputError
from .methods import (
    DEFAULT_METHODS,
    MethodSettings,
    check_method,
    default_settings,
    get_method,
    methods_for,
)
from .methods import method_names as _method_names
from .tasks import Task, detect_task, get_task
from .train import TrainSettings

__all__ = ["FinetuneConfig"]

_SOURCE_DEFAULTS = {
    "revision": None,
    "trust_remote_code": False,
    "data_config": None,
    "text_column": "text",
    "label_column": "label",
}


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning comparison (``ttdecomp finetune``'s options).

    Parameters
    ----------
    model : str
        A packaged model (``minilm``, ``smollm2``) or the path of a local Hugging Face folder.
    data : str
        A packaged data set (``tweets``, ``chatterbot``), a CSV/JSONL file with ``text`` and
        ``label`` columns, or a folder saved by 🤗 ``datasets``.
    methods : sequence of str
        Registered methods (:func:`~ttdecomp.finetune.methods.method_names`); default
        ``tt-lora`` and ``lora``.
    seeds : sequence of int
        One run per seed and method; the table shows mean ± std over seeds.
    rank, alpha, lr : value or dict of method to value, optional
        Override the methods' recommended settings (``Method.defaults``: TT-LoRA rank 4,
        α 32, lr 5e-3; LoRA r 8, α 16, lr 1e-3): one value for every method that has the
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
        ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
    quick : bool
        The fast end-to-end check: the task's ``quick`` sizes, epochs and length unless given.
    task : str, optional
        A registered task (:func:`~ttdecomp.finetune.tasks.task_names`); default: chosen from
        the data and the model (:func:`~ttdecomp.finetune.tasks.detect_task`).
        The fast end-to-end check: sizes, epochs and length from :data:`QUICK` unless given.
    revision : str, optional
        A Hub model's branch, tag or commit.
    trust_remote_code : bool
        Run a Hub model's own Python code (off by default).
    data_config : str, optional
        A Hub dataset's configuration (e.g. ``sst2`` of ``glue``).
    text_column, label_column : str
        The columns of the text and the label in a file or dataset.

    Examples
    --------
    >>> FinetuneConfig(lr={"tt-lora": 1e-2}).method_settings()["tt-lora"].lr
    0.01
    """

    model: str = "minilm"
    data: str = "tweets"
    methods: Sequence[str] = DEFAULT_METHODS
    seeds: Sequence[int] = (0,)
    rank: Any = None
    alpha: Any = None
    lr: Any = None
    tt_shape: Sequence[int] | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    max_length: int | None = None
    eval_every: int | None = None
    weight_decay: float = 0.01
    lr_schedule: Any = "constant"
    warmup_ratio: Any = 0.0
    targets: Sequence[str] | None = None
    sizes: tuple[int, int, int] | None = None
    device: str = "cpu"
    quick: bool = False
    revision: str | None = None
    trust_remote_code: bool = False
    data_config: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    task: str | None = None

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = detect_task(self.model, self.data).name
        task = get_task(self.task)
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
            raise InvalidInputError("no methods given; expected e.g. tt-lora,lora (--methods).")
        if len(set(self.methods)) != len(self.methods):
            raise InvalidInputError(f"methods {self.methods} lists a method twice (--methods).")
        seeds = list(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise InvalidInputError(
                f"seeds must be non-negative integers, e.g. 0,1,2; got {self.seeds!r} (--seeds)."
            )
        if len(set(seeds)) != len(seeds):
            raise InvalidInputError(f"seeds {seeds} lists a seed twice (--seeds).")
        self.seeds = seeds
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
                raise InvalidInputError(f"sizes must be (train, validation, test); got {sizes}.")
            if any(v is None for v in sizes):
                if defaults["sizes"] is None:
                    raise InvalidInputError(
                        "dialogue data is split 80/10/10% unless all three sizes are given; "
                        "give --train-size, --val-size and --test-size together."
                    )
                sizes = tuple(d if v is None else v for v, d in zip(sizes, defaults["sizes"]))
            self.sizes = sizes
        if (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or not 2 <= self.max_length <= 8192
        ):
            raise InvalidInputError(
                f"max_length must be an integer in [2, 8192] tokens; got {self.max_length!r} "
                "(--max-length)."
            )
        if self.targets is not None:
            self.targets = [t for t in self.targets if t]
            if not self.targets:
                raise InvalidInputError("targets is empty; give module names (--targets).")
        if self.tt_shape is not None:
            self.tt_shape = [int(s) for s in self.tt_shape]
        self.method_settings()  # validates rank/alpha/lr/tt_shape for every method
        for method in self.methods:  # and the schedule of each
            self.train_settings(self.seeds[0], method=method)

    @property
    def task_spec(self) -> Task:
        """The registered :class:`~ttdecomp.finetune.tasks.Task` of :attr:`task`."""
        return get_task(self.task)

    def _override(self, value: Any, method: str, name: str) -> Any:
        if not isinstance(value, Mapping):
            return value
        known = _method_names()
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise InvalidInputError(
                f"{name} names unknown methods {unknown}; expected some of {', '.join(known)}."
            )
        not_run = sorted(set(value) - set(self.methods))
        if not_run:
            raise InvalidInputError(
                f"{name} is given for {not_run}, which are not among the methods run "
                f"({', '.join(self.methods)}); add them to --methods or drop the setting."
            )
        return value.get(method)

    def method_settings(self) -> dict[str, MethodSettings]:
        """The validated settings of every method (defaults with the overrides applied)."""
        out = {}
        for method in self.methods:
            base = default_settings(method, task=self.task)
            overrides: dict[str, Any] = {}
            for name in ("rank", "alpha", "lr"):
                value = self._override(getattr(self, name), method, name)
                if value is None:
                    continue
                if getattr(base, name) is None and not isinstance(getattr(self, name), Mapping):
                    continue  # one value for all: only the methods that have the setting
                overrides[name] = value
            if self.tt_shape is not None and get_method(method).takes_tt_shape:
                overrides["tt_shape"] = tuple(self.tt_shape)
            out[method] = default_settings(method, task=self.task, **overrides)
        if self.tt_shape is not None and not any(
            get_method(m).takes_tt_shape for m in self.methods
        ):
            raise InvalidInputError(
                "--tt-shape is a TT-LoRA setting, but tt-lora is not among the methods run."
            )
        return out

    def train_settings(
        self, seed: int, *, progress: bool = False, method: str | None = None
    ) -> TrainSettings:
        """Training settings of one run (the learning rate is each method's own); ``method``
        picks its schedule when ``lr_schedule`` or ``warmup_ratio`` is given per method."""
        schedule: dict[str, Any] = {}
        for name, default in (("lr_schedule", "constant"), ("warmup_ratio", 0.0)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = self._override(value, method, name) if method is not None else None
            schedule[name] = default if value is None else value
        return TrainSettings(
            lr=1e-3,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            **schedule,
            seed=seed,
            device=self.device,
            eval_every=self.eval_every,
            eval_batch_size=self.batch_size if self.task_spec.shared_eval_batch else None,
            progress=progress,
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready; :meth:`from_dict` gives the same configuration back.

        Examples
        --------
        >>> c = FinetuneConfig(quick=True)
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
                for name, default in _SOURCE_DEFAULTS.items()
                if getattr(self, name) != default
            },
            # named only when not the constant schedule, so runs saved before it still resume
            **(
                {"lr_schedule": _plain(self.lr_schedule), "warmup_ratio": _plain(self.warmup_ratio)}
                if (self.lr_schedule, self.warmup_ratio) != ("constant", 0.0)
                else {}
            ),
        }


def _plain(value: Any) -> Any:
    """A per-method mapping as a plain dict (JSON), other values as they are."""
    return dict(value) if isinstance(value, Mapping) else value
