"""Worker processes of ``--workers N`` and the study's one progress bar.

``--workers N`` runs trials in this process and in ``N - 1`` worker processes started
before this one loads anything, so their start-up (imports, data, tokenising, the model's
skeleton) overlaps this process's; they wait for the study to be created or checked here
before they run a trial.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import write_json
from ..runs.pool import RunFailedError, WorkerPool
from .config import SearchConfig
from .study import finished_states, trial_counts

__all__ = [
    "ProgressBar",
    "release_workers",
    "spawn_workers",
    "stop_workers",
    "wait_until_released",
    "wait_workers",
]


class ProgressBar:
    """The one progress bar: finished trials of ``total``, with pruned, running and best."""

    def __init__(self, enabled: bool, total: int, study: Any, larger_is_better: bool) -> None:
        self.study, self.larger = study, larger_is_better
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="search", unit="trial")
            self.refresh()

    def refresh(self) -> None:
        if self.bar is None:
            return
        counts = trial_counts(self.study)
        values = [
            t.values[0]
            for t in self.study.get_trials(deepcopy=False, states=finished_states()[:1])
            if t.values
        ]
        best = (max if self.larger else min)(values) if values else None
        self.bar.n = counts["complete"] + counts["pruned"]
        post = {"pruned": counts["pruned"], "running": counts["running"]}
        if best is not None:
            post["best"] = f"{best:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.refresh()
            self.bar.close()


READY_FILE = "ready.json"


def spawn_workers(
    config: SearchConfig,
    output: Path,
    storage_url: str,
    study_name: str,
    workers: int,
    threads: int | None,
) -> WorkerPool:
    """Start ``workers`` worker processes now; they load the job while this process does.

    Each worker (of :class:`ttdecomp.runs.WorkerPool`, the pool ``finetune --jobs`` uses too)
    builds its own :class:`~ttdecomp.search.context.SearchContext`, then waits for
    :func:`release_workers` (this process has created or checked the study) before it runs a
    trial; a worker whose parent has gone exits without running any. Stopping the pool passes
    Ctrl-C (SIGINT) on, so each worker marks its running trial failed (killed after 120 s).
    """
    pool = WorkerPool(workers, stop_signal=signal.SIGINT, grace=120.0)
    if workers < 1:
        return pool
    folder = output / ".workers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / READY_FILE).unlink(missing_ok=True)
    spec = {
        "config": config.to_dict(),
        "output": str(output),
        "storage": storage_url,
        "study_name": study_name,
        "threads": threads,
        "ready": str(folder / READY_FILE),
    }
    for i in range(workers):
        pool.submit(
            i,
            "ttdecomp.search.worker",
            {**spec, "process": i + 1},
            label=f"search worker {i}",
            threads=threads,
            log=folder / f"worker-{i}.log",
        )
    pool.start_all()
    return pool


def release_workers(output: Path, n_trials: int | None) -> None:
    """Let the waiting workers run trials, until the study holds ``n_trials`` finished ones."""
    write_json(output / ".workers" / READY_FILE, {"n_trials": n_trials})


def wait_until_released(spec: dict[str, Any], poll: float = 0.2) -> dict[str, Any] | None:
    """In a worker: the parent's go-ahead (``{"n_trials": ...}``), or ``None`` if it has gone."""
    ready = Path(spec["ready"])
    while not ready.exists():
        if os.getppid() != spec["parent"]:
            return None
        time.sleep(poll)
    return json.loads(ready.read_text())


def stop_workers(pool: WorkerPool) -> None:
    """Pass Ctrl-C (SIGINT) on to the running workers and wait for them (then kill)."""
    pool.stop()


def wait_workers(
    pool: WorkerPool,
    bar: ProgressBar,
    should_stop: Callable[[], bool] | None,
    output: Path,
    *,
    interrupted: bool = False,
) -> bool:
    """Wait for the workers (refreshing the bar); on Ctrl-C pass it on and wait for them.

    ``interrupted``: this process was stopped already; the workers are stopped at once. A
    worker killed by a signal is reported in one line (the others finish first); one that
    failed otherwise, with the end of its log.
    """
    exits = []

    def idle() -> None:
        if should_stop is not None and should_stop():
            raise KeyboardInterrupt
        bar.refresh()

    try:
        if interrupted:
            raise KeyboardInterrupt
        for done in pool.results(poll=1.0, on_idle=idle):
            exits.append(done)
    except KeyboardInterrupt:
        interrupted = True
        pool.stop()
    failed = [e for e in exits if e.returncode not in (0, 130, -signal.SIGINT)]
    if failed and not interrupted:
        killed = [e for e in failed if e.returncode < 0]
        if killed:  # their finished trials are in the study; --resume runs the rest
            raise RunFailedError(
                "; ".join(e.describe() for e in killed)
                + "; every finished trial is kept in the study. Run the same command with "
                "--resume to finish the rest."
            )
        log = (output / ".workers" / f"worker-{failed[0].key}.log").read_text()[-2000:]
        raise RuntimeError(f"search worker {failed[0].key} failed; the end of its log:\n{log}")
    return interrupted
