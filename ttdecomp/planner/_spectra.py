"""Spectra of the unfoldings of one weight: what the error-driven rank greedies consume."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._backend import is_torch
from ._candidates import Candidate

__all__ = ["Spectra", "as_numpy", "kronecker_shapes"]


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


def _divisors(n: int) -> list[int]:
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return sorted({*small, *(n // k for k in small)})


def kronecker_shapes(
    w: np.ndarray, *, probes: int = 24, rtol: float = 1e-6, seed: int = 0
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The two-core shapes ``((a, c), (b, d))`` under which ``w`` may be ``kron(A, B)``.

    ``w`` (M × N) is ``kron(A, B)`` with ``A`` (a × b) and ``B`` (c × d) exactly when its
    rearrangement ``R[(i1, j1), (i2, j2)] = w[i1·c + i2, j1·d + j2]`` has rank 1, i.e. every
    2 × 2 minor of ``R`` vanishes. Each divisor pair ``a | M``, ``b | N`` is screened with
    ``probes`` random minors (``O(probes)`` entries read, no copy of ``w``), so all
    ``τ(M)·τ(N)`` pairs cost microseconds; a shape that passes is only a candidate, and the
    planner's spectra then measure its error exactly. ``rtol`` is loose enough for weights
    formed in float32. Shapes with a mode of size 1 (a scalar factor) are skipped.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> kronecker_shapes(np.kron(rng.standard_normal((3, 4)), rng.standard_normal((8, 2))))
    [((3, 8), (4, 2))]
    >>> kronecker_shapes(rng.standard_normal((24, 8)))
    []
    """
    m, n = w.shape
    top = float(np.max(np.abs(w))) if w.size else 0.0
    if top == 0.0 or not math.isfinite(top):
        return []
    rng = np.random.default_rng(seed)
    out = []
    for a in _divisors(m):
        c = m // a
        for b in _divisors(n):
            d = n // b
            if a * b < 2 or c * d < 2:
                continue
            # two rows (i1, j1) of R and two columns (i2, j2) per probe; e[p][q] = R[row p, col q]
            i1, j1 = rng.integers(0, a, (2, probes)), rng.integers(0, b, (2, probes))
            i2, j2 = rng.integers(0, c, (2, probes)), rng.integers(0, d, (2, probes))
            e = w[i1[:, None] * c + i2[None], j1[:, None] * d + j2[None]]  # (2, 2, probes)
            x, y = e[0, 0] * e[1, 1], e[0, 1] * e[1, 0]
            if np.all(np.abs(x - y) <= rtol * (np.abs(x) + np.abs(y))):
                out.append(((a, c), (b, d)))
    return out


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
