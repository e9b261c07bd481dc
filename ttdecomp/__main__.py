"""``python -m ttdecomp``: the ``ttdecomp`` command."""

from ttdecomp.cli import main

raise SystemExit(main())
