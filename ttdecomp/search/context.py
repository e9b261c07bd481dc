"""What every process of one search builds alike: data, space, storage, study, objective.

:class:`SearchContext` loads the job once (:func:`~ttdecomp.finetune.run.prepare_job`),
builds the space for the targeted layers, checks every TT shape on a weightless model, and
opens the storage; :func:`run_trials` runs trials in this process until the study holds the
asked number of finished ones.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, TTError
from ..finetune.methods import apply_method
from ..finetune.run import prepare_job
from ..finetune.tasks import get_task
from ..runs.pool import defer_signals
from .config import DEFAULT_TRIALS, QUICK_TRIALS, SearchConfig
from .storage import open_storage
from .study import (
    SURPLUS,
    Objective,
    SurplusTrial,
    finished_states,
    make_pruner,
    make_sampler,
    open_study,
    quiet_optuna,
    quiet_training,
)

__all__ = ["SearchContext", "run_trials"]


class SearchContext:
    """What every process of one search builds alike: the job, space, storage and objective."""

    def __init__(self, config: SearchConfig, output: Path, storage_url: str, progress: bool):
        import optuna  # noqa: F401  (an ImportError here names the missing extra)

        self.config, self.output = config, output
        self.fconfig = config.finetune_config()
        self.job, self.task, self.model_path = prepare_job(self.fconfig, progress=progress)
        self.task_spec = get_task(self.task)
        self.metric = self.task_spec.metric
        self.model_config = self.job.model_config()
        self.base_settings = self.job.settings or self.fconfig.method_settings()
        self._counts: dict[str, int] = {}
        self.space = config.search_space(self._layer())
        self._check_space()
        self.storage_url = storage_url
        self.storage = open_storage(storage_url)

    def _skeleton(self) -> Any:
        import torch

        with torch.device("meta"):
            return self.task_spec.auto_model_class().from_config(self.model_config)

    def _layer(self) -> tuple[int, int] | None:
        """``(out, in)`` of the targeted layers when they all share one shape."""
        from ..adapters import TTLoRAConfig, inspect_targets

        infos = inspect_targets(
            self._skeleton(), TTLoRAConfig(tt_rank=1, target_modules=list(self.job.targets))
        )
        shapes = {(i.out_features, i.in_features) for i in infos}
        return next(iter(shapes)) if len(shapes) == 1 else None

    def count_params(self, settings: Any) -> int:
        """Adapter parameters of ``settings`` (applied to a weightless copy of the model;
        remembered per settings)."""
        import json

        key = json.dumps(settings.to_dict(), sort_keys=True)
        if key not in self._counts:
            adapted = apply_method(
                self._skeleton(), settings, targets=list(self.job.targets), task=self.task_spec
            )
            self._counts[key] = int(adapted.adapter_params)
        return self._counts[key]

    def _check_space(self) -> None:
        """Every TT shape (and method) of the space fits the targeted layers."""
        for method, params in self.space.params:
            shapes = [p for p in params if p.name == "tt_shape"]
            values = [{"method": method}]
            if shapes:
                values = [{"method": method, "tt_shape": s} for s in shapes[0].choices]
            for value in values:
                settings = self.settings(value)
                try:
                    self.count_params(settings)
                except TTError as exc:
                    raise InvalidInputError(f"search space, {method}: {exc}") from None

    def settings(self, config: dict[str, Any]) -> Any:
        """The :class:`~ttdecomp.finetune.methods.MethodSettings` of a sampled configuration
        (what the space does not set is the fine-tuning configuration's)."""
        return self.space.settings(config, self.base_settings)

    def identity(self) -> dict[str, Any]:
        return {
            "space": self.space.to_dict(),
            "sampler": self.config.sampler,
            "grid_points": self.config.grid_points if self.config.sampler == "grid" else None,
            "metric": self.metric,
            "pareto": self.config.pareto,
            "seed": self.config.seed,
            "finetune": {**self.fconfig.identity(), "targets": list(self.job.targets)},
            "data_fingerprint": self.job.fingerprint,
        }

    def directions(self) -> list[str]:
        first = "maximize" if self.task_spec.larger_is_better else "minimize"
        return [first, "minimize"] if self.config.pareto else [first]

    def n_trials(self) -> int | None:
        """Finished trials the study should hold; ``None``: until the epoch budget is spent."""
        if self.config.n_trials is not None:
            return self.config.n_trials
        if self.config.sampler == "grid":
            return len(self.space.grid(self.config.grid_points))
        if self.config.epoch_budget is not None:
            return None
        return QUICK_TRIALS if self.config.quick else DEFAULT_TRIALS

    def epochs_per_evaluation(self) -> float:
        """Training epochs between two validation evaluations of a trial."""
        import math

        f = self.fconfig
        steps_per_epoch = math.ceil(len(self.job.datasets["train"]) / f.batch_size)
        total = f.max_steps or steps_per_epoch * f.epochs
        return total / steps_per_epoch / self.evaluations()

    def evaluations(self) -> int:
        """Validation evaluations of a full trial (the pruner's maximum resource)."""
        import math

        f = self.fconfig
        steps_per_epoch = math.ceil(len(self.job.datasets["train"]) / f.batch_size)
        total = f.max_steps or steps_per_epoch * f.epochs
        if f.eval_every:
            return max(1, total // f.eval_every)
        return max(1, math.ceil(total / steps_per_epoch))

    def study(self, *, resume: bool, create: bool = True, name: str, process: int = 0) -> Any:
        """Create or join the study ``name``; ``process``: this machine's worker index.

        The sampler is seeded with ``seed`` in a fresh study's first process, and with
        ``seed`` plus the trials already there (and ``10000 * process``) otherwise: a
        resumed search or a second worker would otherwise draw the first one's random
        start-up configurations again. The grid sampler keeps ``seed`` everywhere: it
        shuffles the grid with its seed and hands trial ``n`` the ``n``-th point, so every
        process must shuffle alike or two of them would train the same point.
        """
        c = self.config

        def sampler(seed: int) -> Any:
            return make_sampler(c.sampler, self.space, seed, c.grid_points, c.startup_trials)

        study = open_study(
            self.storage,
            name,
            directions=self.directions(),
            identity=self.identity(),
            sampler=sampler(c.seed),
            pruner=make_pruner(c.pruner, self.evaluations(), c.reduction_factor),
            resume=resume,
            create=create,
        )
        offset = len(study.get_trials(deepcopy=False)) + 10_000 * process
        if offset and c.sampler != "grid":  # the grid's order must agree in every process
            study.sampler = sampler(c.seed + offset)
        return study

    def objective(self, should_stop: Callable[[], bool] | None) -> Objective:
        f = self.fconfig

        def train(seed: int) -> Any:
            return f.train_settings(seed, progress=False)

        scratch = self.output / ".scratch" / f"{socket.gethostname()}-{os.getpid()}"
        objective = Objective(
            self.job,
            self.space,
            self.config.sampler,
            self.config.grid_points,
            train,
            self.count_params,
            self.metric,
            self.config.pareto,
            scratch,
            self.config.seed,
            should_stop,
            evaluations=self.evaluations(),
            epoch_budget=self.config.epoch_budget,
            epochs_per_evaluation=self.epochs_per_evaluation(),
            settings=self.settings,
        )
        return objective


def run_trials(
    context: SearchContext,
    study: Any,
    n_trials: int | None,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_trial: Callable[[], None] | None = None,
) -> bool:
    """Run trials in this process until the study holds ``n_trials`` finished ones (``None``:
    no limit) or its epoch budget is spent.

    A trial is started only while the finished and running trials together are fewer than
    ``n_trials``, so several processes end with ``n_trials`` trials, not one more per
    process (and the grid sampler draws no grid point twice at the end); a trial of a
    process that died is marked failed by its heartbeat, and its slot is run again.

    Returns True when stopped by ``should_stop`` (or Ctrl-C), False when the study is done.
    """
    import optuna

    running = optuna.trial.TrialState.RUNNING
    taken_states = (*finished_states(), running)

    def count(states: tuple[Any, ...]) -> int:
        return len(study.get_trials(deepcopy=False, states=states))

    worker = f"{socket.gethostname()}:{os.getpid()}"
    objective = context.objective(should_stop)
    objective.max_trials = n_trials
    stopped = []
    callbacks = []
    if n_trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=taken_states))

    allow: Callable[[], Any] = contextlib.nullcontext  # set while Optuna runs trials

    def tag_and_count(study: Any, trial: Any) -> None:
        with allow():  # a Ctrl-C held back during the trial's bookkeeping stops here
            pass
        if trial.user_attrs.get(SURPLUS):  # another process took the last slot first
            study.stop()
            return
        if trial.user_attrs.get("evaluations"):
            # what a trained model left in reference cycles (a full collection costs about a
            # second with torch and transformers loaded: not after a trial that trained nothing)
            gc.collect()
        if on_trial is not None:
            on_trial()
        if should_stop is not None and should_stop():
            stopped.append(True)
            study.stop()
        elif objective.over_budget(study, objective.epochs_per_evaluation):
            study.stop()

    def objective_tagged(trial: Any) -> Any:
        trial.set_user_attr("worker", worker)
        with allow():  # Ctrl-C stops the training at once (Optuna marks the trial failed)
            return objective(trial)

    with quiet_optuna(), quiet_training():
        while not stopped:
            if objective.over_budget(study, objective.epochs_per_evaluation):
                break
            taken = count(taken_states)
            if n_trials is not None and taken >= n_trials:
                if count(finished_states()) >= n_trials:
                    break
                # the others' last trials are running: wait for them (one whose process
                # died is failed by its heartbeat, and its slot is run here)
                try:
                    time.sleep(2.0)
                except KeyboardInterrupt:
                    return True
                if should_stop is not None and should_stop():
                    return True
                optuna.storages.fail_stale_trials(study)
                continue
            try:
                # Ctrl-C and SIGTERM are held back outside the objective: cut inside Optuna's
                # bookkeeping they leave a trial "running" for good, or the heartbeat thread
                # of the next trial started and never stopped (the process then never exits)
                with defer_signals() as allow:
                    study.optimize(
                        objective_tagged,
                        n_trials=None if n_trials is None else max(1, n_trials - taken),
                        callbacks=[*callbacks, tag_and_count],
                        gc_after_trial=False,
                        catch=(SurplusTrial,),  # marked failed, left out of the report
                    )
                allow = contextlib.nullcontext
            except KeyboardInterrupt:  # Optuna has marked the running trial failed
                return True
            if n_trials is None or context.config.sampler == "grid" or objective.exhausted:
                break  # the grid sampler stops the study when every point is drawn
    return bool(stopped)
