"""What a run of ``ttdecomp finetune`` or ``ttdecomp search`` stands on: its output folder and
its worker processes.

- :mod:`ttdecomp.runs.folder`: the output folder: checked before any model loads, every file
  and folder a run writes recorded in its results document, ``--overwrite`` deleting only what
  the previous run recorded, ``--resume`` checking the document it continues.
- :mod:`ttdecomp.runs.pool`: the one process pool: workers started with a safe path, their
  spec as JSON on stdin, dying with their parent; a worker killed by a signal reported in one
  line while its siblings finish.
"""

from __future__ import annotations

from .folder import OutputFolder, check_output
from .pool import (
    RunFailedError,
    WorkerExit,
    WorkerPool,
    cpu_cores,
    defer_signals,
    describe_exit,
    read_spec,
    start_worker,
    stop_on_signals,
    write_result,
)

__all__ = [
    "OutputFolder",
    "RunFailedError",
    "WorkerExit",
    "WorkerPool",
    "check_output",
    "cpu_cores",
    "defer_signals",
    "describe_exit",
    "read_spec",
    "start_worker",
    "stop_on_signals",
    "write_result",
]
