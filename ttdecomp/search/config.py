"""What a search explores and on what: :class:`SearchConfig` (``ttdecomp search``'s options)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._validation import check_bool, check_choice, check_int, check_real
from ..errors import InvalidInputError, InvalidOptionError
from ..finetune.config import DEFAULTS, FinetuneConfig
from ..finetune.methods import check_method
from ..finetune.tasks import default_data, detect_task, get_task
from .space import SEARCH_METHODS, SearchSpace, default_space, load_space, parse_param
from .study import PRUNERS, SAMPLERS

__all__ = ["DEFAULT_TRIALS", "QUICK", "QUICK_TRIALS", "TRIAL_OPTIONS", "SearchConfig"]

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

_WHAT = "what to search"


def _as_in_finetune(name: str, default: Any = dataclasses.MISSING, **metadata: Any) -> Any:
    """The field ``name`` declared as :class:`FinetuneConfig` declares it (default, help,
    flag), with ``metadata`` (and ``default``, where given) changed: one declaration for both
    commands."""
    (original,) = [f for f in dataclasses.fields(FinetuneConfig) if f.name == name]
    meta = {**original.metadata, "group": "training (each trial)", **metadata}
    default = original.default if default is dataclasses.MISSING else default
    return field(default=default, metadata=meta)


def _quick(name: str) -> str:
    """``"4; --quick 2"``: the classification default and this search's ``quick`` value."""
    return f"{DEFAULTS['classification'][name]}; --quick {QUICK[name]}"


_TRIAL = "training (each trial)"
#: The :class:`~ttdecomp.finetune.FinetuneConfig` options ``ttdecomp search`` takes (what
#: every trial trains on and how), each with the metadata that differs from ``finetune``'s.
TRIAL_OPTIONS: dict[str, dict[str, Any]] = {
    "model": {"group": _WHAT},
    "data": {"group": _WHAT},
    "targets": {"group": _WHAT},
    "epochs": {"group": _TRIAL, "default_text": _quick("epochs")},
    "max_steps": {"group": _TRIAL},
    "batch_size": {"group": _TRIAL, "default_text": _quick("batch_size")},
    "max_length": {"group": _TRIAL, "default_text": _quick("max_length")},
    "eval_every": {"group": _TRIAL},
    "sizes": {
        "group": _TRIAL,
        "parts": tuple(
            (flag, f"{text} ({default}; --quick {quick})")
            for (flag, text), default, quick in zip(
                (("--train-size", "training examples"), ("--val-size", "validation examples"),
                 ("--test-size", "test examples")),
                DEFAULTS["classification"]["sizes"],
                QUICK["sizes"],
            )
        ),
    },
    "device": {"group": _TRIAL},
    "precision": {"group": _TRIAL},
    "gradient_checkpointing": {"group": _TRIAL},
    "revision": {},
    "trust_remote_code": {},
    "data_config": {},
    "text_column": {},
    "label_column": {},
}  # fmt: skip


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
    ttdecomp.errors.InvalidOptionError: sampler must be one of tpe, grid, random; got 'annealing'.

    Every field but ``finetune`` and ``overrides`` is also a ``ttdecomp search`` option
    (``n_trials`` is ``--n-trials``, ``params`` is ``--param``), as are the fine-tuning
    options of :data:`TRIAL_OPTIONS`; an invalid value raises
    :class:`~ttdecomp.errors.InvalidOptionError` naming the field.
    """

    finetune: FinetuneConfig
    methods: Sequence[str] = _as_in_finetune(
        "methods", default=SEARCH_METHODS, group=_WHAT, help="methods searched"
    )
    space: Any = field(
        default=None,
        metadata={
            "help": "a YAML or JSON file: {method: {param: values or range}}",
            "default_text": "each method's default space",
            "group": _WHAT,
            "type": str,
        },
    )
    params: Sequence[str] = field(
        default=(),
        metadata={
            "help": "override one parameter: LOW:HIGH[:log|:linear], V1,V2,... or one value; "
            "tt_shape choices separated by / (give --param once per parameter)",
            "group": _WHAT,
            "flag": "--param",
            "repeat": True,
            "metavar": "METHOD.NAME=SPEC",
        },
    )
    sampler: str = field(
        default="tpe",
        metadata={
            "help": "grid runs every configuration of the space",
            "group": _WHAT,
            "choices": SAMPLERS,
        },
    )
    pruner: str | None = field(
        default=None,
        metadata={
            "help": "HyperBand stops unpromising trials",
            "default_text": "hyperband; none for grid and --pareto",
            "group": _WHAT,
            "choices": PRUNERS,
            "type": str,
        },
    )
    n_trials: int | None = field(
        default=None,
        metadata={
            "help": "finished trials",
            "default_text": f"{DEFAULT_TRIALS}; --quick {QUICK['n_trials']}; grid: all; "
            "no limit with --epoch-budget",
            "group": _WHAT,
            "type": int,
        },
    )
    epoch_budget: float | None = field(
        default=None,
        metadata={
            "help": "training epochs the search may spend over all its trials: trials are "
            "sampled until it is spent (pruned trials count the epochs they ran)",
            "group": _WHAT,
            "type": float,
        },
    )
    startup_trials: int | None = field(
        default=None,
        metadata={
            "help": "TPE's random trials before it models the results",
            "default_text": "Optuna's, 10",
            "group": _WHAT,
            "type": int,
        },
    )
    reduction_factor: int = field(
        default=3,
        metadata={
            "help": "HyperBand keeps the best 1/N of a bracket's trials at each rung",
            "group": _WHAT,
        },
    )
    pareto: bool = field(
        default=False,
        metadata={"help": "also minimise adapter parameters (no pruning)", "group": _WHAT},
    )
    seed: int = field(default=0, metadata={"help": "sampler and training seed", "group": _WHAT})
    grid_points: int = field(
        default=3, metadata={"help": "values a range takes on the grid", "group": _WHAT}
    )
    quick: bool = _as_in_finetune(
        "quick", help="a tiny space, 4 trials of 2 epochs on 128 examples (under 2 minutes)"
    )
    overrides: dict[str, Any] = field(default_factory=dict, repr=False)

    def __init__(
        self,
        finetune: FinetuneConfig | None = None,
        *,
        methods: Sequence[str] = SEARCH_METHODS,
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
        check_choice(self.sampler, "sampler", SAMPLERS)
        check_bool(self.pareto, "pareto")
        check_bool(self.quick, "quick")
        if self.pruner is None:
            self.pruner = "none" if self.sampler == "grid" or self.pareto else "hyperband"
        check_choice(self.pruner, "pruner", PRUNERS)
        if self.pruner == "hyperband" and self.pareto:
            raise InvalidOptionError(
                "pareto has two objectives and Optuna cannot prune multi-objective trials; "
                "use the pruner none (every trial then runs all its epochs).",
                option="pareto",
            )
        if isinstance(self.methods, str):
            self.methods = [m for m in self.methods.split(",") if m]
        self.methods = [check_method(m) for m in self.methods]
        check_int(self.n_trials, "n_trials", low=1, optional=True)
        check_int(self.grid_points, "grid_points", low=1)
        check_int(self.startup_trials, "startup_trials", low=0, optional=True)
        check_int(self.reduction_factor, "reduction_factor", low=2)
        check_real(self.epoch_budget, "epoch_budget", low=0, low_open=True, optional=True)
        if self.startup_trials is not None and self.sampler != "tpe":
            raise InvalidOptionError(
                f"startup_trials sets TPE's random start; the {self.sampler} sampler has "
                "none. Drop it or use the tpe sampler.",
                option="startup_trials",
            )
        check_int(self.seed, "seed", low=0)
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
            raise InvalidOptionError(
                f"params name {unknown}, which are not searched ({', '.join(self.methods)}); "
                "add them to methods or to the space.",
                option="params",
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
                model = values.get("model") or "minilm"
                data = values.get("data") or default_data(model, values.get("task"))
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
