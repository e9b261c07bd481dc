"""Tests for ttdecomp.shapes: factorize, tensorize, padding, tt_shape conversion."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import smooth_ints, weight_shapes

from ttdecomp.errors import InvalidInputError, ShapeError
from ttdecomp.shapes import (
    MAX_FACTORS,
    factorize,
    from_tt_shape,
    next_smooth,
    prime_factors,
    split_shapes,
    tensorize,
    to_tt_shape,
)

COMMON = [384, 576, 768, 1024, 2048, 3072, 4096, 8192]
RECTANGULAR = [(1024, 4096), (4096, 1024), (11008, 4096), (4096, 11008), (14336, 4096)]


@given(smooth_ints(max_value=100_000), st.data())
def test_factorize_product_and_balance(n, data):
    k = data.draw(st.integers(1, len(prime_factors(n))))
    f = factorize(n, k)
    assert math.prod(f) == n
    assert len(f) == k
    assert all(x >= 2 for x in f)
    assert list(f) == sorted(f, reverse=True)
    assert factorize(n, k) == f  # deterministic


@given(smooth_ints(max_value=100_000))
def test_factorize_default_count(n):
    f = factorize(n)
    assert math.prod(f) == n and all(x >= 2 for x in f)
    assert len(f) == min(len(prime_factors(n)), max(1, round(math.log(n, 4))))


def test_factorize_is_balanced():
    assert factorize(4096, 3) == (16, 16, 16)
    assert factorize(768, 3) == (12, 8, 8)
    assert factorize(11008, 3) == (43, 16, 16)


@pytest.mark.parametrize("layout", ["split", "interleaved"])
@given(shape=weight_shapes(max_size=200_000), data=st.data())
def test_tensorize_products(layout, shape, data):
    m, n = shape
    room = len(prime_factors(m)) + len(prime_factors(n))
    if layout == "interleaved":
        room = max(len(prime_factors(m)), len(prime_factors(n)))
    n_cores = data.draw(st.one_of(st.none(), st.integers(2, room)))
    rs, cs = tensorize(m, n, n_cores, layout)
    assert math.prod(rs) == m and math.prod(cs) == n
    assert len(rs) == len(cs) >= 2
    if n_cores is not None:
        assert len(rs) == n_cores
    if layout == "split":
        k_in = sum(c > 1 for c in cs)
        assert all(r == 1 for r in rs[:k_in]) and all(c == 1 for c in cs[k_in:])
        assert all(c > 1 for c in cs[:k_in]) and all(r > 1 for r in rs[k_in:])
        assert 1 <= k_in < len(rs)
    else:
        # every core has m_k, n_k >= 2 as far as the prime factors allow
        assert sum(r > 1 for r in rs) == min(len(rs), len(prime_factors(m)))
        assert sum(c > 1 for c in cs) == min(len(cs), len(prime_factors(n)))


@pytest.mark.parametrize("dim", COMMON)
@pytest.mark.parametrize("layout", ["split", "interleaved"])
def test_tensorize_common_sizes(dim, layout):
    rs, cs = tensorize(dim, dim, layout=layout)
    assert math.prod(rs) == dim and math.prod(cs) == dim
    assert len(rs) >= 3
    modes = to_tt_shape(rs, cs)
    if layout == "split":
        # large factors at the two ends, where the rank is 1
        assert modes[0] == max(modes) and modes[-1] == max(modes)
    else:
        assert all(r >= 2 and c >= 2 for r, c in zip(rs, cs))


@pytest.mark.parametrize(("m", "n"), RECTANGULAR)
@pytest.mark.parametrize("layout", ["split", "interleaved"])
def test_tensorize_rectangular(m, n, layout):
    rs, cs = tensorize(m, n, layout=layout)
    assert (math.prod(rs), math.prod(cs)) == (m, n)
    assert max(to_tt_shape(rs, cs)) <= 43 * (16 if layout == "split" else 8)


def test_split_reproduces_llama3_paper_shapes():
    # TT-LoRA on LLaMA-3-8B: q [16,4,4,4,2,2,2,2,4,4,4,16], v [16,4,4,4,2,2,2,2,4,4,16]
    assert to_tt_shape(*tensorize(4096, 4096, 12)) == (16, 4, 4, 4, 2, 2, 2, 2, 4, 4, 4, 16)
    assert to_tt_shape(*tensorize(1024, 4096, 11)) == (16, 4, 4, 4, 2, 2, 2, 2, 4, 4, 16)


def test_tt_shape_round_trip_paper_shapes():
    cases = [
        ([64, 4, 3, 3, 4, 64], 768, 768, 3),
        ([16, 4, 4, 4, 2, 2, 2, 2, 4, 4, 16], 1024, 4096, 6),
        ([16, 8, 4, 4, 4, 4, 8, 16], 2048, 2048, 4),
        ([16, 16, 4, 2, 2, 16, 16], 512, 2048, 4),
    ]
    for tt_shape, m, n, k_in in cases:
        rs, cs = from_tt_shape(tt_shape, m, n)
        assert rs == (1,) * k_in + tuple(tt_shape[k_in:])
        assert cs == tuple(tt_shape[:k_in]) + (1,) * (len(tt_shape) - k_in)
        assert to_tt_shape(rs, cs) == tuple(tt_shape)


@given(weight_shapes())
def test_tt_shape_round_trip_property(shape):
    m, n = shape
    rs, cs = tensorize(m, n)
    assert from_tt_shape(to_tt_shape(rs, cs), m, n) == (rs, cs)


def test_from_tt_shape_rejects_wrong_products():
    with pytest.raises(ShapeError, match="in_features=768"):
        from_tt_shape([64, 4, 4, 3, 4, 64], 768, 768)
    with pytest.raises(ShapeError, match="out_features=512"):
        from_tt_shape([64, 4, 3, 3, 4, 64], 512, 768)


def test_a_50000_factor_tt_shape_fails_fast():
    """A hostile config's 50,000-factor shape is refused at once, not after minutes of products."""
    import time

    from ttdecomp import attainable_ranks

    huge = [2] * 50_000
    start = time.perf_counter()
    for call in (
        lambda: from_tt_shape(huge, 768, 768),
        lambda: to_tt_shape([1] * 50_000, huge),
    ):
        with pytest.raises(ShapeError, match=r"has 50000 factors; at most 64"):
            call()
    # the products that remain are linear: the attainable ranks of a 50,000-mode tensor
    ranks = attainable_ranks([1] * 50_000)
    assert len(ranks) == 50_001 and set(ranks) == {1}
    assert time.perf_counter() - start < 2.0  # was ~60 s for 20,000 factors (quadratic)


def test_max_factors_is_the_bound():
    shape = [2] * MAX_FACTORS
    with pytest.raises(ShapeError, match="in_features=768"):  # checked, not refused for length
        from_tt_shape(shape, 768, 768)
    with pytest.raises(ShapeError, match=f"at most {MAX_FACTORS}"):
        from_tt_shape([*shape, 2], 768, 768)
    assert from_tt_shape([2] * 10 + [3] * 3, 27, 1024) == (
        (1,) * 10 + (3,) * 3,
        (2,) * 10 + (1,) * 3,
    )


def test_split_shapes_orders_ends_large():
    assert split_shapes((16, 2, 4), (2, 16, 4)) == ((1, 1, 1, 2, 4, 16), (16, 4, 2, 1, 1, 1))


def test_large_prime_error_suggests_padding():
    with pytest.raises(ShapeError) as info:
        factorize(4099)
    msg = str(info.value)
    assert "4099" in msg and "prime factor" in msg and "4116" in msg and "pad=True" in msg
    with pytest.raises(ShapeError, match=r"out_features = 4099 .* 4116"):
        tensorize(4099, 4096)
    with pytest.raises(ShapeError, match=r"in_features = 30522 .* prime factor 5087"):
        tensorize(384, 30522)


def test_pad_pads_to_the_suggested_size():
    assert math.prod(factorize(4099, pad=True)) == next_smooth(4099) == 4116
    rs, cs = tensorize(4099, 4096, pad=True)
    assert math.prod(rs) == 4116 and math.prod(cs) == 4096
    rs, cs = tensorize(768, 768, n_cores=20, pad=True)
    assert len(rs) == 20 and math.prod(rs) >= 768 and math.prod(cs) >= 768


def test_next_smooth_properties():
    for n in (2, 97, 4099, 50257):
        m = next_smooth(n)
        assert m >= n and max(prime_factors(m)) <= 7
        assert all(max(prime_factors(k)) > 7 for k in range(n, m))


def test_medium_primes_are_accepted():
    assert 43 in factorize(11008)  # LLaMA-2 FFN: 2^8 * 43
    with pytest.raises(ShapeError, match="max_prime = 32"):
        factorize(11008, max_prime=32)


@pytest.mark.parametrize("bad", [0, -4, 1])
def test_bad_dimensions(bad):
    with pytest.raises(ShapeError, match=f"got {bad}"):
        factorize(bad)
    with pytest.raises(ShapeError, match=f"got {bad}"):
        tensorize(bad, 16)


@pytest.mark.parametrize("bad", [4.0, "16", True, None])
def test_non_integer_dimensions(bad):
    with pytest.raises(InvalidInputError, match="must be an integer"):
        tensorize(bad, 16)


def test_too_many_factors_or_cores():
    with pytest.raises(ShapeError, match=r"only 2 prime factor\(s\) \[2, 3\].*Pad it to 8"):
        factorize(6, 3)
    with pytest.raises(ShapeError, match=r"n_cores = 30 .* only 18 prime factors"):
        tensorize(768, 768, n_cores=30)
    with pytest.raises(ShapeError, match="n_cores <= 9"):
        tensorize(768, 768, n_cores=10, layout="interleaved")
    with pytest.raises(ShapeError, match="at least 2"):
        tensorize(768, 768, n_cores=1)


def test_unknown_layout():
    with pytest.raises(InvalidInputError, match="layout must be one of"):
        tensorize(768, 768, layout="tucker")


def test_to_tt_shape_validates():
    with pytest.raises(ShapeError, match="equal length"):
        to_tt_shape((1, 2), (2,))


@pytest.mark.parametrize("n", [1_000_000_007, 2**61 - 1, (2**31 - 1) * 1_000_003])
def test_large_primes_fail_fast_with_a_pad_suggestion(n):
    import time

    from ttdecomp.shapes import next_smooth, prime_factors

    start = time.perf_counter()
    with pytest.raises(ShapeError, match="Pad it to"):
        factorize(n)
    assert time.perf_counter() - start < 2.0
    assert math.prod(prime_factors(n)) == n
    padded = next_smooth(n)
    assert padded >= n and max(prime_factors(padded)) <= 7


@given(st.integers(1, 10**6), st.integers(1, 6))
def test_next_smooth_is_the_smallest_smooth_number(n, k):
    from ttdecomp.shapes import next_smooth, prime_factors

    m = next_smooth(n, min_factors=k)
    assert m >= n and len(prime_factors(m)) >= k and max(prime_factors(m), default=1) <= 7
    if m > n:  # nothing in between qualifies (checked on a bounded window)
        for j in range(n, min(m, n + 200)):
            ps = prime_factors(j)
            assert not (len(ps) >= k and max(ps, default=1) <= 7)


@given(st.integers(2, 10**7))
def test_prime_factors_multiply_back(n):
    from ttdecomp.shapes import prime_factors

    ps = prime_factors(n)
    assert math.prod(ps) == n and list(ps) == sorted(ps)
    assert all(all(p % q for q in range(2, math.isqrt(p) + 1)) for p in set(ps) if p < 10**5)
