"""The one process pool of ``ttdecomp finetune --jobs`` and ``ttdecomp search --workers``.

A worker is a fresh interpreter started as ``python -P -m <module>``: ``-P`` keeps the folder
the user runs from off ``sys.path`` (a ``json.py`` or ``pickle.py`` there is never imported),
while ``PYTHONPATH`` is honoured. Its spec is one JSON object written to its stdin (never a
pickle, never a file a third party could swap), read by :func:`read_spec`, which also makes
the worker die with its parent (``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread that
notices a new parent process everywhere). Its result, if it has one, is a JSON file it writes
atomically where the spec says.

:class:`WorkerPool` runs a queue of workers ``jobs`` at a time; a worker killed by a signal
(the out-of-memory killer's SIGKILL) is reported in one line (:func:`describe_exit`) while its
siblings finish. :func:`stop_on_signals` turns SIGTERM into what Ctrl-C does, so ``timeout``, a
CI cancel or ``kill`` stop a command and its workers as cleanly as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .._files import read_json, write_json
from ..errors import TTError

__all__ = [
    "RunFailedError",
    "WorkerExit",
    "WorkerPool",
    "cpu_cores",
    "defer_signals",
    "describe_exit",
    "die_with_parent",
    "read_spec",
    "start_worker",
    "stop_on_signals",
    "worker_command",
    "write_result",
]


class RunFailedError(TTError, RuntimeError):
    """Runs that ended without a result (killed by a signal); their siblings' rows are kept.

    Examples
    --------
    >>> from ttdecomp.errors import TTError
    >>> isinstance(RunFailedError("run (lora, 0) was killed by signal 9"), TTError)
    True
    """


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one).

    Examples
    --------
    >>> cpu_cores() >= 1
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_command(module: str) -> list[str]:
    """``[python, "-P", "-m", module]``: the working folder is not on the worker's path.

    Examples
    --------
    >>> worker_command("ttdecomp.finetune.worker")[1:]
    ['-P', '-m', 'ttdecomp.finetune.worker']
    """
    return [sys.executable, "-P", "-m", module]


def start_worker(
    module: str,
    spec: Mapping[str, Any],
    *,
    threads: int | None = None,
    stdout: IO[Any] | int | None = None,
    new_session: bool = True,
) -> subprocess.Popen:
    """Start ``python -P -m module`` with ``spec`` (plus this process's pid) as JSON on stdin.

    The environment is this process's (the user's ``HF_HUB_OFFLINE`` and the rest decide), with
    ``OMP_NUM_THREADS`` set to ``threads`` when given. ``new_session``: the terminal's Ctrl-C
    reaches this process only, which decides and stops the workers. ``stdout``: where the
    worker's output goes (stderr follows it when given).

    Examples
    --------
    A worker module reads its spec with :func:`read_spec` and answers with
    :func:`write_result`:

    >>> proc = start_worker("my_package.my_worker", {"x": 1, "result": "r.json"})  # doctest: +SKIP
    >>> proc.wait()  # doctest: +SKIP
    0
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    payload = json.dumps({**spec, "parent": os.getpid()}, allow_nan=False).encode()
    proc = subprocess.Popen(
        worker_command(module),
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        env=env,
        start_new_session=new_session,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:  # it died at once; its exit status says why
        pass
    return proc


def die_with_parent(parent: int, poll: float = 1.0) -> None:
    """End this process when process ``parent`` (the one that started it) ends.

    On Linux the kernel sends SIGTERM at the parent's death (``PR_SET_PDEATHSIG``); a daemon
    thread also checks every ``poll`` seconds that the parent is still ours (other systems,
    and a parent that died before this was called).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5 * poll)
                os._exit(1)

    threading.Thread(target=watch, name="ttdecomp-parent-watchdog", daemon=True).start()


def read_spec(stream: IO[bytes] | None = None) -> dict[str, Any]:
    """In a worker: the JSON spec on stdin; from now on the worker dies with its parent.

    Examples
    --------
    >>> spec = read_spec()  # doctest: +SKIP
    >>> write_result(spec, {"answer": spec["x"] + 1})  # doctest: +SKIP
    """
    data = (stream or sys.stdin.buffer).read()
    spec = json.loads(data.decode())
    if not isinstance(spec, dict) or not isinstance(spec.get("parent"), int):
        raise SystemExit("ttdecomp worker: stdin holds no worker spec (ttdecomp starts workers).")
    die_with_parent(spec["parent"])
    return spec


def describe_exit(label: str, returncode: int) -> str:
    """One line for a worker that ended without its result.

    Examples
    --------
    >>> describe_exit("run (tt-lora, 0)", -9)
    'run (tt-lora, 0) was killed by signal 9 (SIGKILL) — out of memory?'
    >>> describe_exit("search worker 1", 3)
    'search worker 1 exited with status 3 without a result'
    """
    if returncode < 0:
        number = -returncode
        try:
            name = f" ({signal.Signals(number).name})"
        except ValueError:
            name = ""
        hint = " — out of memory?" if number == signal.SIGKILL else ""
        return f"{label} was killed by signal {number}{name}{hint}"
    return f"{label} exited with status {returncode} without a result"


@dataclass
class WorkerExit:
    """A finished worker: its key and label, exit status, and the JSON result it wrote
    (``None`` when it wrote none).

    Examples
    --------
    >>> WorkerExit(("lora", 0), "run (lora, 0)", -9, None).describe()
    'run (lora, 0) was killed by signal 9 (SIGKILL) — out of memory?'
    """

    key: Any
    label: str
    returncode: int
    result: Any

    @property
    def killed(self) -> bool:
        """Ended by a signal (or without writing a result)."""
        return self.result is None

    def describe(self) -> str:
        """:func:`describe_exit` of this worker."""
        return describe_exit(self.label, self.returncode)


class WorkerPool:
    """Workers ``jobs`` at a time: each ``python -P -m module`` with its JSON spec on stdin.

    Use it as a context manager: leaving the block (normally, by an error, Ctrl-C or SIGTERM)
    stops every worker still running (``stop_signal``, then SIGKILL after ``grace`` seconds).

    Parameters
    ----------
    jobs : int
        Workers at once.
    stop_signal : signal number
        What :meth:`stop` sends first (SIGTERM; SIGINT lets a search worker mark its trial).
    grace : float
        Seconds a stopped worker has before it is killed.

    Examples
    --------
    >>> import sys, tempfile
    >>> out = Path(tempfile.mkdtemp()) / "result.json"
    >>> with WorkerPool(1) as pool:  # doctest: +SKIP
    ...     pool.submit("a", "my.worker", {"x": 1}, result=out)
    ...     [w.result for w in pool.results()]
    """

    def __init__(
        self, jobs: int, *, stop_signal: int = signal.SIGTERM, grace: float = 30.0
    ) -> None:
        self.jobs, self.stop_signal, self.grace = jobs, stop_signal, grace
        self._queue: list[dict[str, Any]] = []
        self._running: dict[int, tuple[dict[str, Any], subprocess.Popen]] = {}

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def processes(self) -> list[subprocess.Popen]:
        """The workers running now."""
        return [proc for _, proc in self._running.values()]

    def submit(
        self,
        key: Any,
        module: str,
        spec: Mapping[str, Any],
        *,
        label: str | None = None,
        result: str | os.PathLike | None = None,
        threads: int | None = None,
        log: str | os.PathLike | None = None,
    ) -> None:
        """Queue a worker. ``spec`` gets ``"slot"`` (its place among those running) and
        ``"result"`` (the file it writes its JSON result to, removed here once read)."""
        self._queue.append(
            {
                "key": key,
                "module": module,
                "spec": dict(spec),
                "label": label or f"worker {key}",
                "result": None if result is None else Path(result),
                "threads": threads,
                "log": None if log is None else Path(log),
            }
        )

    def start_all(self) -> None:
        """Start the queued workers now, as many as there are free slots."""
        for slot in range(self.jobs):
            if slot not in self._running and self._queue:
                self._start(slot)

    def _start(self, slot: int) -> None:
        item = self._queue.pop(0)
        spec = {**item["spec"], "slot": slot}
        if item["result"] is not None:
            item["result"].unlink(missing_ok=True)
            spec["result"] = str(item["result"])
        if item["log"] is not None:
            with open(item["log"], "w") as log:
                proc = start_worker(item["module"], spec, threads=item["threads"], stdout=log)
        else:
            proc = start_worker(item["module"], spec, threads=item["threads"])
        self._running[slot] = (item, proc)

    def results(
        self, poll: float = 0.2, on_idle: Callable[[], None] | None = None
    ) -> Iterator[WorkerExit]:
        """Each worker as it ends, with its result; ``on_idle()`` is called between polls."""
        while self._queue or self._running:
            self.start_all()
            finished = [s for s, (_i, p) in self._running.items() if p.poll() is not None]
            if not finished:
                if on_idle is not None:
                    on_idle()
                time.sleep(poll)
                continue
            for slot in finished:
                item, proc = self._running.pop(slot)
                result = None
                path = item["result"]
                if path is not None and path.exists():
                    result = read_json(path, what="a worker's result")
                    path.unlink(missing_ok=True)
                yield WorkerExit(item["key"], item["label"], proc.returncode, result)

    def stop(self) -> None:
        """Stop every running worker (``stop_signal``, then SIGKILL after ``grace`` s); drop
        the queue."""
        self._queue.clear()
        procs = self.processes
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signal)
        deadline = time.monotonic() + self.grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._running.clear()


def write_result(spec: Mapping[str, Any], result: Any) -> None:
    """In a worker: hand ``result`` (JSON) back to the pool, atomically.

    Examples
    --------
    >>> import tempfile, json
    >>> spec = {"result": Path(tempfile.mkdtemp()) / "result.json"}
    >>> write_result(spec, {"row": {"acc": 0.9}})
    >>> json.loads(spec["result"].read_text())
    {'row': {'acc': 0.9}}
    """
    write_json(spec["result"], result)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` here; yields ``should_stop()``.

    ``should_stop()`` stays true after the first signal, so a loop that Python kept running
    (a ``KeyboardInterrupt`` raised inside a finalizer is dropped) still stops at its next
    check. The previous handlers are restored on leaving. Main thread only.

    Examples
    --------
    >>> with stop_on_signals() as should_stop:
    ...     should_stop()
    False
    """
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(seen)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def defer_signals() -> Iterator[Callable[[], contextlib.AbstractContextManager[None]]]:
    """Hold SIGINT and SIGTERM back here, except inside the ``allow()`` blocks it yields.

    Code that must not be cut in the middle (a library's bookkeeping that starts a thread and
    stops it in a ``with`` block: Optuna's trial heartbeat, whose thread outlives a
    ``KeyboardInterrupt`` raised between its start and the block's entry and keeps the
    process from exiting) runs with the signals held; the work that may stop at any point
    runs inside ``with allow():``. A signal held back is handed to the handler it would have
    reached (the previous Python handler: :func:`stop_on_signals`' or Python's own
    ``KeyboardInterrupt``) on entering the next ``allow()`` block, or on leaving this one
    normally. Signals whose handler is not a Python function (the system default, ignored)
    are left as they are; outside the main thread nothing is changed.

    Examples
    --------
    >>> import os, signal
    >>> with defer_signals() as allow:
    ...     os.kill(os.getpid(), signal.SIGINT)  # held back: no KeyboardInterrupt here
    ...     try:
    ...         with allow():  # handed on at the block's entry
    ...             pass
    ...     except KeyboardInterrupt:
    ...         print("stopped inside allow()")
    stopped inside allow()
    """
    if threading.current_thread() is not threading.main_thread():
        yield contextlib.nullcontext
        return
    previous = {s: h for s in (signal.SIGINT, signal.SIGTERM) if callable(h := signal.getsignal(s))}
    pending: list[int] = []
    inside = [0]

    def hand_on() -> None:
        if pending:
            signum = pending[0]
            pending.clear()
            previous[signum](signum, None)

    def handler(signum: int, frame: Any) -> None:
        if inside[0]:
            previous[signum](signum, frame)
        else:
            pending.append(signum)

    @contextlib.contextmanager
    def allow() -> Iterator[None]:
        inside[0] += 1
        try:
            hand_on()
            yield
        finally:
            inside[0] -= 1

    for s in previous:
        signal.signal(s, handler)
    try:
        yield allow
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    hand_on()
