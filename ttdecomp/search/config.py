"""What a search explores and on what: :class:`SearchConfig` (``ttdecomp search``'s options)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInputError
from ..finetune.methods import DEFAULT_METHODS, check_method
from ..finetune.run import FinetuneConfig
from .space import SearchSpace, default_space, load_space, parse_param
from .study import SAMPLERS

__all__ = ["DEFAULT_TRIALS", "QUICK", "SearchConfig"]

#: ``quick``: a tiny space, a few trials of a few steps (tests and a first look): 4 trials of
#: 2 epochs of 8 steps (128 training tweets, batch 16), then the front re-trained; about 1.5
#: minutes of one core's time.
QUICK = {
    "sizes": (128, 64, 64),
    "epochs": 2,
    "max_length": 32,
    "batch_size": 16,
    "n_trials": 4,
}
#: Trials of a TPE or random search when ``n_trials`` is not given.
DEFAULT_TRIALS = 20


@dataclass
class SearchConfig:
    """What a search explores and on what (``ttdecomp search``'s options).

    Parameters
    ----------
    model, data, targets, sizes, epochs, max_steps, batch_size, max_length, eval_every,
    device
        As in :class:`~ttdecomp.finetune.run.FinetuneConfig`: every trial is one fine-tuning
        run with these settings (validation after every epoch, or every ``eval_every`` steps,
        is what the pruner sees).
    methods : sequence of str
        Methods searched (default ``tt-lora`` and ``lora``); a ``method`` choice is the first
        parameter when there are several.
    space : dict, path or SearchSpace, optional
        ``{method: {name: spec}}`` or a YAML/JSON file (:mod:`~ttdecomp.search.space`); its
        methods replace ``methods``. Default: :func:`~ttdecomp.search.space.default_space`.
    params : sequence of str
        ``METHOD.NAME=SPEC`` overrides on top of the space (``tt-lora.lr=1e-3:1e-2``).
    sampler : {"tpe", "grid", "random"}
        ``grid`` runs every configuration of the space (ranges take ``grid_points`` values).
    pruner : {"hyperband", "none"}, optional
        Default ``hyperband``, except ``none`` for the exhaustive grid and with ``pareto``
        (Optuna does not prune multi-objective trials).
    n_trials : int, optional
        Finished (complete or pruned) trials the study should hold; default: the grid's size,
        else 20 (``quick``: 4), or no limit when ``epoch_budget`` is given.
    epoch_budget : float, optional
        Training epochs the study may spend, summed over its trials (a pruned trial counts
        the epochs it ran): trials keep being sampled until the budget is spent, and a trial
        whose next evaluation would overspend it is stopped there (state ``pruned``, user
        attribute ``stopped: "epoch budget"``). With several workers it can be overspent by
        at most one evaluation per worker.
    startup_trials : int, optional
        TPE's random trials before it models the results (Optuna's default: 10).
    reduction_factor : int
        HyperBand's reduction factor: each rung keeps the best ``1/reduction_factor`` of its
        bracket's trials (default 3).
    pareto : bool
        Two objectives: maximise the validation metric, minimise adapter parameters.
    seed : int
        Seeds the sampler and every trial's training.
    grid_points : int
        Values a range takes on the grid.
    quick : bool
        :data:`QUICK` sizes, epochs and trials unless given, and a tiny default space.

    Examples
    --------
    >>> SearchConfig(sampler="grid", params=["lora.r=4,8"], methods=["lora"]).n_trials is None
    True
    >>> SearchConfig(sampler="annealing")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: unknown sampler 'annealing'; expected one of tpe, grid, random (--sampler).
    """  # noqa: E501

    model: str = "minilm"
    data: str = "tweets"
    methods: Sequence[str] = DEFAULT_METHODS
    space: Any = None
    params: Sequence[str] = ()
    sampler: str = "tpe"
    pruner: str | None = None
    n_trials: int | None = None
    epoch_budget: float | None = None
    startup_trials: int | None = None
    reduction_factor: int = 3
    pareto: bool = False
    seed: int = 0
    grid_points: int = 3
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    max_length: int | None = None
    eval_every: int | None = None
    targets: Sequence[str] | None = None
    sizes: tuple[int, int, int] | None = None
    device: str = "cpu"
    quick: bool = False
    overrides: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise InvalidInputError(
                f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)} "
                "(--sampler)."
            )
        if self.pruner is None:
            self.pruner = "none" if self.sampler == "grid" or self.pareto else "hyperband"
        if self.pruner not in ("hyperband", "none"):
            raise InvalidInputError(
                f"unknown pruner {self.pruner!r}; expected hyperband or none (--pruner)."
            )
        if self.pruner == "hyperband" and self.pareto:
            raise InvalidInputError(
                "--pareto has two objectives and Optuna cannot prune multi-objective trials; "
                "drop --pruner hyperband (every trial then runs all its epochs)."
            )
        if isinstance(self.methods, str):
            self.methods = [m for m in self.methods.split(",") if m]
        self.methods = [check_method(m) for m in self.methods]
        for name, value, low in (
            ("n_trials", self.n_trials, 1),
            ("grid_points", self.grid_points, 1),
            ("startup_trials", self.startup_trials, 0),
            ("reduction_factor", self.reduction_factor, 2),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < low
            ):
                flag = "--" + name.replace("_", "-")
                raise InvalidInputError(
                    f"{name} must be an integer >= {low}; got {value!r} ({flag})."
                )
        budget = self.epoch_budget
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0
        ):
            raise InvalidInputError(
                f"epoch_budget must be a number of epochs > 0; got {budget!r} (--epoch-budget)."
            )
        if self.startup_trials is not None and self.sampler != "tpe":
            raise InvalidInputError(
                f"--startup-trials sets TPE's random start; the {self.sampler} sampler has "
                "none. Drop it or use --sampler tpe."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer; got {self.seed!r}.")
        self.params = list(self.params)
        self.overrides = {}
        for text in self.params:
            method, param = parse_param(text)
            self.overrides.setdefault(method, {})[param.name] = param
        if isinstance(self.space, (str, os.PathLike)):
            self.space = load_space(self.space)
        elif self.space is not None and not isinstance(self.space, SearchSpace):
            self.space = SearchSpace.from_dict(self.space)
        if self.space is not None:
            self.methods = self.space.methods
        unknown = sorted(set(self.overrides) - set(self.methods))
        if unknown:
            raise InvalidInputError(
                f"--param names {unknown}, which are not searched ({', '.join(self.methods)}); "
                "add them to --methods or to the space."
            )
        self.finetune_config()  # checks the training options

    def finetune_config(self) -> FinetuneConfig:
        """The fine-tuning configuration every trial runs (its methods are the searched ones).

        ``quick`` takes :data:`QUICK`'s sizes, epochs, length and batch size for
        classification, and ``ttdecomp finetune --quick``'s settings for a causal LM.
        """
        task = FinetuneConfig(model=self.model, data=self.data, methods=self.methods).task
        quick = QUICK if self.quick and task == "classification" else {}
        given_steps = self.epochs is not None or self.max_steps is not None
        return FinetuneConfig(
            model=self.model,
            data=self.data,
            methods=self.methods,
            seeds=(self.seed,),
            epochs=self.epochs if given_steps else quick.get("epochs"),
            max_steps=self.max_steps,
            batch_size=self.batch_size or quick.get("batch_size"),
            max_length=self.max_length or quick.get("max_length"),
            eval_every=self.eval_every,
            targets=self.targets,
            sizes=self.sizes or quick.get("sizes"),
            device=self.device,
            quick=self.quick,
        )

    def search_space(self, layer: tuple[int, int] | None) -> SearchSpace:
        """The space searched: the given or default one, with ``params`` applied."""
        base = self.space or default_space(self.methods, layer, quick=self.quick)
        return base.merged(self.overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the worker processes are started from it)."""
        out = asdict(self)
        out.pop("overrides")
        out["space"] = self.space.to_dict() if self.space is not None else None
        out["methods"] = list(self.methods)
        out["sizes"] = list(self.sizes) if self.sizes is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        data = dict(data)
        if data.get("sizes") is not None:
            data["sizes"] = tuple(data["sizes"])
        return cls(**data)
