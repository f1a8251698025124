"""Each policy on hand-checkable prompts, the registry, and the error paths."""

import math
from itertools import pairwise

import pytest
import torch

from radix_ext.policy import LayerStats, PromptLayout, attention_stats, available_policies, check_budget, get_policy

from policy_test_helpers import check_valid_keep, random_qk, stats_for

ALL_POLICIES = {
    "full",
    "streamingllm",
    "random",
    "h2o",
    "h2o_sparsity",
    "snapkv",
    "pyramidkv",
    "vlcache",
    "vlcache_uniform",
}
D = 8


def _select(name, layout, qs, ks, budget, **options):
    policy = get_policy(name, **options)
    stats = stats_for(policy, layout, qs, ks)
    return policy, stats, policy.select(stats, layout, budget)


# ---- VL-Cache: the hand-checkable cases of docs/algorithm.md section 6 ----


def _one_key_layer(m, key, dominant=20.0):
    """Keys small and random except `key`, which every query points at: rows put their mass on it."""
    gen = torch.Generator().manual_seed(7)
    k = torch.randn(2, m, D, generator=gen) * 0.1
    k[:, key] = 0.0
    k[:, key, 0] = dominant
    q = torch.zeros(4, m, D)
    q[..., 0] = 5.0
    return q, k


def test_uniform_layer_has_sparsity_zero_and_the_largest_budget():
    m, layout = 100, PromptLayout(100, [(10, 80)])
    qs, ks = random_qk(m, 3, num_layers=3, temperatures=[0.0, 1.0, 6.0])  # layer 0: all-zero queries
    policy, stats, sel = _select("vlcache", layout, qs, ks, 0.1)
    assert sel.compressed
    assert stats[0].sparsity.tolist() == [0.0] * 4
    assert sel.layer_sparsity[0] == 0.0 and 0.0 < sel.layer_sparsity[1] < sel.layer_sparsity[2]
    k = sel.layer_budgets
    assert sum(k) == 30
    assert k[0] > k[1] > k[2], k  # dens = 1 - gamma orders the budgets
    assert sel.layer_fractions[0] == max(sel.layer_fractions)
    # The uniform layer's post-vision column sums fall with position, so it keeps the earliest tokens.
    w = math.ceil(0.1 * k[0])
    assert sel.keep[0].tolist() == list(range(k[0] - w)) + list(range(m - w, m))


def test_one_key_layer_has_sparsity_near_one_and_keeps_that_key():
    m, layout, key = 100, PromptLayout(100, [(10, 80)]), 40
    q, k = _one_key_layer(m, key)
    policy, stats, sel = _select("vlcache", layout, [q], [k], 0.1)
    causal = sum(range(81, 101))  # post-vision rows 80..99
    assert stats[0].layer_sparsity == pytest.approx((causal - 20) / causal, abs=1e-6)  # ~0.989
    assert sel.layer_sparsity[0] > 0.98
    assert key in sel.keep[0].tolist()
    assert sel.layer_budgets == [10]


def test_one_key_layer_gets_the_small_budget_and_still_keeps_its_key():
    m, layout, key = 100, PromptLayout(100, [(10, 80)]), 40
    q, k = _one_key_layer(m, key)
    zero_q = torch.zeros_like(q)
    # Without a recent window the one-key layer's single token is that key.
    policy, stats, sel = _select("vlcache", layout, [q, zero_q], [k, k], 0.1, window_fraction=0.0)
    assert sel.layer_budgets[0] < sel.layer_budgets[1]
    assert sum(sel.layer_budgets) == 20
    assert sel.keep[0].tolist() == [key]


def _h2o_bias_case():
    """Visual span [10, 90); post-vision rows 90..99 attend to visual keys 70..74 only; every earlier row has
    a zero query (uniform attention over its causal prefix)."""
    m, layout = 100, PromptLayout(100, [(10, 90)])
    important = list(range(70, 75))
    k = torch.zeros(2, m, D)
    k[:, important, 0] = 6.0
    q = torch.zeros(4, m, D)
    q[:, 90:, 0] = 6.0
    return layout, [q], [k], important


def test_h2o_keeps_an_early_prefix_where_vlcache_keeps_what_post_vision_rows_read():
    layout, qs, ks, important = _h2o_bias_case()
    # k = 6 tokens, window 1: five scored tokens plus position 99.
    _, _, h2o = _select("h2o", layout, qs, ks, 0.06)
    _, _, vl = _select("vlcache", layout, qs, ks, 0.06)
    _, _, vl_uniform = _select("vlcache_uniform", layout, qs, ks, 0.06)
    assert h2o.keep[0].tolist() == [0, 1, 2, 3, 4, 99]  # early tokens: every row sees them
    assert vl.keep[0].tolist() == important + [99]
    assert vl_uniform.keep[0].tolist() == important + [99]


def test_h2o_scores_fall_with_position_where_post_vision_scores_are_flat():
    # Identical keys: every row attends uniformly to its causal prefix.
    m, layout = 80, PromptLayout(80, [(5, 60)])
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(2, 1, D, generator=gen).expand(2, m, D).contiguous()
    q = torch.randn(4, m, D, generator=gen)
    h2o, vl = get_policy("h2o"), get_policy("vlcache")
    h2o_scores = h2o.token_scores(stats_for(h2o, layout, [q], [k])[0], 0)
    vl_scores = vl.token_scores(stats_for(vl, layout, [q], [k])[0], 0)
    assert bool((h2o_scores[1:] < h2o_scores[:-1]).all())  # strictly favours early positions
    prefix = vl_scores[:60]
    assert float(prefix.max() - prefix.min()) < 1e-5 * float(prefix.mean())  # flat before v = 60
    assert bool((vl_scores[61:] < vl_scores[60:-1]).all())  # falling only inside P
    sel = h2o.select(stats_for(h2o, layout, [q], [k]), layout, 0.25)  # k = 20, window 2
    assert sel.keep[0].tolist() == list(range(18)) + [78, 79]


def test_vlcache_rows_and_skips():
    vl = get_policy("vlcache")
    assert vl.query_rows(PromptLayout(100, [(10, 80)])).tolist() == list(range(80, 100))
    assert vl.query_rows(PromptLayout(100, [(10, 100)])).tolist() == list(range(68, 100))
    assert vl.query_rows(PromptLayout(100)).tolist() == []
    qs, ks = random_qk(100, 1, num_layers=2)
    # No visual token: left whole, whatever the budget.
    _, _, sel = _select("vlcache", PromptLayout(100), qs, ks, 0.1)
    assert not sel.compressed and "visual" in sel.reason and sel.layer_budgets == [100, 100]
    # Prompt ending on a visual token: compressed, scored with the last 32 rows.
    _, stats, sel = _select("vlcache", PromptLayout(100, [(10, 100)]), qs, ks, 0.1)
    assert sel.compressed and stats[0].num_rows == 32 and sum(sel.layer_budgets) == 20
    # Shorter than min_prompt_tokens (64): left whole; min_prompt_tokens=0 compresses it.
    short = PromptLayout(40, [(2, 30)])
    qs40, ks40 = random_qk(40, 2, num_layers=2)
    _, _, sel = _select("vlcache", short, qs40, ks40, 0.1)
    assert not sel.compressed and "min_prompt_tokens" in sel.reason
    _, _, sel = _select("vlcache", short, qs40, ks40, 0.1, min_prompt_tokens=0)
    assert sel.compressed and sum(sel.layer_budgets) == 8


def test_vlcache_needs_sparsity_from_its_query_rows():
    layout = PromptLayout(100, [(10, 80)])
    stats = [LayerStats(sparsity=None, column_sums=torch.rand(4, 100), num_rows=0)]
    with pytest.raises(ValueError, match="sparsity"):
        get_policy("vlcache").select(stats, layout, 0.1)
    # vlcache_uniform only needs the scores
    assert get_policy("vlcache_uniform").select(stats, layout, 0.1).layer_budgets == [10]


def test_vlcache_reports_sparsity_and_unrounded_fractions():
    layout = PromptLayout(120, [(0, 100)])
    qs, ks = random_qk(120, 5, num_layers=3, temperatures=[0.2, 1.0, 3.0])
    _, stats, sel = _select("vlcache", layout, qs, ks, 0.2)
    gammas = [s.layer_sparsity for s in stats]
    assert sel.layer_sparsity == pytest.approx(gammas)
    dens = [1 - g for g in gammas]
    assert sel.layer_fractions == pytest.approx([d / sum(dens) * 0.2 * 3 for d in dens], rel=1e-9)
    assert sel.options["renormalize"] is True
    assert sel.realized_budget == pytest.approx(round(0.2 * 3 * 120) / 360)


def test_vlcache_uniform_and_h2o_sparsity_ablations():
    m, layout = 100, PromptLayout(100, [(10, 80)])
    qs, ks = random_qk(m, 3, num_layers=3, temperatures=[0.0, 1.0, 6.0])
    _, _, uniform = _select("vlcache_uniform", layout, qs, ks, 0.1)
    assert uniform.layer_budgets == [10, 10, 10] and uniform.layer_fractions is None
    assert uniform.layer_sparsity[0] == 0.0
    _, stats, h2o_sp = _select("h2o_sparsity", layout, qs, ks, 0.1)
    assert all(s.num_rows == m for s in stats)  # sparsity over every prompt row
    assert sum(h2o_sp.layer_budgets) == 30 and h2o_sp.layer_budgets[0] > h2o_sp.layer_budgets[2]
    _, _, h2o = _select("h2o", layout, qs, ks, 0.1)
    assert h2o.layer_budgets == [10, 10, 10]


# ---- the other baselines ----


def test_snapkv_pools_a_spike_over_its_neighbours_and_pyramidkv_falls_with_depth():
    m, spike = 100, 30
    q, k = _one_key_layer(m, spike)
    layout = PromptLayout(m)  # baselines compress text-only prompts too
    snap = get_policy("snapkv")
    assert snap.query_rows(layout).tolist() == list(range(68, 100))
    _, stats, sel = _select("snapkv", layout, [q], [k], 0.06)  # k = 6, window 1
    assert stats[0].num_rows == 32
    assert sel.keep[0].tolist() == [28, 29, 30, 31, 32, 99]  # kernel 5 spreads the spike to +-2
    _, _, sel = _select("snapkv", layout, [q], [k], 0.06, pool_kernel=1)
    kept = sel.keep[0].tolist()  # no pooling: the spike and four arbitrary background keys
    assert 30 in kept and len(kept) == 6 and kept != [28, 29, 30, 31, 32, 99]
    qs, ks = random_qk(m, 4, num_layers=4)
    _, _, pyr = _select("pyramidkv", layout, qs, ks, 0.2)
    b = pyr.layer_budgets
    assert sum(b) == 80 and b[0] > b[-1] and all(x >= y for x, y in pairwise(b)), b


def test_streamingllm_keeps_sinks_and_the_most_recent_tokens():
    qs, ks = random_qk(100, 0, num_layers=2)
    policy, stats, sel = _select("streamingllm", PromptLayout(100, [(10, 50)]), qs, ks, 0.1)
    assert policy.query_rows(PromptLayout(100)).numel() == 0 and stats[0].sparsity is None
    assert sel.compressed
    assert all(keep.tolist() == [0, 1, 2, 3] + list(range(94, 100)) for keep in sel.keep)
    _, _, sel = _select("streamingllm", PromptLayout(100), qs, ks, 0.1, sinks=1)
    assert sel.keep[0].tolist() == [0] + list(range(91, 100))


def test_streamingllm_keeps_the_recent_window_even_when_the_budget_is_below_the_sinks():
    # docs/algorithm.md section 5: every baseline keeps the same 10% recent window. k = 3 < 4 sinks: the window
    # (ceil(0.3) = 1 token, position 99) must still be kept.
    qs, ks = random_qk(100, 0)
    _, _, sel = _select("streamingllm", PromptLayout(100), qs, ks, 0.03)
    assert sel.layer_budgets == [3]
    assert 99 in sel.keep[0].tolist(), sel.keep[0].tolist()


def test_random_is_seeded_per_layer_and_keeps_the_window():
    layout = PromptLayout(200)
    qs, ks = random_qk(200, 0, num_layers=3)
    _, _, a = _select("random", layout, qs, ks, 0.1)
    _, _, b = _select("random", layout, qs, ks, 0.1)
    _, _, c = _select("random", layout, qs, ks, 0.1, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.keep, b.keep, strict=True))
    assert not torch.equal(a.keep[0], c.keep[0])
    assert not torch.equal(a.keep[0], a.keep[1])
    assert a.layer_budgets == [20, 20, 20]
    for keep in a.keep:
        check_valid_keep(keep, 200)
        assert keep.tolist()[-2:] == [198, 199]
        assert keep.tolist()[:18] != list(range(18))  # not a prefix: actually random


def test_full_keeps_everything_at_any_budget():
    qs, ks = random_qk(100, 0, num_layers=2)
    _, _, sel = _select("full", PromptLayout(100, [(0, 50)]), qs, ks, 0.05)
    assert not sel.compressed and sel.reason
    assert all(torch.equal(k, torch.arange(100)) for k in sel.keep)


# ---- registry and errors ----


def test_registry_and_defaults():
    assert set(available_policies()) == ALL_POLICIES
    assert available_policies() == sorted(available_policies())
    vl = get_policy("vlcache")
    assert (vl.renormalize, vl.window_fraction, vl.sparsity_threshold, vl.min_prompt_tokens) == (True, 0.1, 0.01, 64)
    snap = get_policy("snapkv")
    assert (snap.observation_window, snap.pool_kernel) == (32, 5)
    assert get_policy("streamingllm").sinks == 4
    assert get_policy("pyramidkv").pyramid_beta == 20
    assert get_policy("vlcache", renormalize=False).options()["renormalize"] is False
    assert get_policy("h2o").query_rows(PromptLayout(7)).tolist() == list(range(7))


def test_unknown_policy_names_what_is_available():
    with pytest.raises(ValueError) as info:
        get_policy("vl-cache")
    message = str(info.value)
    assert "vl-cache" in message
    assert all(name in message for name in ALL_POLICIES)


def test_unknown_option_names_what_is_allowed():
    with pytest.raises(ValueError) as info:
        get_policy("vlcache", budget=0.1)
    message = str(info.value)
    assert "budget" in message
    assert all(o in message for o in ("renormalize", "window_fraction", "sparsity_threshold", "min_prompt_tokens"))
    with pytest.raises(ValueError, match="sinks"):
        get_policy("full", sinks=2)  # an option of another policy


@pytest.mark.parametrize("name", sorted(ALL_POLICIES))
@pytest.mark.parametrize("budget", [0, 0.0, -1, 1.5, float("nan"), "0.5", None])
def test_select_rejects_budgets_outside_0_1(name, budget):
    layout = PromptLayout(100, [(10, 80)])
    qs, ks = random_qk(100, 0)
    policy = get_policy(name)
    stats = stats_for(policy, layout, qs, ks)
    with pytest.raises(ValueError):
        policy.select(stats, layout, budget)


def test_check_budget_accepts_the_half_open_interval():
    for ok in (1e-9, 0.1, 1, 1.0):
        check_budget(ok)
    with pytest.raises(ValueError):
        check_budget(1.0000001)


def test_select_rejects_missing_or_mismatched_stats():
    layout = PromptLayout(100, [(10, 80)])
    policy = get_policy("vlcache")
    with pytest.raises(ValueError):
        policy.select([], layout, 0.1)
    stats = attention_stats(torch.zeros(4, 2, D), torch.zeros(2, 99, D), torch.tensor([97, 98]))
    with pytest.raises(ValueError):
        policy.select([stats], layout, 0.1)  # 99 keys for a 100-token prompt
