"""What a search explores and on what: :class:`SearchConfig` (``ttdecomp search``'s options)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError
from ..finetune.config import FinetuneConfig
from ..finetune.methods import DEFAULT_METHODS, check_method
from ..finetune.tasks import detect_task, get_task
from .space import SearchSpace, default_space, load_space, parse_param
from .study import SAMPLERS

__all__ = ["DEFAULT_TRIALS", "QUICK", "QUICK_TRIALS", "SearchConfig"]

#: Trials of a ``quick`` search when ``n_trials`` is not given.
QUICK_TRIALS = 4
#: ``quick`` on classification: a tiny space, 4 trials of 2 epochs of 8 steps (128 training
#: tweets, batch 16), then the front re-trained; about 1.5 minutes of one core's time. Each
#: task declares its own (:attr:`~ttdecomp.finetune.tasks.Task.search_quick`).
QUICK = {**get_task("classification").search_quick, "n_trials": QUICK_TRIALS}
#: Trials of a TPE or random search when ``n_trials`` is not given.
DEFAULT_TRIALS = 20
_SEARCH_FIELDS = ("sampler", "pruner", "n_trials", "epoch_budget", "startup_trials",
                  "reduction_factor", "pareto", "seed", "grid_points", "quick")  # fmt: skip


@dataclass(init=False)
class SearchConfig:
    """What a search explores and on what (``ttdecomp search``'s options).

    Parameters
    ----------
    finetune : FinetuneConfig, optional
        What every trial runs: one fine-tuning run with these settings (validation after
        every epoch, or every ``eval_every`` steps, is what the pruner sees); its ``rank``,
        ``alpha``, ``lr`` and ``tt_shape`` are the settings a space does not search. Its
        methods and seeds are replaced by the search's. Instead of it, its options
        (``model``, ``data``, ``sizes``, ``epochs``, ...) may be given as keywords.
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
        The task's ``search_quick`` sizes, epochs and length (``ttdecomp finetune --quick``'s
        for a causal LM) unless given, :data:`QUICK_TRIALS` trials and a tiny default space.

    Examples
    --------
    >>> SearchConfig(sampler="grid", params=["lora.r=4,8"], methods=["lora"]).n_trials is None
    True
    >>> SearchConfig(epochs=2, quick=True).finetune.epochs
    2
    >>> SearchConfig(sampler="annealing")
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: unknown sampler 'annealing'; expected one of tpe, grid, random (--sampler).
    """  # noqa: E501

    finetune: FinetuneConfig
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
    quick: bool = False
    overrides: dict[str, Any] = field(default_factory=dict, repr=False)

    def __init__(
        self,
        finetune: FinetuneConfig | None = None,
        *,
        methods: Sequence[str] = DEFAULT_METHODS,
        space: Any = None,
        params: Sequence[str] = (),
        sampler: str = "tpe",
        pruner: str | None = None,
        n_trials: int | None = None,
        epoch_budget: float | None = None,
        startup_trials: int | None = None,
        reduction_factor: int = 3,
        pareto: bool = False,
        seed: int = 0,
        grid_points: int = 3,
        quick: bool = False,
        **finetune_options: Any,
    ) -> None:
        self.methods, self.space, self.params = methods, space, params
        self.sampler, self.pruner, self.n_trials = sampler, pruner, n_trials
        self.epoch_budget, self.startup_trials = epoch_budget, startup_trials
        self.reduction_factor, self.pareto, self.seed = reduction_factor, pareto, seed
        self.grid_points, self.quick = grid_points, quick
        self.overrides = {}
        self.__post_init__()
        self.finetune = self._finetune(finetune, finetune_options)

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

    def _finetune(self, given: FinetuneConfig | None, options: Mapping[str, Any]) -> FinetuneConfig:
        """The fine-tuning configuration of every trial: ``given`` or built from ``options``,
        with the searched methods and the search's seed."""
        if given is not None:
            if options:
                raise InvalidInputError(
                    f"give the fine-tuning options either as finetune=FinetuneConfig(...) or "
                    f"as keywords, not both; got both finetune= and {sorted(options)}."
                )
            if not isinstance(given, FinetuneConfig):
                raise InvalidInputError(
                    f"finetune must be a FinetuneConfig; got {type(given).__name__}."
                )
            values = given.to_dict()
        else:
            known = {f.name for f in dataclasses.fields(FinetuneConfig)}
            unknown = sorted(set(options) - known - {"methods", "seeds"})
            if unknown or "seeds" in options:
                bad = unknown or ["seeds (the search's is seed)"]
                raise InvalidInputError(
                    f"unknown search options {bad}; expected the search's own "
                    f"({', '.join(_SEARCH_FIELDS)}, methods, space, params) or fine-tuning "
                    f"options ({', '.join(sorted(known - {'methods', 'seeds', 'quick'}))})."
                )
            values = dict(options)
            if self.quick:
                model = values.get("model", "minilm")
                data = values.get("data", "tweets")
                task = get_task(values.get("task") or detect_task(model, data).name)
                quick = dict(task.search_quick)
                given_steps = values.get("epochs") is not None or values.get("max_steps")
                for name, value in quick.items():
                    if values.get(name) is None and not (name == "epochs" and given_steps):
                        values[name] = value
            values["quick"] = self.quick
        values["methods"] = list(self.methods)
        values["seeds"] = [self.seed]
        return FinetuneConfig.from_dict(values)

    def finetune_config(self) -> FinetuneConfig:
        """The fine-tuning configuration every trial runs (:attr:`finetune`)."""
        return self.finetune

    def search_space(self, layer: tuple[int, int] | None) -> SearchSpace:
        """The space searched: the given or default one, with ``params`` applied."""
        base = self.space or default_space(self.methods, layer, quick=self.quick)
        return base.merged(self.overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the worker processes are started from it)."""
        out = {name: getattr(self, name) for name in _SEARCH_FIELDS}
        out["finetune"] = self.finetune.to_dict()
        out["methods"] = list(self.methods)
        out["params"] = list(self.params)
        out["space"] = self.space.to_dict() if self.space is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """The configuration :meth:`to_dict` wrote."""
        data = dict(data)
        finetune = FinetuneConfig.from_dict(data.pop("finetune"))
        return cls(finetune, **data)
