"""Independent (method, seed) runs side by side, one process each: ``finetune(jobs=N)``.

A comparison is a set of runs that share nothing but their inputs, so on a CPU they are best
run as separate processes with few threads each: one process with N threads leaves cores idle
in every small or serial step of a training step (layer norms, softmaxes, the Python between
kernels, the optimizer), while N one-thread processes keep every core on its own GEMMs.
:func:`plan_jobs` decides how many processes and threads; :class:`RunPool` runs them.

Each run is a fresh ``python -P`` process of :class:`ttdecomp.runs.WorkerPool` (the one pool
of ``finetune`` and ``search``): it reads its spec as JSON on stdin, loads the model folder, data
and tokenizer (:func:`~ttdecomp.finetune.run.prepare_job`, the same function the sequential
path uses), trains its (method, seed) and hands back its row. Runs do not see Ctrl-C: the
parent decides, ends them, and keeps every row that finished (the caller saves each row as it
arrives). A run killed by a signal is reported in one line and its siblings finish.
Results are those of the same runs made one after another with the same number of threads;
only their order of completion differs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..runs.pool import RunFailedError, WorkerPool, cpu_cores

__all__ = ["RunPool", "cpu_cores", "plan_jobs"]


def plan_jobs(
    runs: int,
    *,
    jobs: int | None = None,
    threads: int | None = None,
    device: str = "cpu",
    world_size: int = 1,
    cores: int | None = None,
) -> tuple[int, int | None]:
    """How many runs to make at once, and torch threads per run: ``(jobs, threads)``.

    ``jobs=N`` makes up to N runs at once (never more than there are runs), each with
    ``threads`` threads, by default the cores shared out; ``jobs=1`` is one run at a time
    (``threads`` as given; ``None`` in the result means "leave torch's setting alone").
    ``jobs=None`` (the default) makes two runs at once on a CPU with at least two cores when
    there are at least two runs and one process (not under ``torchrun``, not on a GPU), and
    one at a time otherwise. Measured on 2 cores with chunked batches, the default comparison
    (two runs) took 311 s as two one-thread processes side by side; one two-thread process
    after the other took 438 s before the chunked batches (whose small chunks suit one
    thread best).

    Examples
    --------
    >>> plan_jobs(2, cores=2)  # the default on 2 cores: side by side, one thread each
    (2, 1)
    >>> plan_jobs(2, jobs=1, cores=2)  # one at a time
    (1, None)
    >>> plan_jobs(2, cores=2, device="cuda")  # a GPU: one at a time
    (1, None)
    >>> plan_jobs(6, jobs=4, cores=16, threads=2)
    (4, 2)
    >>> plan_jobs(3, jobs=3, cores=12)
    (3, 4)
    """
    cores = cpu_cores() if cores is None else cores
    for value, flag in ((jobs, "--jobs"), (threads, "--threads")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInputError(f"{flag} must be a positive integer; got {value!r}.")
        if value is not None and value < 1:
            raise InvalidInputError(f"{flag} must be >= 1; got {value}.")
    if jobs is not None and jobs > 1 and world_size > 1:
        raise InvalidInputError(
            f"--jobs {jobs} runs several fine-tunings side by side in one command, which a "
            f"{world_size}-process torchrun job cannot; drop --jobs under torchrun."
        )
    if jobs is None:
        if device != "cpu" or world_size > 1 or cores < 2 or runs < 2:
            return 1, threads
        jobs = 2
    jobs = max(1, min(jobs, runs))
    if jobs == 1:
        return 1, threads
    return jobs, threads or max(1, cores // jobs)


def _to_json(value: Any) -> Any:
    """A dataclass (FinetuneConfig, MethodSettings, TrainSettings) as JSON fields."""
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


class RunPool:
    """Fine-tuning runs made ``jobs`` at a time, each in a fresh ``python -P`` process.

    A run's process loads :func:`~ttdecomp.finetune.run.prepare_job`'s job (model folder,
    data, tokenizer) for ``config``, trains one (method, seed) with ``threads`` torch threads,
    writes its row and exits. Everything it is given travels as JSON on its stdin (no
    pickle). Fresh interpreters (not ``multiprocessing``) so that the caller's script is never
    imported again in a worker, whatever it guards. Use it as a context manager: leaving the
    block (normally, by an error, Ctrl-C or SIGTERM) ends every run still going.

    Parameters
    ----------
    config : FinetuneConfig
        What every run loads.
    jobs : int
        Runs at once.
    threads : int or None
        torch threads per run (``None``: torch's default).
    on_killed : callable, optional
        Receives the one-line report of a run killed by a signal (its siblings go on);
        :meth:`results` raises :class:`~ttdecomp.runs.RunFailedError` naming every such
        run once the others have finished.

    Examples
    --------
    >>> with RunPool(config, 2, 1) as pool:  # doctest: +SKIP
    ...     pool.submit(("lora", 0), settings, train, "out/runs/lora-seed0")
    ...     for key, row in pool.results():
    ...         print(key, row["test_accuracy"])
    """

    def __init__(
        self,
        config: Any,
        jobs: int,
        threads: int | None,
        *,
        on_killed: Callable[[str], None] | None = None,
    ) -> None:
        self.config, self.jobs, self.threads = config, jobs, threads
        self.on_killed = on_killed
        self._pool = WorkerPool(jobs)

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.stop()

    def submit(self, key: Any, settings: Any, train: Any, run_dir: str | os.PathLike) -> None:
        """Queue one run; its row comes back from :meth:`results` under ``key``."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "config": _to_json(self.config),
            "settings": settings.to_dict(),
            "train": _to_json(train),
            "run_dir": str(run_dir),
            "threads": self.threads,
        }
        label = (
            "run (" + ", ".join(str(k) for k in key) + ")"
            if isinstance(key, tuple)
            else f"run {key}"
        )
        self._pool.submit(
            key,
            "ttdecomp.finetune.worker",
            spec,
            label=label,
            result=run_dir / _ROW_FILE,
            threads=self.threads,
        )

    def results(self, poll: float = 0.2) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``(key, row)`` of each run as it finishes; a run's error is raised here."""
        killed = []
        for done in self._pool.results(poll):
            result = done.result or {}
            if "row" in result and done.returncode == 0:
                yield done.key, result["row"]
                continue
            error = result.get("error")
            if error and error["user_error"]:
                raise InvalidInputError(error["message"])
            if error:
                raise RuntimeError(
                    f"the {done.label} failed in its process (exit status {done.returncode}):\n"
                    f"{error['traceback']}"
                )
            killed.append(done.describe())
            if self.on_killed is not None:
                self.on_killed(killed[-1])
        if killed:
            raise RunFailedError(
                "; ".join(killed)
                + "; the other runs finished and their rows are kept. Run the same command "
                "with --resume to finish the rest."
            )


_ROW_FILE = ".run_result.json"
