"""Hypothesis strategies and backend helpers shared by the test files.

Each test file may append its own strategies here (keep edits small and targeted).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import assume
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


@st.composite
def ttm_layouts(draw, max_cores: int = 4, max_mode: int = 4, max_rank: int = 4):
    """``(row_shape, col_shape, ranks)`` of a small TT-matrix in a drawn layout.

    ``"interleaved"``: every ``m_k, n_k > 1``; ``"split"``: input cores (``m_k = 1``)
    then output cores (``n_k = 1``), as in TT-LoRA; ``"mixed"``: anything, ones included.
    """
    layout = draw(st.sampled_from(["interleaved", "split", "mixed"]))
    modes = st.integers(2, max_mode)
    if layout == "interleaved":
        d = draw(st.integers(1, max_cores))
        rows = [draw(modes) for _ in range(d)]
        cols = [draw(modes) for _ in range(d)]
    elif layout == "split":
        d_in = draw(st.integers(1, max(1, max_cores // 2 + 1)))
        d_out = draw(st.integers(1, max(1, max_cores // 2 + 1)))
        cols = [draw(modes) for _ in range(d_in)] + [1] * d_out
        rows = [1] * d_in + [draw(modes) for _ in range(d_out)]
    else:
        d = draw(st.integers(1, max_cores))
        rows = [draw(st.integers(1, max_mode)) for _ in range(d)]
        cols = [draw(st.integers(1, max_mode)) for _ in range(d)]
    d = len(rows)
    ranks = [1] + [draw(st.integers(1, max_rank)) for _ in range(d - 1)] + [1]
    return tuple(rows), tuple(cols), tuple(ranks)


# --- shapes / counts / planner (tests/test_shapes.py, test_counts.py, test_planner.py) ---
@st.composite
def smooth_ints(draw, min_value: int = 2, max_value: int = 5000):
    """Integers in range whose prime factors are all at most 7 (sizes found in networks)."""
    n = 1
    for p in draw(st.lists(st.sampled_from([2, 2, 2, 3, 5, 7]), min_size=1, max_size=14)):
        if n * p > max_value:
            break
        n *= p
    return n if n >= min_value else min_value  # min_value is 2 or 4 here: smooth too


@st.composite
def weight_shapes(draw, max_size: int = 1500):
    """A small ``(out_features, in_features)`` pair of smooth sizes with at least 2 prime
    factors each, so that TT-matrices of a few cores exist in both layouts."""
    m = draw(smooth_ints(min_value=4, max_value=64))
    n = draw(smooth_ints(min_value=4, max_value=max(4, max_size // m)))
    return _two_factors(m), _two_factors(n)


def _two_factors(n: int) -> int:
    """``n`` times 2 when ``n`` is prime, so that it splits into at least two factors."""
    return n * 2 if all(n % p for p in range(2, int(n**0.5) + 1)) else n


@st.composite
def kronecker_factor_shapes(draw, max_side: int = 16):
    """``((a, b), (c, d))``: the shapes of ``A`` and ``B`` in ``W = kron(A, B)``, any sides
    (primes, ones, rectangles), with both factors and both sides of ``W`` of size 2 at least."""
    side = st.integers(1, max_side)
    a, b, c, d = draw(st.tuples(side, side, side, side))
    assume(a * b >= 2 and c * d >= 2 and a * c >= 2 and b * d >= 2)
    return (a, b), (c, d)
