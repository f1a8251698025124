"""Within-layer selection (docs/algorithm.md section 3) and end-to-end properties of `vlcache` selections."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radix_ext.policy import PromptLayout, Selection, get_policy
from radix_ext.policy.selection import keep_all, keep_sinks_and_recent, keep_top_with_window, recent_window

from policy_test_helpers import check_valid_keep, random_qk, selections_equal, stats_for, window_size


def _reference_top_with_window(scores, k, window):
    m = len(scores)
    k = min(k, m)
    window = min(window, k)
    head = m - window
    ranked = sorted(range(head), key=lambda j: (-scores[j], j))  # best first, ties to the lower position
    return sorted(ranked[: k - window] + list(range(head, m)))


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]) | st.floats(0, 10, width=32), min_size=1, max_size=40),
    data=st.data(),
)
def test_keep_top_with_window_matches_reference(scores, data):
    m = len(scores)
    k = data.draw(st.integers(1, m + 3), label="k")  # k > m is clamped to m
    window = data.draw(st.integers(0, k), label="window")
    keep = keep_top_with_window(torch.tensor(scores), k, window)
    check_valid_keep(keep, m)
    assert keep.tolist() == _reference_top_with_window(scores, k, window)


def test_keep_top_with_window_hand_case_and_ties():
    scores = torch.tensor([0.0, 9.0, 1.0, 9.0, 5.0, 0.0, 0.0, 7.0])
    # window 2 keeps 6, 7 (7 has a high score but is in the window anyway); top 2 of [0, 6): 1 and 3 (tie)
    assert keep_top_with_window(scores, 4, 2).tolist() == [1, 3, 6, 7]
    assert keep_top_with_window(torch.ones(10), 5, 1).tolist() == [0, 1, 2, 3, 9]  # ties: lowest positions
    assert keep_top_with_window(scores, 8, 1).tolist() == list(range(8))


@pytest.mark.parametrize("k, w", [(1, 1), (9, 1), (10, 1), (11, 2), (20, 2), (21, 3), (30, 3), (100, 10), (101, 11)])
def test_recent_window_is_ceil_of_a_tenth(k, w):
    assert recent_window(k) == w
    assert recent_window(k, 0.0) == 0
    assert recent_window(3, 1.0) == 3


def test_keep_sinks_and_recent():
    assert keep_sinks_and_recent(20, 7, 4).tolist() == [0, 1, 2, 3, 17, 18, 19]
    assert keep_sinks_and_recent(20, 4, 4).tolist() == [0, 1, 2, 19]  # the recent window survives
    assert keep_sinks_and_recent(5, 9, 4).tolist() == [0, 1, 2, 3, 4]


def test_selection_figures():
    keep = [torch.tensor([0, 3]), torch.tensor([1, 2, 3]), torch.tensor([3])]
    sel = Selection("x", {}, 0.5, 4, keep, True)
    assert sel.layer_budgets == [2, 3, 1] and sel.num_layers == 3
    assert sel.realized_budget == pytest.approx(6 / 12)
    assert Selection("x", {}, 1.0, 4, keep_all(2, 4), False).realized_budget == 1.0


# ---- end to end: random prompts through vlcache ----


@st.composite
def prompts(draw, max_m=90):
    m = draw(st.integers(8, max_m))
    start = draw(st.integers(0, m - 1))
    end = draw(st.integers(start + 1, m))  # may end the prompt (tail-row fallback)
    L = draw(st.integers(1, 4))
    temps = draw(st.lists(st.sampled_from([0.0, 0.3, 1.0, 4.0]), min_size=L, max_size=L))
    seed = draw(st.integers(0, 2**16))
    return PromptLayout(m, [(start, end)]), random_qk(m, seed, num_layers=L, temperatures=temps)


budget_st = st.one_of(st.sampled_from([0.01, 0.05, 0.1, 0.5, 1.0]), st.floats(0.001, 1.0))


@settings(max_examples=60, deadline=None)
@given(prompt=prompts(), budget=budget_st, window_fraction=st.sampled_from([0.1, 0.1, 0.3]))
def test_vlcache_selection_properties(prompt, budget, window_fraction):
    layout, (qs, ks) = prompt
    m, L = layout.num_tokens, len(qs)
    policy = get_policy("vlcache", min_prompt_tokens=0, window_fraction=window_fraction)
    stats = stats_for(policy, layout, qs, ks, row_chunk=5, key_chunk=7)
    sel = policy.select(stats, layout, budget)
    assert sel.num_layers == L and sel.num_tokens == m
    for keep in sel.keep:
        check_valid_keep(keep, m)
    assert sel.layer_budgets == [len(k) for k in sel.keep]
    assert sel.realized_budget == pytest.approx(sum(sel.layer_budgets) / (L * m))
    if budget == 1.0:
        assert not sel.compressed and all(torch.equal(k, torch.arange(m)) for k in sel.keep)
        return
    assert sel.compressed
    lo = max(1, math.ceil(0.01 * m))
    total = round(budget * L * m)
    assert all(lo <= k <= m for k in sel.layer_budgets)
    if L * lo <= total <= L * m:
        assert sum(sel.layer_budgets) == total
    for keep, k in zip(sel.keep, sel.layer_budgets, strict=True):
        w = window_size(k, window_fraction)
        assert set(range(m - w, m)) <= set(keep.tolist())  # the recent window is always kept
    assert sel.layer_sparsity == pytest.approx([s.layer_sparsity for s in stats])


@settings(max_examples=40, deadline=None)
@given(prompt=prompts(), budget=budget_st)
def test_vlcache_selection_is_deterministic(prompt, budget):
    layout, (qs, ks) = prompt
    policy = get_policy("vlcache", min_prompt_tokens=0)
    first = policy.select(stats_for(policy, layout, qs, ks), layout, budget)
    second = get_policy("vlcache", min_prompt_tokens=0).select(
        stats_for(policy, layout, [q.clone() for q in qs], [k.clone() for k in ks]), layout, budget
    )
    assert selections_equal(first, second)


@settings(max_examples=40, deadline=None)
@given(prompt=prompts(), budget=budget_st)
def test_vlcache_literal_mode_reproduces_floor_beta_m(prompt, budget):
    layout, (qs, ks) = prompt
    m, L = layout.num_tokens, len(qs)
    policy = get_policy("vlcache", min_prompt_tokens=0, renormalize=False)
    stats = stats_for(policy, layout, qs, ks)
    sel = policy.select(stats, layout, budget)
    if budget == 1.0:
        assert not sel.compressed
        return
    dens = [1.0 - s.layer_sparsity for s in stats]
    Z = math.fsum(dens)
    beta = [min(1.0, max(0.01, d / Z * budget * L)) for d in dens]
    assert sel.layer_fractions == pytest.approx(beta, rel=1e-9)
    for k, b in zip(sel.layer_budgets, beta, strict=True):
        exact = b * m
        if abs(exact - round(exact)) < 1e-9:
            assert k in (max(1, round(exact) - 1), max(1, round(exact)))
        else:
            assert k == max(1, math.floor(exact))


@settings(max_examples=30, deadline=None)
@given(
    prompt=prompts(),
    name=st.sampled_from(
        ["vlcache", "vlcache_uniform", "h2o", "snapkv", "pyramidkv", "random", "streamingllm", "full", "h2o_sparsity"]
    ),
)
def test_budget_one_keeps_everything(prompt, name):
    layout, (qs, ks) = prompt
    policy = get_policy(name, min_prompt_tokens=0)
    sel = policy.select(stats_for(policy, layout, qs, ks), layout, 1.0)
    assert not sel.compressed and sel.reason
    assert sel.realized_budget == 1.0
    assert all(torch.equal(k, torch.arange(layout.num_tokens)) for k in sel.keep)
