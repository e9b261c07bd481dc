"""``python -P -m ttdecomp.finetune.worker``: one run of a comparison in a process of its own.

Started by :class:`~ttdecomp.finetune.parallel.RunPool`, which writes the run's spec as JSON on
this process's stdin; the row (or the error) goes back as JSON in the file the spec names.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from ..errors import TTError
from ..runs.pool import read_spec, write_result
from .config import FinetuneConfig
from .methods import settings_from_mapping
from .run import prepare_job
from .train import TrainSettings

__all__ = ["worker_main"]


def worker_main() -> int:
    """One run in this process: ``python -P -m ttdecomp.finetune.worker`` (see RunPool)."""
    spec = read_spec()
    try:
        import torch

        if spec["threads"] is not None:
            torch.set_num_threads(spec["threads"])
        train = TrainSettings(**{**spec["train"], "bar_position": spec["slot"] + 1})
        if not train.progress:
            from transformers.utils import logging

            logging.disable_progress_bar()  # the weight-loading bar
        settings = settings_from_mapping(spec["settings"]["method"], spec["settings"])
        job = prepare_job(FinetuneConfig(**spec["config"]), progress=False)[0]
        row = job.run(settings, train, Path(spec["run_dir"]))
        write_result(spec, {"row": row})
        return 0
    except Exception as exc:  # the parent raises it again, with this process's traceback
        error = {
            "type": type(exc).__name__,
            "message": str(exc),
            "user_error": isinstance(exc, TTError),
            "traceback": traceback.format_exc(),
        }
        write_result(spec, {"error": error})
        print(json.dumps(error["message"]), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(worker_main())
