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
    token_bytes = pool.token_bytes_per_layer()
    report = {
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
    if plan.report_kept:
        report["kept_positions"] = [keep.tolist() for keep in selection.keep]
    return report


def pool_figures(pool: LayerwiseKVPool, allocator: LayerwiseTokenAllocator) -> dict:
    """Pool-level figures for the metrics layer (SGLang's `/get_server_info` -> `internal_states`)."""
    table = allocator.slot_table
    return {
        "physical_slots_total": table.physical_size,
        "physical_slots_used_per_layer": table.used_per_layer(),
        "logical_slots_total": table.logical_size,
        "logical_slots_used": table.logical_size - allocator.logical_available_size(),
        "kv_bytes_per_token_per_layer": pool.token_bytes_per_layer(),
        "compressed_requests": len(pool.views),
    }
