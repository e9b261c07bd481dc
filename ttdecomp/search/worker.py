"""One worker process of ``ttdecomp search --workers N``: ``python -m ttdecomp.search.worker SPEC``.

``SPEC`` is the JSON file the parent wrote (the search configuration, output folder, storage
URL, study name, number of trials, threads). The worker loads the data once, joins the study
and runs trials until the study holds the asked number of finished ones (Optuna's
``MaxTrialsCallback``); Ctrl-C (SIGINT, passed on by the parent) marks its running trial
failed and exits with status 130. Everything it prints goes to ``.workers/worker-<i>.log``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import SearchConfig
from .context import SearchContext, run_trials

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the worker described by the spec file ``argv[0]``; return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    config = SearchConfig.from_dict(spec["config"])
    context = SearchContext(config, Path(spec["output"]), spec["storage"], progress=False)
    study = context.study(resume=True, create=False, name=spec["study_name"])
    interrupted = run_trials(context, study, int(spec["n_trials"]))
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
