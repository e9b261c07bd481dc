"""Hypothesis strategies and backend helpers shared by the test files.

Each test file may append its own strategies here (keep edits small and targeted).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

try:
    import torch
except ImportError:  # numpy-only runs
    torch = None

import array_api_strict

BACKENDS = ["numpy", "array_api_strict"] + (["torch"] if torch is not None else [])

# relative tolerances used for "equal up to round-off" checks, per dtype
RTOL = {"float32": 2e-4, "float64": 1e-10, "complex128": 1e-10}


def to_backend(a: np.ndarray, backend: str):
    """A numpy array as an array of ``backend`` (same dtype)."""
    if backend == "numpy":
        return a
    if backend == "torch":
        return torch.from_numpy(np.ascontiguousarray(a))
    if backend == "array_api_strict":
        return array_api_strict.asarray(a)
    raise ValueError(backend)


def to_numpy(x) -> np.ndarray:
    """Any backend's array as numpy."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray | np.generic):
        return np.asarray(x)
    return np.asarray(x)


def random_array(rng: np.random.Generator, shape, dtype: str) -> np.ndarray:
    """Standard normal entries (complex: real and imaginary parts) of ``dtype``."""
    a = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


@st.composite
def tensor_shapes(draw, min_dims: int = 1, max_dims: int = 5, max_size: int = 2000):
    """Small mode sizes whose product stays below ``max_size``."""
    d = draw(st.integers(min_dims, max_dims))
    shape = []
    for _ in range(d):
        cap = max(1, min(6, max_size // max(1, math.prod(shape))))
        shape.append(draw(st.integers(1, cap)))
    return tuple(shape)


@st.composite
def low_rank_tt_arrays(draw, max_dims: int = 5, max_rank: int = 3):
    """A dense array that is exactly a TT of the drawn ranks, with the ranks and seed."""
    shape = draw(tensor_shapes(min_dims=2, max_dims=max_dims, max_size=1500))
    rank = draw(st.integers(1, max_rank))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, rank, seed


dtypes = st.sampled_from(["float32", "float64", "complex128"])
backends = st.sampled_from(BACKENDS)
seeds = st.integers(0, 2**31 - 1)
