"""Properties shared by :class:`~ttdecomp.TensorTrain` and :class:`~ttdecomp.TTMatrix`."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

__all__: list[str] = []


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

    def _bound_repr(self) -> str:
        return "" if self.error_bound is None else f", error_bound={self.error_bound:.3g}"
