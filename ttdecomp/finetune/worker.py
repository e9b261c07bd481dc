"""``python -m ttdecomp.finetune.worker SPEC``: one run of a comparison in a process of its own.

Started by :class:`~ttdecomp.finetune.parallel.RunPool` (a module apart, so that running it
does not import :mod:`~ttdecomp.finetune.parallel` twice).
"""

from __future__ import annotations

import sys

from .parallel import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
