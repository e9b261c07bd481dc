"""Random trains: the variance-correct initialisation holds statistically."""

from __future__ import annotations

import numpy as np
import pytest
from strategies import torch

import ttdecomp as tt


@pytest.mark.parametrize(
    "shape, ranks, std",
    [((4, 4, 4, 4), 8, 1.0), ((8, 8, 8), [1, 8, 4, 1], 0.05), ((3, 5, 4, 2, 6), 3, 2.0)],
)
def test_entry_variance_matches_request(shape, ranks, std):
    # average the empirical variance over independent trains: E[var] = std²
    samples = np.concatenate(
        [tt.random_tt(shape, ranks, std=std, seed=s).full().ravel() for s in range(200)]
    )
    n = samples.size
    var = samples.var()
    # the entries of one train are correlated, so use the between-train spread for the error
    per_train = np.array(
        [tt.random_tt(shape, ranks, std=std, seed=s).full().var() for s in range(200)]
    )
    se = per_train.std(ddof=1) / np.sqrt(len(per_train))
    assert abs(var - std**2) <= 4 * se + 1e-12, (var, std**2, se, n)
    assert abs(samples.mean()) <= 4 * np.sqrt(std**2 / len(per_train))


def test_random_ttm_variance():
    per = np.array(
        [tt.random_ttm((4, 4), (4, 4), 5, std=0.1, seed=s).full().var() for s in range(300)]
    )
    assert abs(per.mean() - 0.01) <= 4 * per.std(ddof=1) / np.sqrt(len(per))


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_like_builds_in_that_library():
    ref = torch.zeros(1, dtype=torch.float32)
    x = tt.random_tt((2, 3), 2, seed=0, like=ref)
    assert all(isinstance(c, torch.Tensor) and c.dtype == torch.float32 for c in x.cores)


def test_very_deep_random_trains_do_not_overflow_the_variance_formula():
    import ttdecomp as tt

    x = tt.random_tt((2,) * 2000, 3, seed=0)
    assert x.ndim == 2000 and all(np.isfinite(c).all() for c in x.cores)
