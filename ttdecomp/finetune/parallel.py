"""Independent (method, seed) runs side by side, one process each: ``finetune(jobs=N)``.

A comparison is a set of runs that share nothing but their inputs, so on a CPU they are best
run as separate processes with few threads each: one process with N threads leaves cores idle
in every small or serial step of a training step (layer norms, softmaxes, the Python between
kernels, the optimizer), while N one-thread processes keep every core on its own GEMMs.
:func:`plan_jobs` decides how many processes and threads; :class:`RunPool` runs them.

Each run is a fresh ``python`` process that loads the model folder, data and tokenizer
(``prepare``, the same function the sequential path uses), trains its (method, seed) and hands
back its row. Runs do not see Ctrl-C: the parent decides, ends them, and keeps every row that
finished (the caller saves each row as it arrives). Results are those of the same runs made
one after another with the same number of threads; only their order of completion differs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

__all__ = ["RunPool", "cpu_cores", "plan_jobs"]


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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


def worker_main(spec_path: str) -> int:
    """One run in this process: ``python -m ttdecomp.finetune.worker SPEC`` (see RunPool)."""
    import importlib
    import json
    import pickle
    import traceback

    from .report import write_json_atomic

    spec_file = Path(spec_path)
    with open(spec_file, "rb") as f:
        spec = pickle.load(f)  # written by RunPool.submit in the parent, a moment ago
    out = spec_file.with_name(_ROW_FILE)
    try:
        import torch

        if spec["threads"] is not None:
            torch.set_num_threads(spec["threads"])
        if not spec["train"].progress:
            from transformers.utils import logging

            logging.disable_progress_bar()  # the weight-loading bar
        module, _, name = spec["prepare"].partition(":")
        prepare = getattr(importlib.import_module(module), name)
        job = prepare(spec["config"], progress=False)[0]
        train = replace(spec["train"], bar_position=spec["slot"] + 1)
        row = job.run(spec["settings"], train, Path(spec["run_dir"]))
        write_json_atomic(out, {"row": row})
        return 0
    except Exception as exc:  # the parent raises it again, with this process's traceback
        from ..errors import TTError

        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "user_error": isinstance(exc, TTError),
            "traceback": traceback.format_exc(),
        }
        write_json_atomic(out, {"error": error})
        print(json.dumps(error["message"]), file=sys.stderr)
        return 1


class RunPool:
    """Runs made ``jobs`` at a time, each in a fresh ``python`` process of its own.

    A run's process loads ``prepare(config)``'s job (model folder, data, tokenizer), trains
    one (method, seed) with ``threads`` torch threads, writes its row and exits. Fresh
    interpreters (not ``multiprocessing``) so that the caller's script is never imported
    again in a worker, whatever it guards. Use it as a context manager: leaving the block
    (normally, by an error or by Ctrl-C) ends every run still going.

    Parameters
    ----------
    prepare : str
        ``"module:function"``; ``function(config, progress=False) -> (job, ...)`` and
        ``job.run(settings, train, run_dir)`` returns the run's row (JSON-serialisable).
    config : object
        What ``prepare`` takes (picklable).
    jobs : int
        Runs at once.
    threads : int or None
        torch threads per run (``None``: torch's default).

    Examples
    --------
    >>> with RunPool("ttdecomp.finetune.run:prepare_job", config, 2, 1) as pool:  # doctest: +SKIP
    ...     pool.submit(("lora", 0), settings, train, "out/runs/lora-seed0")
    ...     for key, row in pool.results():
    ...         print(key, row["test_accuracy"])
    """

    def __init__(self, prepare: str, config: Any, jobs: int, threads: int | None) -> None:
        self.prepare, self.config, self.jobs, self.threads = prepare, config, jobs, threads
        self._queue: list[tuple[Any, Any, Any, Path]] = []
        self._running: dict[int, tuple[Any, Path, Any]] = {}  # slot -> (key, run_dir, process)

    def __enter__(self) -> RunPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for _key, _run_dir, proc in self._running.values():
            if proc.poll() is None:
                proc.terminate()
        for _key, _run_dir, proc in self._running.values():
            try:
                proc.wait(timeout=30)
            except Exception:
                proc.kill()
        self._running.clear()

    def submit(self, key: Any, settings: Any, train: Any, run_dir: str | os.PathLike) -> None:
        """Queue one run; its row comes back from :meth:`results` under ``key``."""
        self._queue.append((key, settings, train, Path(run_dir)))

    def _start(self, slot: int) -> None:
        import pickle
        import subprocess

        key, settings, train, run_dir = self._queue.pop(0)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / _ROW_FILE).unlink(missing_ok=True)
        spec = {
            "prepare": self.prepare,
            "config": self.config,
            "settings": settings,
            "train": train,
            "run_dir": str(run_dir),
            "threads": self.threads,
            "slot": slot,
        }
        spec_path = run_dir / _SPEC_FILE
        with open(spec_path, "wb") as f:
            pickle.dump(spec, f)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ttdecomp.finetune.worker", str(spec_path)],
            env=env,
            stdin=subprocess.DEVNULL,
            # SIGINT from the terminal reaches the parent only: it decides and ends the runs
            start_new_session=True,
        )
        self._running[slot] = (key, run_dir, proc)

    def results(self, poll: float = 0.2) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``(key, row)`` of each run as it finishes; a run's error is raised here."""
        import json
        import time

        while self._queue or self._running:
            for slot in range(self.jobs):
                if slot not in self._running and self._queue:
                    self._start(slot)
            finished = [s for s, (_k, _d, p) in self._running.items() if p.poll() is not None]
            if not finished:
                time.sleep(poll)
                continue
            for slot in finished:
                key, run_dir, proc = self._running.pop(slot)
                (run_dir / _SPEC_FILE).unlink(missing_ok=True)
                result_file = run_dir / _ROW_FILE
                result = json.loads(result_file.read_text()) if result_file.exists() else {}
                result_file.unlink(missing_ok=True)
                if "row" in result and proc.returncode == 0:
                    yield key, result["row"]
                    continue
                error = result.get("error")
                if error and error["user_error"]:
                    raise InvalidInputError(error["message"])
                detail = error["traceback"] if error else "it wrote no result"
                raise RuntimeError(
                    f"the run {key} failed in its process (exit status {proc.returncode}):\n"
                    f"{detail}"
                )


_SPEC_FILE = ".run_spec.pkl"
_ROW_FILE = ".run_result.json"
