"""Compression after the last prefill chunk, on the scheduler thread, between two forwards.

Selects with the request's policy, installs its per-layer view, and frees at once, in each layer, the
physical slots of evicted tokens the request owns alone. Tokens below `cache_protected_len` belong to
the radix tree (a shared prefix): the request stops reading them but they stay with the tree.
"""

from __future__ import annotations

import torch

from radix_ext.sglang.layerwise_allocator import LayerwiseTokenAllocator
from radix_ext.sglang.layerwise_pool import LayerwiseKVPool, RequestView
from radix_ext.sglang.request_plan import CompressionPlan, Stopwatch


def compress_request(req, plan: CompressionPlan, pool: LayerwiseKVPool, allocator: LayerwiseTokenAllocator, req_to_token) -> dict:
    """Apply `plan` to `req` (its prompt KV is complete); returns the per-request report."""
    m, num_layers = plan.layout.num_tokens, pool.layer_num
    with Stopwatch() as watch:
        stats = plan.layer_stats(num_layers, pool.head_num)
        selection = plan.policy.select(stats, plan.layout, plan.budget)
    freed = [0] * num_layers
    if selection.compressed:
        row = req.kv.req_pool_idx
        logical = req_to_token[row, :m].to(torch.int64)
        owned_from = min(int(req.kv.cache_protected_len), m)
        for layer, keep in enumerate(selection.keep):
            evict = torch.ones(m, dtype=torch.bool)
            evict[keep] = False
            evict[:owned_from] = False
            freed[layer] = allocator.evict_layer_slots(layer, logical[evict])
        pool.views[row] = RequestView(prompt_len=m, kept=selection.keep)
    plan.parts = []  # the column sums are no longer needed
    token_bytes = pool.token_bytes_per_layer()
    return {
        "policy": selection.policy,
        "budget": plan.budget,
        "compressed": selection.compressed,
        "reason": selection.reason,
        "prompt_tokens": m,
        "visual_tokens": plan.layout.num_visual_tokens,
        "kept_tokens_per_layer": selection.layer_budgets,
        "freed_slots_per_layer": freed,
        "layer_sparsity": selection.layer_sparsity,
        "kv_bytes_full": token_bytes * m * num_layers,
        "kv_bytes_kept": token_bytes * sum(selection.layer_budgets),
        "realized_budget": selection.realized_budget,
        "scoring_ms": (plan.scoring_s + watch.seconds) * 1000.0,
    }
