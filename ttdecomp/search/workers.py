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
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import write_json
from ..runs.pool import RunFailedError, describe_exit, start_worker
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
) -> list[subprocess.Popen]:
    """Start ``workers`` worker processes now; they load the job while this process does.

    Each worker builds its own :class:`~ttdecomp.search.context.SearchContext`, then waits
    for :func:`release_workers` (this process has created or checked the study) before it
    runs a trial; a worker whose parent has gone exits without running any.
    """
    if workers < 1:
        return []
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
    procs = []
    for i in range(workers):
        with open(folder / f"worker-{i}.log", "w") as log:
            # the same session: the terminal's Ctrl-C reaches them too, as it always did
            procs.append(
                start_worker(
                    "ttdecomp.search.worker",
                    {**spec, "process": i + 1},
                    threads=threads,
                    stdout=log,
                    new_session=False,
                )
            )
    return procs


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


def stop_workers(procs: list[subprocess.Popen], timeout: float = 120.0) -> None:
    """Pass Ctrl-C (SIGINT) on to the running workers and wait for them (then kill)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_workers(
    procs: list[subprocess.Popen],
    bar: ProgressBar,
    should_stop: Callable[[], bool] | None,
    output: Path,
    *,
    interrupted: bool = False,
) -> bool:
    """Wait for the workers (refreshing the bar); on Ctrl-C pass it on and wait for them.

    ``interrupted``: this process was stopped already; the workers are stopped at once.
    """
    try:
        if interrupted:
            raise KeyboardInterrupt
        while any(p.poll() is None for p in procs):
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt
            bar.refresh()
            time.sleep(1.0)
    except KeyboardInterrupt:
        interrupted = True
        stop_workers(procs)
    failed = [i for i, p in enumerate(procs) if p.returncode not in (0, 130, -signal.SIGINT)]
    if failed and not interrupted:
        killed = [i for i in failed if procs[i].returncode < 0]
        if killed:  # its finished trials are in the study; --resume runs the rest
            raise RunFailedError(
                "; ".join(describe_exit(f"search worker {i}", procs[i].returncode) for i in killed)
                + ". Every finished trial is kept in the study; run the same command with "
                "--resume to finish the rest."
            )
        log = (output / ".workers" / f"worker-{failed[0]}.log").read_text()[-2000:]
        raise RuntimeError(f"search worker {failed[0]} failed; the end of its log:\n{log}")
    return interrupted
