"""Mixed-adapter batches: each row of a batch through its own adapter, in one forward.

``model(**batch, adapter_names=[...])`` and ``model.generate(..., adapter_names=[...])`` of
:class:`~ttdecomp.adapters.TTAdapterModel` give one adapter name per row (``"__base__"``,
:data:`BASE_ADAPTER`, for the base model alone). The model builds one :class:`Routing` for the
call and hands it to every adapter layer for its duration. A layer then runs the base layer once
on the whole batch and each adapter *present in the batch* once, on its rows
(``index_select`` → adapter → ``index_add``), so the cost grows with the adapters the batch
uses, not with those loaded. Rows of one adapter are grouped however they are ordered; a batch
that uses a single adapter takes the plain path with no indexing.

``generate`` with ``num_beams`` or ``num_return_sequences`` repeats each row
(``repeat_interleave``); a layer that sees ``k`` times the routed rows maps row ``i`` to
rows ``i·k … i·k + k − 1``.

Mixed batches are for inference: merged adapters are refused (their ΔW is in the shared
weight), and so is training under gradient checkpointing (the recomputed forward would not be
routed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InvalidInputError, ShapeError

__all__ = ["BASE_ADAPTER", "Routing", "check_not_merged", "route_rows"]

#: The name that routes a row to the base model alone (no adapter), as in PEFT.
BASE_ADAPTER = "__base__"


class Routing:
    """The rows of one batch grouped by adapter name.

    Parameters
    ----------
    adapter_names : sequence of str
        One name per row (``"__base__"`` for none), already validated by the model.

    Examples
    --------
    >>> r = Routing(["a", "__base__", "a", "b"])
    >>> [(name, None if idx is None else idx.tolist()) for name, idx in r.groups(4, "cpu")]
    [('a', [0, 2]), ('__base__', [1]), ('b', [3])]
    >>> [idx.tolist() for _, idx in r.groups(8, "cpu")]  # two beams per row
    [[0, 1, 4, 5], [2, 3], [6, 7]]
    >>> Routing(["a", "a"]).groups(2, "cpu")
    [('a', None)]
    """

    __slots__ = ("_cache", "_rows_of", "names", "rows")

    def __init__(self, adapter_names: Sequence[str]) -> None:
        self.names = list(adapter_names)
        self.rows = len(self.names)
        self._rows_of: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            self._rows_of.setdefault(name, []).append(i)
        self._cache: dict[tuple[int, str], list[tuple[str, torch.Tensor | None]]] = {}

    @property
    def present(self) -> list[str]:
        """The distinct names in the batch, in order of first appearance."""
        return list(self._rows_of)

    def groups(
        self, rows: int, device: torch.device | str
    ) -> list[tuple[str, torch.Tensor | None]]:
        """``[(name, row indices), ...]`` for an input of ``rows`` rows on ``device``.

        The indices are ``None`` when every row uses the same adapter.
        """
        key = (int(rows), str(device))
        groups = self._cache.get(key)
        if groups is not None:
            return groups
        if rows % self.rows:
            raise ShapeError(
                f"a layer received {rows} rows but adapter_names has {self.rows} entries (one "
                "per row of the batch); give one adapter name per row of input_ids."
            )
        repeat = rows // self.rows
        if len(self._rows_of) == 1:
            groups = [(self.names[0], None)]
        else:
            step = torch.arange(repeat)
            groups = [
                (name, (torch.tensor(ix)[:, None] * repeat + step).reshape(-1).to(device))
                for name, ix in self._rows_of.items()
            ]
        self._cache[key] = groups
        return groups


def check_not_merged(layer_name: str, merged: Sequence[str]) -> None:
    """Refuse a mixed batch through a layer that holds merged adapters."""
    if merged:
        raise InvalidInputError(
            f"adapter_names routes rows to separate adapters, but layer {layer_name} has "
            f"{list(merged)} merged into its weight, which every row would get. Call "
            "model.unmerge_adapter() first (merge only to serve a single adapter)."
        )


def route_rows(
    y: torch.Tensor,
    x: torch.Tensor,
    routing: Routing,
    adapter: Callable[[str], Any],
    run: Any,
) -> torch.Tensor:
    """Add to ``y`` (base output) each present adapter's output on its own rows.

    ``adapter(name)`` gives what runs an adapter (its module, or a packed adapter's runner;
    ``None`` for a name the layer lacks: those rows, and ``"__base__"`` rows, stay as the base
    computed them); ``run(adapter, source)`` returns the adapter's
    contribution for the rows in ``source`` (cast here to ``y``'s dtype), with ``source`` drawn
    from ``x`` (parallel adapters) or ``y`` (sequential ones).
    """
    out = None  # one copy of y that every adapter adds its rows into
    for name, idx in routing.groups(int(x.shape[0]), x.device):
        runner = None if name == BASE_ADAPTER else adapter(name)
        if runner is None:
            continue
        source = x if runner.kind == "parallel" else y  # y: the base output, never modified
        if idx is None:
            return y + run(runner, source).to(y.dtype)  # every row uses this adapter
        if out is None:
            out = y.clone()
        out.index_add_(0, idx, run(runner, source.index_select(0, idx)).to(y.dtype))
    return y if out is None else out
