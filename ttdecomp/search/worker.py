"""One worker process of ``ttdecomp search --workers N``: ``python -P -m ttdecomp.search.worker``.

Its spec is the JSON the parent wrote on its stdin (the search configuration, output folder,
storage URL, study name, threads, the parent's pid); it dies with its parent. The worker loads
the data once, while the parent does the same; it then waits for the parent's go-ahead (the
study is created and checked; it names the number of trials), joins the study and runs trials
until the study holds that many finished ones (Optuna's ``MaxTrialsCallback``) or its epoch
budget is spent. If the parent goes first, the worker exits (status 1) without running a trial.
Ctrl-C (SIGINT, passed on by the parent) marks its running trial failed and exits with status
130. Everything it prints goes to ``.workers/worker-<i>.log``.
"""

from __future__ import annotations

from pathlib import Path

from ..runs.pool import read_spec
from .config import SearchConfig
from .context import SearchContext, run_trials
from .workers import wait_until_released

__all__ = ["main"]


def main() -> int:
    """Run the worker described by the JSON spec on stdin; return the exit status."""
    spec = read_spec()
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    config = SearchConfig.from_dict(spec["config"])
    context = SearchContext(config, Path(spec["output"]), spec["storage"], progress=False)
    go = wait_until_released(spec)
    if go is None:
        print("the search process has gone; no trial run", flush=True)
        return 1
    study = context.study(
        resume=True, create=False, name=spec["study_name"], process=int(spec["process"])
    )
    interrupted = run_trials(context, study, go["n_trials"])
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
