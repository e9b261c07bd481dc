"""The Optuna side of ``ttdecomp search``: sampler, pruner, the study and its trials.

Every process that takes part in a search opens the same study in an RDB storage (a SQLite
file for one machine, PostgreSQL for many) and runs trials until the study holds the asked
number of finished (complete or pruned) trials, counted by Optuna's ``MaxTrialsCallback``;
nothing else coordinates the workers. A trial samples one configuration, trains it with
the fine-tuning run (:meth:`job.run <ttdecomp.finetune.run.prepare_job>` with ``final=False``:
validation only), reports the validation metric after every evaluation, and is pruned by
``HyperbandPruner`` when its bracket says so.

What a trial records (``trial.user_attrs``): ``config`` (the sampled values with the method),
``settings`` (:class:`~ttdecomp.finetune.methods.MethodSettings` as a dict),
``adapter_params``, ``evaluations`` (validation evaluations run, i.e. epochs when evaluating
per epoch), ``epochs`` (training epochs run, fractional with ``eval_every``), ``history``,
``stopped`` when the study's epoch budget cut it short, and ``repeat_of`` when the sampler
drew the configuration of a complete trial again: it is scored with that trial's result
without training (training is seeded, so it would give the same numbers).

A trial is never pruned at its last evaluation: it has trained every epoch by then, so it
completes (Optuna's HyperBand would otherwise mark some fully trained trials pruned).

The storage every process opens is :mod:`~ttdecomp.search.storage`'s
(:func:`open_storage`, :func:`check_sqlite_file` and :func:`redact` are re-exported here).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import InvalidInputError
from .space import SearchSpace
from .storage import check_sqlite_file, open_storage, redact

__all__ = [
    "SAMPLERS",
    "SURPLUS",
    "SurplusTrial",
    "check_sqlite_file",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "open_study",
    "redact",
    "trial_counts",
]

#: The samplers ``--sampler`` accepts.
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("hyperband", "none")
_FINISHED = ("COMPLETE", "PRUNED")


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs every trial at INFO; the search has its own progress bar."""
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def make_sampler(
    name: str, space: SearchSpace, seed: int, grid_points: int, startup_trials: int | None = None
) -> Any:
    """``tpe`` (Optuna's TPE, ``startup_trials`` random ones first: default 10), ``random``,
    or ``grid`` over every configuration of ``space``."""
    import optuna

    if name == "tpe":
        if startup_trials is None:
            return optuna.samplers.TPESampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        grid = space.grid(grid_points)
        return optuna.samplers.GridSampler({grid_key(grid): list(range(len(grid)))}, seed=seed)
    raise InvalidInputError(
        f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)} (--sampler)."
    )


def make_pruner(name: str, evaluations: int, reduction_factor: int = 3) -> Any:
    """``hyperband`` (HyperbandPruner over 1..``evaluations`` reports) or ``none``."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, evaluations), reduction_factor=reduction_factor
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise InvalidInputError(
        f"unknown pruner {name!r}; expected one of {', '.join(PRUNERS)} (--pruner)."
    )


def open_study(
    storage: Any,
    name: str,
    *,
    directions: list[str],
    identity: Mapping[str, Any],
    sampler: Any,
    pruner: Any,
    resume: bool,
    create: bool = True,
) -> Any:
    """Create the study ``name`` or join it; refuse one made with another space or data.

    ``identity`` (space, data, training settings, objectives) is stored in the study's user
    attributes by whoever creates it; a process that finds the study with another identity
    stops with the differences listed, unless ``resume`` (then the study continues with the
    new settings, which become the study's). ``create=False`` (a worker started by another
    process) only joins.
    """
    import optuna

    with quiet_optuna():
        if create:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                directions=directions,
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
        else:
            study = optuna.load_study(
                study_name=name, storage=storage, sampler=sampler, pruner=pruner
            )
    stored = study.user_attrs.get("identity")
    mine = json.loads(json.dumps(dict(identity)))
    if stored is None:
        study.set_user_attr("identity", mine)
    elif stored != mine:
        if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
            raise InvalidInputError(
                f"study {name!r} optimises {len(study.directions)} objective(s), this search "
                f"{len(directions)}; --pareto must match, or use another --study-name."
            )
        if not resume:
            diffs = [
                f"{k}: {stored.get(k)!r} there, {v!r} here"
                for k, v in mine.items()
                if stored.get(k) != v
            ]
            raise InvalidInputError(
                f"study {name!r} exists with another search space or settings ("
                + "; ".join(diffs)
                + "). Use the same options, pass --resume to continue it with these, or "
                "choose another --study-name."
            )
        study.set_user_attr("identity", mine)  # resumed: later workers join these settings
    return study


def _digest(value: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]


def grid_key(grid: list[dict[str, Any]]) -> str:
    """The grid sampler's one parameter: an index into ``grid`` (named after its content)."""
    return "config~" + _digest(grid)


def trial_counts(study: Any) -> dict[str, int]:
    """Trials by state: ``complete``, ``pruned``, ``running``, ``failed``, ``waiting`` (a
    surplus trial, started beyond the trial count and never run, is not counted)."""
    counts = {"complete": 0, "pruned": 0, "running": 0, "failed": 0, "waiting": 0}
    names = {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running", "FAIL": "failed"}
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get(SURPLUS):
            counts[names.get(t.state.name, "waiting")] += 1
    return counts


def epochs_spent(study: Any) -> float:
    """Training epochs the study's trials have run so far, running ones included."""
    total = 0.0
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if "epochs" in attrs:
            total += float(attrs["epochs"])
        elif attrs.get("history"):
            total += float(attrs["history"][-1].get("epoch", 0.0))
    return total


def finished_states() -> tuple[Any, ...]:
    """The trial states that count towards ``n_trials``."""
    import optuna

    return tuple(getattr(optuna.trial.TrialState, s) for s in _FINISHED)


#: The user attribute of a trial started beyond the study's trial count (it trains nothing,
#: is marked failed, and is left out of the report).
SURPLUS = "surplus"


class SurplusTrial(Exception):
    """Raised by :class:`Objective` for a trial beyond the study's trial count."""


class Objective:
    """One trial: sample, count the adapter, train on validation, report, maybe prune.

    Parameters
    ----------
    job : object
        From :func:`~ttdecomp.finetune.run.prepare_job` (data loaded once per process).
    space : SearchSpace
    sampler_name : str
        ``grid`` samples one index into ``space.grid(grid_points)``; the others sample the
        parameters themselves (a ``method`` choice first when there are several methods).
    train : callable
        ``train(seed)`` → :class:`~ttdecomp.finetune.train.TrainSettings`.
    count_params : callable
        ``count_params(settings)`` → adapter parameters (on a weightless model).
    metric : str
        The row's validation metric (the task's: ``val_accuracy``, ``val_loss``).
    pareto : bool
        Also return the adapter parameters (a second objective, minimised); Optuna cannot
        prune multi-objective trials, so every trial then runs all its epochs.
    scratch : path
        Where the trainer's scratch folders go.
    should_stop : callable, optional
        Asked after every evaluation; ``True`` raises ``KeyboardInterrupt`` there.
    evaluations : int, optional
        Validation evaluations of a full trial: the last one is never pruned.
    epoch_budget : float, optional
        Training epochs the whole study may spend (:func:`epochs_spent`): a trial whose next
        evaluation (``epoch_budget`` counted with ``epochs_per_evaluation``) would overspend
        it stops there, pruned, with ``stopped: "epoch budget"``.
    epochs_per_evaluation : float
        Training epochs between two evaluations.
    settings : callable, optional
        ``settings(config)`` → the :class:`~ttdecomp.finetune.methods.MethodSettings` a
        sampled configuration trains with; default ``space.settings``.
    """

    def __init__(
        self,
        job: Any,
        space: SearchSpace,
        sampler_name: str,
        grid_points: int,
        train: Callable[[int], Any],
        count_params: Callable[[Any], int],
        metric: str,
        pareto: bool,
        scratch: Any,
        seed: int,
        should_stop: Callable[[], bool] | None = None,
        evaluations: int | None = None,
        epoch_budget: float | None = None,
        epochs_per_evaluation: float = 1.0,
        settings: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.job, self.space, self.sampler_name = job, space, sampler_name
        self.grid = space.grid(grid_points) if sampler_name == "grid" else None
        self.train, self.count_params, self.metric = train, count_params, metric
        self.pareto, self.scratch, self.seed = pareto, scratch, seed
        self.should_stop = should_stop
        self.evaluations, self.epoch_budget = evaluations, epoch_budget
        self.epochs_per_evaluation = epochs_per_evaluation
        self.settings = settings or space.settings
        self.repeats_in_a_row, self.exhausted = 0, False
        #: the study's trial count (``run_trials`` sets it): a trial beyond it is a surplus
        self.max_trials: int | None = None

    #: Repeated configurations in a row after which the space counts as exhausted.
    MAX_REPEATS = 50

    def complete_twin(self, trial: Any, config: dict[str, Any]) -> Any:
        """A complete trial of the study with exactly this configuration, if any."""
        import optuna

        for other in trial.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
        ):
            if other.user_attrs.get("config") == config and not other.user_attrs.get("repeat_of"):
                return other
        return None

    def repeat(self, trial: Any, twin: Any) -> Any:
        """Score a configuration sampled again by its complete trial's result, untrained.

        Training is seeded, so it would give the same numbers: the trial records
        ``repeat_of`` and no epochs. After :attr:`MAX_REPEATS` in a row (a small space that
        the sampler has exhausted) the study stops.
        """
        self.repeats_in_a_row += 1
        trial.set_user_attr("repeat_of", twin.number)
        trial.set_user_attr("evaluations", 0)
        trial.set_user_attr("epochs", 0.0)
        if self.repeats_in_a_row >= self.MAX_REPEATS:
            self.exhausted = True
            trial.study.stop()
        return tuple(twin.values) if self.pareto else twin.value

    def over_budget(self, study: Any, epochs: float) -> bool:
        """Would ``epochs`` more training overspend the study's epoch budget?"""
        if self.epoch_budget is None:
            return False
        return epochs_spent(study) + epochs > self.epoch_budget + 1e-6

    def sample(self, trial: Any) -> dict[str, Any]:
        """The configuration of ``trial``: ``{"method": ..., name: value}``.

        Optuna fixes a categorical parameter's choices for the life of a study, so a choice
        parameter's name carries a short hash of its choices (``tt-lora.tt_rank~1a2b3c``):
        a study resumed with other choices samples a new parameter beside the old one.
        """
        if self.grid is not None:
            indices = list(range(len(self.grid)))
            key = grid_key(self.grid)
            return dict(self.grid[trial.suggest_categorical(key, indices)])
        methods = self.space.methods
        method = methods[0]
        if len(methods) > 1:
            method = trial.suggest_categorical("method~" + _digest(methods), methods)
        values: dict[str, Any] = {"method": method}
        for p in self.space.of(method):
            key = f"{method}.{p.name}"
            if p.choices is not None:
                key += "~" + _digest(list(p.choices))
                values[p.name] = trial.suggest_categorical(key, list(p.choices))
            elif p.integer:
                values[p.name] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
            else:
                values[p.name] = trial.suggest_float(key, p.low, p.high, log=p.log)
        return values

    def is_surplus(self, trial: Any) -> bool:
        """Whether ``trial`` is beyond the study's trial count: as many trials numbered before it
        are finished or running as the study asks for. Two processes that checked the count at
        the same moment can each start a trial; trial numbers are given out one at a time by the
        storage, so the later-numbered of the two is the surplus (and trains nothing)."""
        if self.max_trials is None:
            return False
        import optuna

        states = (*finished_states(), optuna.trial.TrialState.RUNNING)
        earlier = trial.study.get_trials(deepcopy=False, states=states)
        return sum(t.number < trial.number for t in earlier) >= self.max_trials

    def __call__(self, trial: Any) -> Any:
        import shutil

        import optuna

        if self.is_surplus(trial):
            trial.set_user_attr(SURPLUS, True)
            raise SurplusTrial(f"trial {trial.number} is beyond the {self.max_trials} asked for")
        config = self.sample(trial)
        settings = self.settings(config)
        twin = self.complete_twin(trial, config)
        if twin is not None and "adapter_params" in twin.user_attrs:
            n_params = twin.user_attrs["adapter_params"]  # counted already
        else:
            n_params = self.count_params(settings)
        trial.set_user_attr("config", config)
        trial.set_user_attr("settings", settings.to_dict())
        trial.set_user_attr("adapter_params", int(n_params))
        history: list[dict[str, Any]] = []
        if self.over_budget(trial.study, self.epochs_per_evaluation):
            # another worker spent the budget while this trial was being sampled
            trial.set_user_attr("stopped", "epoch budget")
            raise optuna.TrialPruned("the epoch budget is spent")
        if twin is not None:
            return self.repeat(trial, twin)
        self.repeats_in_a_row = 0

        def on_evaluate(entry: dict[str, Any]) -> None:
            history.append(entry)
            trial.set_user_attr("evaluations", len(history))
            trial.set_user_attr("epochs", float(entry.get("epoch", len(history))))
            trial.set_user_attr("history", history)
            value = entry[self.metric]
            last = self.evaluations is not None and len(history) >= self.evaluations
            if not self.pareto:
                trial.report(value, step=len(history))
                if not last and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after evaluation {len(history)}")
            if self.should_stop is not None and self.should_stop():
                raise KeyboardInterrupt
            if not last and self.over_budget(trial.study, self.epochs_per_evaluation):
                trial.set_user_attr("stopped", "epoch budget")
                raise optuna.TrialPruned(f"epoch budget spent after evaluation {len(history)}")

        run_dir = self.scratch / f"trial-{trial.number}"
        try:
            row = self.job.run(
                settings, self.train(self.seed), run_dir, on_evaluate=on_evaluate, final=False
            )
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        value = row[self.metric]
        return (value, float(n_params)) if self.pareto else value


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """Inside trials: no transformers loading bars or info, no rank-clipping warnings.

    A space that crosses shapes with ranks makes some ranks larger than a shape can carry;
    they are clipped per bond, and the trial counts the parameters actually trained.
    """
    import warnings

    from transformers.utils import logging as hf_logging

    from ..errors import RankClippedWarning

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankClippedWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
