"""What a search explores and on what: :class:`SearchConfig` (``ttdecomp search``'s options)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .._validation import check_bool, check_choice, check_int, check_real
from ..errors import InvalidOptionError
from ..finetune.config import DEFAULTS
from ..finetune.methods import check_method
from ..finetune.run import FinetuneConfig
from .space import SearchSpace, default_space, load_space, parse_param
from .study import PRUNERS, SAMPLERS

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

_WHAT = "what to search"


def _as_in_finetune(name: str, **metadata: Any) -> Any:
    """The field ``name`` declared as :class:`FinetuneConfig` declares it (default, help,
    flag), with ``metadata`` changed: one declaration for both commands."""
    (original,) = [f for f in fields(FinetuneConfig) if f.name == name]
    meta = {**original.metadata, "group": "training (each trial)", **metadata}
    return field(default=original.default, metadata=meta)


def _quick(name: str) -> str:
    """``"4; --quick 2"``: the classification default and this search's ``quick`` value."""
    return f"{DEFAULTS['classification'][name]}; --quick {QUICK[name]}"


@dataclass
class SearchConfig:
    """What a search explores and on what (``ttdecomp search``'s options).

    Parameters
    ----------
    model, data, targets, sizes, epochs, max_steps, batch_size, max_length, eval_every,
    device, precision, gradient_checkpointing
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
    ttdecomp.errors.InvalidOptionError: sampler must be one of tpe, grid, random; got 'annealing'.

    Every field but ``overrides`` is also a ``ttdecomp search`` option (``n_trials`` is
    ``--n-trials``, ``params`` is ``--param``); an invalid value raises
    :class:`~ttdecomp.errors.InvalidOptionError` naming the field.
    """

    model: str = _as_in_finetune("model", group=_WHAT)
    data: str = _as_in_finetune("data", group=_WHAT)
    methods: Sequence[str] = _as_in_finetune("methods", group=_WHAT, help="methods searched")
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
    epochs: int | None = _as_in_finetune("epochs", default_text=_quick("epochs"))
    max_steps: int | None = _as_in_finetune("max_steps")
    batch_size: int | None = _as_in_finetune("batch_size", default_text=_quick("batch_size"))
    max_length: int | None = _as_in_finetune("max_length", default_text=_quick("max_length"))
    eval_every: int | None = _as_in_finetune("eval_every")
    targets: Sequence[str] | None = _as_in_finetune("targets", group=_WHAT)
    sizes: tuple[int, int, int] | None = _as_in_finetune(
        "sizes",
        parts=tuple(
            (flag, f"{text} ({default}; --quick {quick})")
            for (flag, text), default, quick in zip(
                (("--train-size", "training examples"), ("--val-size", "validation examples"),
                 ("--test-size", "test examples")),
                DEFAULTS["classification"]["sizes"],
                QUICK["sizes"],
            )
        ),
    )  # fmt: skip
    device: str = _as_in_finetune("device")
    precision: str = _as_in_finetune("precision")
    gradient_checkpointing: bool = _as_in_finetune("gradient_checkpointing")
    quick: bool = _as_in_finetune(
        "quick", help="a tiny space, 4 trials of 2 epochs on 128 examples (under 2 minutes)"
    )
    overrides: dict[str, Any] = field(default_factory=dict, repr=False)

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
            precision=self.precision,
            gradient_checkpointing=self.gradient_checkpointing,
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
