"""Tests for ttdecomp.counts: published parameter counts, FLOPs and memory via the cost model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import weight_shapes

from ttdecomp.contract import estimate_costs
from ttdecomp.counts import (
    activation_memory,
    apply_flops,
    compression_ratio,
    contraction_costs,
    dense_flops,
    dense_n_params,
    lora_flops,
    lora_n_params,
    max_ranks,
    tt_matrix_n_params,
    tt_n_params,
)
from ttdecomp.decompose import tt_svd
from ttdecomp.errors import InvalidInputError, RankError, ShapeError
from ttdecomp.shapes import from_tt_shape, tensorize


def test_roberta_base_tt_lora():
    per_layer = 2 * tt_n_params([64, 4, 3, 3, 4, 64], 4)  # q and v
    assert 12 * per_layer == 17_664
    assert 12 * 2 * lora_n_params(768, 768, 8) == 294_912


def test_llama3_8b_tt_lora():
    q = tt_n_params([16, 4, 4, 4, 2, 2, 2, 2, 4, 4, 4, 16], 10)
    v = tt_n_params([16, 4, 4, 4, 2, 2, 2, 2, 4, 4, 16], 10)
    assert 32 * (q + v) == 212_480
    assert 32 * (lora_n_params(4096, 4096, 8) + lora_n_params(1024, 4096, 8)) == 3_407_872


def test_llama32_1b_tt_lora():
    q = tt_n_params([16, 8, 4, 4, 4, 4, 8, 16], 5)
    v = tt_n_params([16, 16, 4, 2, 2, 16, 16], 5)
    assert 16 * (q + v) == 33_920
    assert 16 * (lora_n_params(2048, 2048, 16) + lora_n_params(512, 2048, 16)) == 1_703_936


def test_llama32_1b_as_tt_matrices():
    q = tt_matrix_n_params(*from_tt_shape([16, 8, 4, 4, 4, 4, 8, 16], 2048, 2048), 5)
    v = tt_matrix_n_params(*from_tt_shape([16, 16, 4, 2, 2, 16, 16], 512, 2048), 5)
    assert 16 * (q + v) == 33_920


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ([64, 16, 9, 64], [153, 356, 912, 2624, 3780, 5136, 8448]),
        ([12, 8, 8, 8, 8, 12], [56, 176, 608, 2240, 3440, 4896, 8576]),
    ],
)
def test_hyperband_shape_table(shape, expected):
    assert math.prod(shape) == 768 * 768
    assert [tt_n_params(shape, r) for r in (1, 2, 4, 8, 10, 12, 16)] == expected


@given(weight_shapes(), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_n_params_matches_a_real_decomposition(shape, rank, seed):
    m, n = shape
    rs, cs = tensorize(m, n)
    ranks = max_ranks(rs, cs, max_rank=rank)
    w = np.random.default_rng(seed).standard_normal((m, n))
    ttm = tt_svd(w, list(ranks), row_shape=rs, col_shape=cs)
    assert ttm.ranks == ranks
    assert tt_matrix_n_params(rs, cs, ranks) == ttm.n_params


def test_rank_forms_agree():
    shape = [4, 5, 6, 7]
    assert tt_n_params(shape, 3) == tt_n_params(shape, [1, 3, 3, 3, 1])
    assert tt_n_params(shape, [2, 3, 4]) == 4 * 2 + 2 * 5 * 3 + 3 * 6 * 4 + 4 * 7


def test_max_ranks():
    assert max_ranks((1, 1, 1, 3, 4, 64), (64, 4, 3, 1, 1, 1)) == (1, 64, 256, 768, 256, 64, 1)
    assert max_ranks((2, 3, 4)) == (1, 2, 4, 1)
    assert max_ranks((8, 8, 8), max_rank=5) == (1, 5, 5, 1)


def test_lora_and_dense():
    assert lora_n_params(1024, 4096, 8) == 8 * 5120
    assert dense_n_params(1024, 4096) == 1024 * 4096
    assert dense_n_params(3, 5, bias=True) == 18
    assert dense_flops(3, 5, batch=7) == 2 * 7 * 15
    assert lora_flops(3, 5, 2, batch=7) == 2 * 7 * 2 * 8


def test_compression_ratio():
    tt = tt_n_params([64, 4, 3, 3, 4, 64], 4)
    assert compression_ratio(tt, dense_n_params(768, 768)) == 768 * 768 / 736
    assert compression_ratio(tt, lora_n_params(768, 768, 8)) == 12288 / 736


def test_flops_and_memory_come_from_the_cost_model():
    rs, cs, ranks = (1, 1, 1, 3, 4, 64), (64, 4, 3, 1, 1, 1), (1, 4, 4, 4, 4, 4, 1)
    costs = estimate_costs(rs, cs, ranks, 32)
    assert contraction_costs(rs, cs, 4, batch=32) == costs
    best = min(costs, key=lambda c: (c.flops, c.memory))
    assert apply_flops(rs, cs, 4, batch=32) == best.flops
    for order in ("ltr", "rtl", "dense"):
        (c,) = [c for c in costs if c.order == order]
        assert apply_flops(rs, cs, 4, batch=32, order=order) == c.flops
        assert activation_memory(rs, cs, 4, batch=32, order=order) == {
            "peak": c.memory,
            "saved": c.saved,
        }
    merged = min((c for c in costs if c.order == "merged"), key=lambda c: c.flops)
    assert apply_flops(rs, cs, 4, batch=32, order="merged") == merged.flops


def test_split_layout_costs_lora_plus_setup():
    rs, cs = (1, 1, 1, 3, 4, 64), (64, 4, 3, 1, 1, 1)
    (cut,) = [c for c in contraction_costs(rs, cs, 4, batch=128) if c.split == 3]
    assert cut.flops - cut.setup_flops == lora_flops(768, 768, 4, batch=128)


def test_flops_grow_with_batch():
    rs, cs = tensorize(768, 768)
    assert apply_flops(rs, cs, 8, batch=64) > apply_flops(rs, cs, 8, batch=1)


def test_bad_inputs():
    with pytest.raises(RankError, match="expected 5"):
        tt_n_params([4, 4, 4, 4], [1, 2])
    with pytest.raises(RankError, match="start and end with 1"):
        tt_n_params([4, 4], [2, 2, 2])
    with pytest.raises(RankError, match="positive integer"):
        tt_n_params([4, 4], 0)
    with pytest.raises(ShapeError, match="non-empty sequence"):
        tt_n_params([], 2)
    with pytest.raises(InvalidInputError, match="positive integer"):
        lora_n_params(768, -1, 8)
    with pytest.raises(InvalidInputError, match="order must be"):
        apply_flops((1, 4), (4, 1), 2, order="fastest")
    with pytest.raises(ShapeError, match="equal length"):
        tt_matrix_n_params((1, 4), (4,), 2)
