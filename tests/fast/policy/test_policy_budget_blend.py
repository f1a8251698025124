"""VL-Cache's `layer_budget_blend`: 1 = the paper's sparsity-aware layer budgets, 0 = uniform, linear between."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radix_ext.policy import PromptLayout, get_policy
from radix_ext.policy.budgets import blended_weights, sparsity_counts, sparsity_fractions, uniform_counts

from policy_test_helpers import random_qk, selections_equal, stats_for

gammas_st = st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=8)
alpha_st = st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5])


@settings(max_examples=60, deadline=None)
@given(gammas=gammas_st, alpha=alpha_st, m=st.integers(64, 3000), renormalize=st.booleans())
def test_blend_one_is_the_paper_and_zero_is_uniform(gammas, alpha, m, renormalize):
    g = torch.tensor(gammas, dtype=torch.float64)
    assert sparsity_counts(g, alpha, m, renormalize, blend=1.0) == sparsity_counts(g, alpha, m, renormalize)
    assert torch.equal(sparsity_fractions(g, alpha, 1.0), sparsity_fractions(g, alpha))
    if renormalize:
        assert sparsity_counts(g, alpha, m, True, blend=0.0) == uniform_counts(len(gammas), alpha, m)


@settings(max_examples=60, deadline=None)
@given(gammas=gammas_st, alpha=alpha_st, m=st.integers(64, 3000), blend=st.floats(0.0, 1.0))
def test_every_blend_hits_the_exact_total(gammas, alpha, m, blend):
    g = torch.tensor(gammas, dtype=torch.float64)
    counts = sparsity_counts(g, alpha, m, True, blend=blend)
    L = len(gammas)
    lo = max(1, -(-m // 100))
    if L * lo <= round(alpha * L * m) <= L * m:
        assert sum(counts) == round(alpha * L * m)
    assert all(lo <= k <= m for k in counts)


def test_intermediate_blend_is_the_linear_mix_of_the_two_fractions():
    g = torch.tensor([0.2, 0.5, 0.9, 0.95], dtype=torch.float64)  # densities 0.8, 0.5, 0.1, 0.05
    alpha = 0.1  # small enough that no fraction reaches a bound
    paper = sparsity_fractions(g, alpha, 1.0)
    for blend in (0.25, 0.5, 0.75):
        assert sparsity_fractions(g, alpha, blend).tolist() == pytest.approx(
            (blend * paper + (1 - blend) * alpha).tolist(), rel=1e-12
        )
    # moving from uniform towards the paper gives the densest layer more and the sparsest less
    first = [sparsity_counts(g, alpha, 1000, True, blend=b)[0] for b in (0.0, 0.25, 0.5, 0.75, 1.0)]
    last = [sparsity_counts(g, alpha, 1000, True, blend=b)[-1] for b in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert first == sorted(first) and first[0] < first[-1]
    assert last == sorted(last, reverse=True) and last[0] > last[-1]


def test_blended_weights_refuses_out_of_range():
    with pytest.raises(ValueError, match=r"blend must be in \[0, 1\]"):
        blended_weights(torch.zeros(3), 1.5)


def _select(name, layout, qs, ks, budget, **options):
    policy = get_policy(name, **options)
    return policy.select(stats_for(policy, layout, qs, ks), layout, budget)


def test_vlcache_option_default_zero_and_half():
    layout = PromptLayout(200, [(10, 170)])
    qs, ks = random_qk(200, 7, num_layers=4, temperatures=[0.1, 0.5, 2.0, 6.0])
    paper = _select("vlcache", layout, qs, ks, 0.1)
    assert paper.options["layer_budget_blend"] == 1.0
    explicit = _select("vlcache", layout, qs, ks, 0.1, layer_budget_blend=1.0)
    assert selections_equal(paper, explicit)
    uniform = _select("vlcache", layout, qs, ks, 0.1, layer_budget_blend=0.0)
    ablation = _select("vlcache_uniform", layout, qs, ks, 0.1)
    assert uniform.layer_budgets == ablation.layer_budgets == [20, 20, 20, 20]
    assert all(torch.equal(a, b) for a, b in zip(uniform.keep, ablation.keep, strict=True))
    half = _select("vlcache", layout, qs, ks, 0.1, layer_budget_blend=0.5)
    assert sum(half.layer_budgets) == 80
    assert paper.layer_budgets[0] > half.layer_budgets[0] > uniform.layer_budgets[0]  # dense layer 0
    dens = [1 - g for g in paper.layer_sparsity]
    mixed = [min(1.0, max(0.01, 0.5 * d / sum(dens) * 0.1 * 4 + 0.5 * 0.1)) for d in dens]
    assert half.layer_fractions == pytest.approx(mixed, rel=1e-9)


@pytest.mark.parametrize("bad", [-0.1, 1.01, "0.5", True, None])
def test_vlcache_refuses_a_bad_blend_naming_the_range(bad):
    with pytest.raises(ValueError, match=r"layer_budget_blend .* must be a number in \[0.0, 1.0\]"):
        get_policy("vlcache", layer_budget_blend=bad)
