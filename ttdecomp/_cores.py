"""Properties shared by :class:`~ttdecomp.TensorTrain` and :class:`~ttdecomp.TTMatrix`."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from .errors import ShapeError

__all__: list[str] = []

#: Largest dense tensor :meth:`full` forms unless told otherwise (2^30 entries: 4 GiB in
#: float32, 8 GiB in float64). Pass ``max_entries=None`` to lift the guard.
FULL_MAX_ENTRIES = 2**30


class CoreTrain:
    """A list of cores ``(r_{k-1}, ..., r_k)`` with boundary ranks 1 (validated by subclasses)."""

    cores: list[Any]
    error_bound: float | None

    @property
    def ndim(self) -> int:
        """Number of cores ``d``."""
        return len(self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """TT ranks ``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1,) + tuple(int(c.shape[-1]) for c in self.cores)

    @property
    def n_params(self) -> int:
        """Numbers stored: the sum of the core sizes (``Σ r_{k-1} · modes_k · r_k``)."""
        return sum(math.prod(c.shape) for c in self.cores)

    @property
    def dtype(self) -> Any:
        """The cores' dtype."""
        return self.cores[0].dtype

    @property
    def device(self) -> Any:
        """The cores' device."""
        return array_api_compat.device(self.cores[0])

    def _check_full_size(self, max_entries: int | None) -> None:
        """Refuse to densify beyond ``max_entries`` entries, before any work."""
        size = math.prod(self.shape)  # type: ignore[attr-defined]
        if max_entries is None or size <= max_entries:
            return
        xp = array_api_compat.array_namespace(self.cores[0])
        complex_ = xp.isdtype(self.dtype, "complex floating")
        itemsize = xp.finfo(self.dtype).bits // 8 * (2 if complex_ else 1)
        raise ShapeError(
            f"full() would form a dense tensor of shape {self.shape} "  # type: ignore[attr-defined]
            f"with {size:,} entries ({size * itemsize / 2**30:,.1f} GiB in {self.dtype}), above "
            f"max_entries={max_entries:,}. Work in TT form (norm, dot, indexing, apply), or "
            "pass max_entries=None (or a larger limit) if you mean it."
        )

    def _bound_repr(self) -> str:
        return "" if self.error_bound is None else f", error_bound={self.error_bound:.3g}"
