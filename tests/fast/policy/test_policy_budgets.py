"""Per-layer budgets (docs/algorithm.md section 2): water-filling, exact totals, bounds, the literal rounding."""

import math
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radix_ext.policy.budgets import (
    _water_fill,  # the bisection itself: its early stop must be exact
    allocate_counts,
    count_bounds,
    pyramid_counts,
    sparsity_counts,
    sparsity_fractions,
    total_budget,
    uniform_counts,
)

# attention_stats never reports a layer sparsity of exactly 1 (each row's max entry is never "below"),
# so the properties draw gamma in [0, 1); the gamma == 1 edge is tested on its own below.
gammas_st = st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=8)
alpha_st = st.one_of(st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5, 1.0]), st.floats(0.001, 1.0))


def _reference_beta(gammas, alpha):
    dens = [1.0 - g for g in gammas]
    Z = math.fsum(dens)
    L = len(gammas)
    return [min(1.0, max(0.01, d / Z * alpha * L)) for d in dens]


def test_total_budget_and_bounds():
    assert total_budget(0.1, 32, 1000) == 3200
    assert total_budget(0.05, 3, 96) == 14  # 14.4
    assert count_bounds(1000) == (10, 1000)
    assert count_bounds(101) == (2, 101)  # ceil(1.01)
    assert count_bounds(50) == (1, 50)  # at least one token
    assert count_bounds(1) == (1, 1)


@settings(max_examples=150, deadline=None)
@given(gammas=gammas_st, alpha=alpha_st, m=st.integers(1, 400))
def test_renormalised_counts_hit_the_total_exactly_within_bounds(gammas, alpha, m):
    L = len(gammas)
    counts = sparsity_counts(torch.tensor(gammas, dtype=torch.float64), alpha, m, renormalize=True)
    lo, hi = max(1, math.ceil(0.01 * m)), m
    total = round(alpha * L * m)
    assert len(counts) == L and all(isinstance(c, int) for c in counts)
    assert all(lo <= c <= hi for c in counts), (counts, lo, hi)
    if L * lo <= total <= L * hi:
        assert sum(counts) == total
    elif total < L * lo:
        assert counts == [lo] * L
    # Denser layers never get fewer tokens (budget share proportional to density).
    dens = [1.0 - g for g in gammas]
    for a in range(L):
        for b in range(L):
            if dens[a] > dens[b]:
                assert counts[a] >= counts[b], (gammas, counts)


@settings(max_examples=150, deadline=None)
@given(gammas=gammas_st, alpha=alpha_st, m=st.integers(1, 400))
def test_literal_counts_are_floor_of_beta_times_m(gammas, alpha, m):
    beta_ref = _reference_beta(gammas, alpha)
    g = torch.tensor(gammas, dtype=torch.float64)
    beta = sparsity_fractions(g, alpha)
    assert beta.tolist() == pytest.approx(beta_ref, rel=1e-12, abs=1e-15)
    counts = sparsity_counts(g, alpha, m, renormalize=False)
    for c, b in zip(counts, beta_ref, strict=True):
        exact = b * m
        expected = max(1, math.floor(exact))
        if abs(exact - round(exact)) < 1e-9:  # on an integer: the last ulp decides, either side is fine
            assert c in (max(1, round(exact) - 1), max(1, round(exact)))
        else:
            assert c == expected, (counts, beta_ref, m)


def test_literal_counts_drift_from_the_total_where_renormalised_do_not():
    # Layer 0 is so dense its beta clips at 1.0; the paper does not hand its surplus to the others.
    gammas = torch.tensor([0.0, 0.99, 0.99, 0.99], dtype=torch.float64)
    m, alpha = 200, 0.5
    beta = sparsity_fractions(gammas, alpha).tolist()
    assert beta[0] == 1.0 and beta[1] == pytest.approx(0.01 / 1.03 * 2, rel=1e-9)
    literal = sparsity_counts(gammas, alpha, m, renormalize=False)
    assert literal == [200, 3, 3, 3]  # floor(0.0194 * 200) = 3
    renormalised = sparsity_counts(gammas, alpha, m, renormalize=True)
    assert sum(renormalised) == 400 and renormalised[0] == 200
    assert renormalised[1:] == [67, 67, 66]  # 200 spread evenly, largest remainders to the lowest index


def test_uniform_attention_layer_gets_the_largest_budget():
    counts = sparsity_counts(torch.tensor([0.9, 0.0, 0.5, 0.99]), 0.1, 1000, renormalize=True)
    assert sum(counts) == 400
    assert counts[1] == max(counts) and counts[1] > counts[2] > counts[0] > counts[3]
    # dens = 0.1, 1, 0.5, 0.01: layer 3's share (2.5) is lifted to lo = ceil(0.01 * 1000) = 10 and the
    # other 390 tokens are split 0.1 : 1 : 0.5 (24.375, 243.75, 121.875), then rounded.
    assert counts == [24, 244, 122, 10]


def test_all_layers_fully_sparse_fall_back_to_uniform():
    assert sparsity_counts(torch.ones(4), 0.1, 100, renormalize=True) == [10, 10, 10, 10]
    assert sparsity_fractions(torch.ones(4), 0.1).tolist() == pytest.approx([0.1] * 4)


def test_allocate_counts_water_fills_clipped_surplus_over_the_others():
    # Cap: layer 2 wants 20/24 * 40 > 20; it keeps 20 and the other 20 go 1:3 to layers 0 and 1.
    assert allocate_counts(torch.tensor([1.0, 3.0, 20.0]), 40, 1, 20) == [5, 15, 20]
    # Floor: layer 0 would get ~0; it is lifted to lo = 3 and the others share the rest equally.
    assert allocate_counts(torch.tensor([0.001, 1.0, 1.0]), 21, 3, 100) == [3, 9, 9]
    # Plain proportional split.
    assert allocate_counts(torch.tensor([1.0, 2.0, 3.0, 4.0]), 100, 1, 1000) == [10, 20, 30, 40]
    # Largest remainders, ties to the lower layer.
    assert allocate_counts(torch.ones(3), 10, 1, 10) == [4, 3, 3]
    # Outside [L*lo, L*hi] every layer sits at a bound.
    assert allocate_counts(torch.ones(3), 2, 1, 10) == [1, 1, 1]
    assert allocate_counts(torch.ones(3), 50, 1, 10) == [10, 10, 10]


@settings(max_examples=150, deadline=None)
@given(
    weights=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 10.0)), min_size=1, max_size=8),
    lo=st.integers(1, 5),
    span=st.integers(0, 60),
    data=st.data(),
)
def test_allocate_counts_properties(weights, lo, span, data):
    """Documented contract: `k[l]` in `[lo, hi]`, `sum == total` when `L*lo <= total <= L*hi`.

    Zero weights are legal input (a layer with density 0, a clamped negative pyramid ramp)."""
    hi = lo + span
    L = len(weights)
    total = data.draw(st.integers(L * lo, L * hi), label="total")
    counts = allocate_counts(torch.tensor(weights, dtype=torch.float64), total, lo, hi)
    assert all(lo <= c <= hi for c in counts), (weights, total, lo, hi, counts)
    assert sum(counts) == total, (weights, total, lo, hi, counts)


@settings(max_examples=150, deadline=None)
@given(
    weights=st.lists(st.one_of(st.just(0.0), st.just(1e-13), st.floats(0.0, 10.0)), min_size=1, max_size=40),
    lo=st.integers(1, 5),
    span=st.integers(2, 3000),
    data=st.data(),
)
def test_water_fill_stops_early_on_the_level_of_the_full_bisection(weights, lo, span, data):
    """`_water_fill` stops once its bracket is two adjacent floats; the full 200 steps (written out here)
    would not move `high` from there, so shares (and counts) are bit-identical."""
    hi = lo + span
    w = torch.tensor(weights, dtype=torch.float64)
    total = float(data.draw(st.integers(len(weights) * lo + 1, len(weights) * hi - 1), label="total"))
    if float(w.max()) <= 0:
        return
    u = w / float(w.max())
    u = torch.where(u < 1e-12, torch.zeros_like(u), u)
    low, high = 0.0, hi / float(u[u > 0].min())
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if float((u * mid).clamp(lo, hi).sum()) < total else (low, mid)
    full = (u * high).clamp(lo, hi)
    assert torch.equal(_water_fill(w, total, float(lo), float(hi))[u > 0], full[u > 0])


def test_allocate_counts_zero_weight_layer_takes_what_the_capped_layers_cannot():
    # Feasible: 15 tokens over two layers of at most 10. Layer 0 caps at 10, so layer 1 must take 5.
    counts = allocate_counts(torch.tensor([1.0, 0.0]), 15, 1, 10)
    assert all(1 <= c <= 10 for c in counts), counts
    assert counts == [10, 5]


def test_sparsity_counts_with_a_fully_sparse_layer_stays_within_the_prompt():
    # gamma = 1 for layer 1 gives it density 0; alpha = 0.75 over 2 layers of m = 10 needs 15 tokens.
    counts = sparsity_counts(torch.tensor([0.0, 1.0]), 0.75, 10, renormalize=True)
    assert max(counts) <= 10, counts
    assert sum(counts) == 15


def test_uniform_counts():
    assert uniform_counts(3, 0.05, 96) == [5, 5, 4]
    assert uniform_counts(4, 0.1, 1000) == [100] * 4
    assert uniform_counts(2, 1.0, 37) == [37, 37]
    assert uniform_counts(3, 0.001, 50) == [1, 1, 1]  # at least one token


def test_pyramid_counts_fall_linearly_from_first_to_last_layer():
    # C = 100, w = 10: from 2*90 - 4.5 + 10 = 185.5 down to 4.5 + 10 = 14.5; the ramp already sums to 800.
    counts = pyramid_counts(8, 0.1, 1000, 0.1)
    assert sum(counts) == 800
    ramp = [185.5 - (185.5 - 14.5) * i / 7 for i in range(8)]
    assert counts == pytest.approx(ramp, abs=1)
    assert all(a >= b for a, b in pairwise(counts))


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 12), alpha=alpha_st, m=st.integers(64, 2000))
def test_pyramid_counts_properties(L, alpha, m):
    counts = pyramid_counts(L, alpha, m, 0.1)
    lo, hi = count_bounds(m)
    total = round(alpha * L * m)
    assert all(lo <= c <= hi for c in counts)
    if L * lo <= total <= L * hi:
        assert sum(counts) == total
    assert all(a >= b for a, b in pairwise(counts)), counts  # a pyramid: never grows with depth
