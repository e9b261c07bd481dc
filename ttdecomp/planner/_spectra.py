"""Spectra of the unfoldings of one weight: what the error-driven rank greedies consume."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._backend import is_torch
from ._candidates import Candidate

__all__ = ["Spectra", "as_numpy"]


def as_numpy(weight: Any) -> np.ndarray:
    """A float64/complex128 numpy copy of any backend's 2-D array."""
    if is_torch(weight):
        import torch

        w = weight.detach().cpu()
        return w.to(torch.complex128 if w.is_complex() else torch.float64).numpy()
    try:
        a = np.asarray(weight)
    except (TypeError, ValueError, RuntimeError):
        a = np.from_dlpack(weight)
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64, copy=False)


class Spectra:
    """Squared singular values of the unfoldings of one weight, computed once each."""

    def __init__(self, weight: np.ndarray) -> None:
        self.w = weight
        self.norm_sq = float(np.vdot(weight, weight).real)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def gains(self, c: Candidate) -> list[np.ndarray]:
        d = len(c.modes)
        return [
            self._unfolding(math.prod(c.row_shape[:k]), math.prod(c.col_shape[:k]))
            for k in range(1, d)
        ]

    def _unfolding(self, pm: int, pn: int) -> np.ndarray:
        key = (pm, pn)
        if key not in self._cache:
            m, n = self.w.shape
            t = self.w.reshape(pm, m // pm, pn, n // pn).transpose(0, 2, 1, 3)
            x = t.reshape(pm * pn, -1)  # the unfolding: (row-group x column-group)
            g = x @ x.conj().T if x.shape[0] <= x.shape[1] else x.conj().T @ x
            ev = np.linalg.eigvalsh(g)[::-1]
            # eigenvalues within the round-off of the Gram's eigen-decomposition are zeros:
            # an exactly low-rank unfolding (a Kronecker product, say) must show no gain
            # beyond its rank, or the greedies would spend the budget on noise
            noise = float(ev[0]) * g.shape[0] * 8 * np.finfo(np.float64).eps if ev.size else 0.0
            ev = np.where(ev > noise, ev, 0.0)
            scale = self.norm_sq if self.norm_sq > 0 else 1.0
            self._cache[key] = ev / scale
        return self._cache[key]
