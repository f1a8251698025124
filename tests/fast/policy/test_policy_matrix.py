"""Every policy x budget x prompt layout (kvpress style): each run returns a valid Selection."""

import functools
import math

import pytest
import torch

from radix_ext.policy import PromptLayout, attention_stats, available_policies, get_policy
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


@functools.lru_cache(maxsize=None)
def _qk(layout_name):
    m = LAYOUTS[layout_name].num_tokens
    # Layers of different sharpness, so sparsity-aware budgets differ between layers.
    return random_qk(m, seed=len(layout_name) * 1000 + m, num_layers=NUM_LAYERS, temperatures=[0.3, 1.5, 5.0])


@functools.lru_cache(maxsize=None)
def _stats(layout_name, rows, threshold):
    qs, ks = _qk(layout_name)
    rows = torch.tensor(rows, dtype=torch.long)
    return tuple(
        attention_stats(q[:, rows], k, rows, sparsity_threshold=threshold, row_chunk=16, key_chunk=48)
        for q, k in zip(qs, ks)
    )


def test_matrix_covers_the_expected_policies():
    assert len(POLICIES) >= 9 and {"full", "vlcache", "h2o", "snapkv", "streamingllm"} <= set(POLICIES)


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", POLICIES)
def test_policy_returns_a_valid_selection(name, budget, layout_name):
    layout = LAYOUTS[layout_name]
    m, L = layout.num_tokens, NUM_LAYERS
    policy = get_policy(name)
    rows = policy.query_rows(layout)
    assert rows.dtype == torch.long and bool((rows[1:] > rows[:-1]).all())
    stats = list(_stats(layout_name, tuple(rows.tolist()), policy.sparsity_threshold))
    sel = policy.select(stats, layout, budget)

    assert sel.policy == name and sel.options == policy.options()
    assert sel.budget == budget and sel.num_tokens == m and sel.num_layers == L
    for keep in sel.keep:
        check_valid_keep(keep, m)
    assert sel.layer_budgets == [int(k.numel()) for k in sel.keep]
    assert sel.realized_budget == pytest.approx(sum(sel.layer_budgets) / (L * m))

    uncompressed = name == "full" or budget == 1.0 or (name.startswith("vlcache") and not layout.has_visual)
    assert sel.compressed is (not uncompressed)
    if not sel.compressed:
        assert sel.reason
        assert sel.realized_budget == 1.0
        assert all(torch.equal(k, torch.arange(m)) for k in sel.keep)
        return

    # Every compressing policy, with its default options, hits the total exactly within the bounds.
    lo = max(1, math.ceil(0.01 * m))
    assert all(lo <= k <= m for k in sel.layer_budgets)
    assert sum(sel.layer_budgets) == round(budget * L * m)
    assert sel.realized_budget < 1.0
    for keep, k in zip(sel.keep, sel.layer_budgets):
        w = window_size(k)
        assert keep.tolist()[len(keep) - w:] == list(range(m - w, m))  # recent window kept
    if name in ("vlcache", "h2o_sparsity"):
        assert sel.layer_fractions is not None and len(sel.layer_fractions) == L
        assert sel.layer_budgets[0] > sel.layer_budgets[2]  # the flat layer is denser than the sharp one
    if name in ("vlcache", "vlcache_uniform"):
        assert stats[0].num_rows == len(layout.post_vision_rows())
        assert sel.layer_sparsity == pytest.approx([s.layer_sparsity for s in stats])
