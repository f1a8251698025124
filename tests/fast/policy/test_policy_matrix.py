"""Every policy x option set x budget x prompt layout (kvpress style): each run returns a valid Selection.

Not only the defaults: `OPTION_SETS` gives each policy several option sets (windows, thresholds, pooling
kernels, observation windows, sinks, seeds, layer-budget blends, the literal rounding), and
`test_every_option_is_in_the_matrix` fails when a policy gains an option no set exercises. The
invariants every run must keep are checked in `test_policy_returns_a_valid_selection`; what each option
is *for* is checked by the small tests after it.
"""

import dataclasses
import functools
import math
from itertools import pairwise

import pytest
import torch

from radix_ext.policy import PromptLayout, attention_stats, available_policies, get_policy
from radix_ext.policy.budgets import uniform_counts

from policy_test_helpers import check_valid_keep, random_qk, window_size

NUM_LAYERS = 3
LAYOUTS = {
    "one_image": PromptLayout(128, [(10, 100)]),
    "two_images": PromptLayout(140, [(5, 45), (50, 110)]),
    "video": PromptLayout(160, [(8, 30), (30, 52), (52, 74), (74, 96), (96, 118)]),  # consecutive frames
    "image_at_end": PromptLayout(112, [(12, 112)]),  # no text after the image: last 32 rows
    "no_image": PromptLayout(100),
}
BUDGETS = [0.05, 0.1, 0.5, 1.0]
POLICIES = available_policies()

# Per policy: the defaults ({}) and option sets that change what the policy does.
OPTION_SETS = {
    "vlcache": [
        {},
        {"renormalize": False},
        {"window_fraction": 0.0},
        {"window_fraction": 0.3},
        {"sparsity_threshold": 0.001},
        {"sparsity_threshold": 0.2},
        {"layer_budget_blend": 0.0},
        {"layer_budget_blend": 0.5},
        {"layer_budget_blend": 0.5, "renormalize": False},
        {"min_prompt_tokens": 0},
        {"min_prompt_tokens": 130},  # longer than some layouts: those are left whole
    ],
    "vlcache_uniform": [{}, {"window_fraction": 0.25}, {"sparsity_threshold": 0.05}, {"min_prompt_tokens": 120}],
    "h2o": [
        {},
        {"window_fraction": 0.0},
        {"window_fraction": 1.0},
        {"sparsity_threshold": 0.1, "min_prompt_tokens": 0},
    ],
    "h2o_sparsity": [
        {},
        {"renormalize": False},
        {"sparsity_threshold": 0.05},
        {"window_fraction": 0.2, "min_prompt_tokens": 120},
    ],
    "snapkv": [
        {},
        {"observation_window": 8},
        {"observation_window": 200},  # longer than every prompt: every row
        {"pool_kernel": 1},
        {"pool_kernel": 9, "window_fraction": 0.05},
        {"sparsity_threshold": 0.1, "min_prompt_tokens": 150},
    ],
    "pyramidkv": [
        {},
        {"pyramid_beta": 2},
        {"pyramid_beta": 100, "observation_window": 16},
        {"pool_kernel": 3, "window_fraction": 0.2, "sparsity_threshold": 0.05, "min_prompt_tokens": 0},
    ],
    "streamingllm": [{}, {"sinks": 0}, {"sinks": 16}, {"min_prompt_tokens": 110}],
    "random": [{}, {"seed": 7}, {"window_fraction": 0.5}, {"min_prompt_tokens": 0}],
    "full": [{}],
}
# Options that cannot change a policy's output: `full` keeps everything, and policies that score no rows
# compute no sparsity.
INERT_OPTIONS = {
    "full": {"min_prompt_tokens", "sparsity_threshold"},
    "streamingllm": {"sparsity_threshold"},
    "random": {"sparsity_threshold"},
}
CASES = [(name, options) for name in POLICIES for options in OPTION_SETS[name]]


def _case_id(case):
    name, options = case
    return name + "".join(f"-{key}={value}" for key, value in options.items())


@functools.cache
def _qk(layout_name):
    m = LAYOUTS[layout_name].num_tokens
    # Layers of different sharpness, so sparsity-aware budgets differ between layers.
    return random_qk(m, seed=len(layout_name) * 1000 + m, num_layers=NUM_LAYERS, temperatures=[0.3, 1.5, 5.0])


@functools.cache
def _stats(layout_name, rows, threshold):
    qs, ks = _qk(layout_name)
    rows = torch.tensor(rows, dtype=torch.long)
    return tuple(
        attention_stats(q[:, rows], k, rows, sparsity_threshold=threshold, row_chunk=16, key_chunk=48)
        for q, k in zip(qs, ks, strict=True)
    )


def _select(name, options, layout_name, budget):
    """What an engine does: the policy's rows, their stats at the policy's threshold, then `select`."""
    policy = get_policy(name, **options)
    layout = LAYOUTS[layout_name]
    rows = policy.query_rows(layout)
    stats = list(_stats(layout_name, tuple(rows.tolist()), policy.sparsity_threshold))
    return policy, stats, policy.select(stats, layout, budget)


def test_matrix_covers_the_expected_policies():
    assert len(POLICIES) >= 9 and {"full", "vlcache", "h2o", "snapkv", "streamingllm"} <= set(POLICIES)
    assert set(OPTION_SETS) == set(POLICIES)


@pytest.mark.parametrize("name", POLICIES)
def test_every_option_is_in_the_matrix(name):
    """Each option of each policy takes a non-default value in at least one of its option sets."""
    defaults = get_policy(name).options()
    exercised = {key for options in OPTION_SETS[name] for key, value in options.items() if value != defaults[key]}
    missing = set(defaults) - exercised - INERT_OPTIONS.get(name, set())
    assert not missing, f"policy {name!r}: no option set of the matrix exercises {sorted(missing)}"


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_policy_returns_a_valid_selection(case, budget, layout_name):
    name, options = case
    layout = LAYOUTS[layout_name]
    m, L = layout.num_tokens, NUM_LAYERS
    policy, stats, sel = _select(name, options, layout_name, budget)
    rows = policy.query_rows(layout)
    assert rows.dtype == torch.long and bool((rows[1:] > rows[:-1]).all())

    assert sel.policy == name and sel.options == policy.options()
    assert sel.budget == budget and sel.num_tokens == m and sel.num_layers == L
    for keep in sel.keep:
        check_valid_keep(keep, m)
    assert sel.layer_budgets == [int(k.numel()) for k in sel.keep]
    assert sel.realized_budget == pytest.approx(sum(sel.layer_budgets) / (L * m))

    uncompressed = (
        name == "full"
        or budget == 1.0
        or m < max(1, policy.min_prompt_tokens)
        or (name.startswith("vlcache") and not layout.has_visual)
    )
    assert sel.compressed is (not uncompressed)
    if not sel.compressed:
        assert sel.reason
        assert sel.realized_budget == 1.0
        assert all(torch.equal(k, torch.arange(m)) for k in sel.keep)
        return

    lo = max(1, math.ceil(0.01 * m))
    if options.get("renormalize", True):
        # Every compressing policy, with exact totals (the default), hits the total within the bounds.
        assert all(lo <= k <= m for k in sel.layer_budgets)
        assert sum(sel.layer_budgets) == round(budget * L * m)
    else:  # the paper's literal rounding of the unrounded fractions
        assert sel.layer_budgets == [max(1, math.floor(b * m)) for b in sel.layer_fractions]
    assert sel.realized_budget < 1.0

    fraction = options.get("window_fraction", 0.1)
    for keep, k in zip(sel.keep, sel.layer_budgets, strict=True):
        w = window_size(k, fraction)
        assert keep.tolist()[len(keep) - w :] == list(range(m - w, m))  # recent window kept
        if name == "streamingllm":  # sinks first (giving way to the window), then the most recent tokens
            sinks = min(policy.sinks, k - w)
            assert keep.tolist() == list(range(sinks)) + list(range(m - (k - sinks), m))

    if name in ("vlcache", "h2o_sparsity"):
        assert sel.layer_fractions is not None and len(sel.layer_fractions) == L
        if options.get("layer_budget_blend", 1.0) > 0:
            assert sel.layer_budgets[0] > sel.layer_budgets[2]  # the flat layer is denser than the sharp one
    if name.startswith("vlcache"):
        assert stats[0].num_rows == len(layout.post_vision_rows())
    if rows.numel():  # every scored policy reports the sparsity its stats carry, at its own threshold
        assert sel.layer_sparsity == pytest.approx([s.layer_sparsity for s in stats])


# ---- what each option is for --------------------------------------------------------------------------

VISUAL_LAYOUTS = [name for name, layout in LAYOUTS.items() if layout.has_visual]


@pytest.mark.parametrize("layout_name", VISUAL_LAYOUTS)
@pytest.mark.parametrize("budget", [0.05, 0.1, 0.5])
def test_layer_budget_blend_moves_from_uniform_to_sparsity_aware(layout_name, budget):
    m = LAYOUTS[layout_name].num_tokens
    counts = [
        _select("vlcache", {"layer_budget_blend": blend}, layout_name, budget)[2].layer_budgets
        for blend in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert counts[0] == uniform_counts(NUM_LAYERS, budget, m)  # blend 0: uniform budgets
    uniform = _select("vlcache_uniform", {}, layout_name, budget)[2]
    assert counts[0] == uniform.layer_budgets
    assert all(sum(c) == round(budget * NUM_LAYERS * m) for c in counts)
    # The dense first layer gains and the sharp last one loses, step by step, as the blend grows.
    assert all(a[0] <= b[0] and a[-1] >= b[-1] for a, b in pairwise(counts)), counts
    assert counts[-1][0] > counts[0][0]


@pytest.mark.parametrize("layout_name", VISUAL_LAYOUTS)
def test_a_higher_sparsity_threshold_counts_more_entries_as_sparse(layout_name):
    sparsity = [
        _select("vlcache", {"sparsity_threshold": p}, layout_name, 0.1)[2].layer_sparsity for p in (0.001, 0.01, 0.2)
    ]
    for low, high in pairwise(sparsity):
        assert all(a <= b for a, b in zip(low, high, strict=True)), sparsity
    assert sum(sparsity[-1]) > sum(sparsity[0])


@pytest.mark.parametrize("name", ["h2o", "snapkv", "random"])
def test_window_fraction_one_keeps_only_the_most_recent_tokens(name):
    sel = _select(name, {"window_fraction": 1.0}, "one_image", 0.1)[2]
    for keep, k in zip(sel.keep, sel.layer_budgets, strict=True):
        assert keep.tolist() == list(range(128 - k, 128))


@pytest.mark.parametrize("window", [1, 8, 32, 200])
def test_observation_window_sets_the_rows_snapkv_scores(window):
    layout = LAYOUTS["two_images"]
    rows = get_policy("snapkv", observation_window=window).query_rows(layout)
    assert rows.tolist() == list(range(max(0, layout.num_tokens - window), layout.num_tokens))


def test_pool_kernel_smooths_the_scores():
    raw = _select("snapkv", {"pool_kernel": 1}, "one_image", 0.1)
    pooled = _select("snapkv", {"pool_kernel": 9}, "one_image", 0.1)
    policy, stats, _ = raw
    assert torch.equal(policy.token_scores(stats[0], 0), stats[0].column_sums.sum(0))  # kernel 1: no pooling
    assert any(not torch.equal(a, b) for a, b in zip(raw[2].keep, pooled[2].keep, strict=True))


@pytest.mark.parametrize("budget", [0.1, 0.5])
def test_a_larger_pyramid_beta_makes_a_steeper_pyramid(budget):
    spans = []
    for beta in (2, 20, 100):
        counts = _select("pyramidkv", {"pyramid_beta": beta}, "video", budget)[2].layer_budgets
        assert all(a >= b for a, b in pairwise(counts)), counts  # never grows with depth
        spans.append(counts[0] - counts[-1])
    assert spans == sorted(spans) and spans[-1] > spans[0], spans


def test_random_seed_is_deterministic_and_matters():
    first = _select("random", {"seed": 7}, "two_images", 0.1)[2].keep
    again = _select("random", {"seed": 7}, "two_images", 0.1)[2].keep
    other = _select("random", {"seed": 0}, "two_images", 0.1)[2].keep
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_option_sets_are_valid_options():
    for name, option_sets in OPTION_SETS.items():
        fields = {f.name for f in dataclasses.fields(type(get_policy(name)))}
        for options in option_sets:
            assert set(options) <= fields, (name, options)
