"""Compression after the last prefill chunk, on the scheduler thread, between two forwards.

Selects with the request's policy and installs its per-layer view; from then on the request holds, in
layer `l`, exactly its `kept[l]` prompt tokens plus its decode tokens. What happens to the rest depends
on the request's `reuse` mode (`docs/multiturn.md`):

- `lazy`: the kept tokens are copied into private slots of the request (its row points at them), and
  the whole prompt KV, exact, goes to the radix tree as ordinary evictable cache (the request drops its
  lock on the matched prefix too), so a follow-up turn gets a prefix hit and memory pressure reclaims it;
- `compressed`: as `off` now, then the request may enter the tree again: SGLang checkpoints its prompt
  right after this step and its output at finish, compressed (slots held in the kept layers only),
  under its policy's namespace. A follow-up that read such a prefix is not compressed again:
  `compress_request` only reports what it holds;
- `off` (or no room for the copy): the evicted tokens' physical slots that the request owns alone are
  freed at once, per layer; tokens below `cache_protected_len` belong to the tree (a shared prefix):
  the request stops reading them but they stay with the tree, locked until the request ends.
"""

from __future__ import annotations

import torch

from radix_ext.contract import KVReport
from radix_ext.policy import Selection
from radix_ext.sglang.layerwise_allocator import LayerwiseTokenAllocator
from radix_ext.sglang.layerwise_pool import LayerwiseKVPool, RequestView
from radix_ext.sglang.request_plan import CompressionPlan, Stopwatch


def compress_request(
    req, plan: CompressionPlan, pool: LayerwiseKVPool, allocator: LayerwiseTokenAllocator, req_to_token, tree=None
) -> dict:
    """Apply `plan` to `req` (its prompt KV is complete); returns the per-request report. `tree` is the
    `VLCacheRadixCache` (None: as `reuse: off`)."""
    m, num_layers = plan.layout.num_tokens, pool.layer_num
    if plan.reuse == "compressed":  # from now on SGLang checkpoints it into its namespace, as any request
        req.skip_radix_cache_insert = plan.client_skip_insert
    if plan.reused_prefix:  # a follow-up over a compressed turn: nothing to select or free, only to report
        selection, freed, scoring_s = _held_by_follow_up(req, plan, allocator, req_to_token), [0] * num_layers, 0.0
    else:
        with Stopwatch() as watch:
            stats = plan.layer_stats(num_layers, pool.head_num)
            selection = plan.policy.select(stats, plan.layout, plan.budget)
        scoring_s = plan.scoring_s + watch.seconds
        if selection.compressed:
            freed = _evict(req, plan, selection.keep, pool, allocator, req_to_token, tree)
            pool.views[req.kv.req_pool_idx] = RequestView(prompt_len=m, kept=selection.keep)
        else:
            freed = [0] * num_layers
            if plan.reuse == "lazy":  # full KV after all (budget 1, short prompt): stock, tree insertion included
                req.skip_radix_cache_insert = plan.client_skip_insert
    token_bytes = pool.token_bytes_per_layer()
    return KVReport(  # the wire contract with the gateway (radix_ext/contract.py)
        policy=selection.policy,
        budget=plan.budget,
        compressed=selection.compressed,
        reason=selection.reason,
        prompt_tokens=m,
        visual_tokens=plan.layout.num_visual_tokens,
        kept_tokens_per_layer=selection.layer_budgets,
        freed_slots_per_layer=freed,
        layer_sparsity=selection.layer_sparsity,
        kv_bytes_full=token_bytes * m * num_layers,
        kv_bytes_kept=token_bytes * sum(selection.layer_budgets),
        realized_budget=selection.realized_budget,
        scoring_ms=scoring_s * 1000.0,
        kept_positions=[keep.tolist() for keep in selection.keep] if plan.report_kept else None,
        reused_prefix_tokens=plan.reused_prefix or None,
    ).to_wire()


def _held_by_follow_up(req, plan, allocator, req_to_token) -> Selection:
    """What a follow-up over a compressed prefix (`reuse: compressed`) holds, read from the slot table:
    in layer `l`, the prefix positions the earlier turn kept there, then all of its own tokens."""
    m = plan.layout.num_tokens
    held = allocator.slot_table.phys[:, req_to_token[req.kv.req_pool_idx, :m].to(torch.int64)] != 0  # [L, m]
    keep = [row.nonzero().flatten() for row in held]
    compressed = int(held.sum()) < held.numel()
    reason = "" if compressed else "the reused prefix was not compressed"
    return Selection(plan.policy.name, plan.policy.options(), plan.budget, m, keep, compressed, reason=reason)


def _evict(req, plan, keep, pool, allocator, req_to_token, tree) -> list[int]:
    """Stop holding what the request no longer reads; returns, per layer, how many prompt slots it let go
    (freed, or left to the tree as evictable cache)."""
    m = plan.layout.num_tokens
    row = req.kv.req_pool_idx
    logical = req_to_token[row, :m].to(torch.int64)
    if plan.reuse == "lazy" and tree is not None:
        private = _private_copy(logical, keep, pool, allocator, tree)
        if private is not None:
            tree.hand_over_prompt(req, m)
            req_to_token[row, :m] = private.to(req_to_token.dtype)
            req.kv.cache_protected_len = 0  # the whole row is the request's own now: SGLang frees it at release
            return [m - k.numel() for k in keep]
    owned_from = min(int(req.kv.cache_protected_len), m)
    freed = []
    for layer, k in enumerate(keep):
        evict = torch.ones(m, dtype=torch.bool)
        evict[k] = False
        evict[:owned_from] = False
        freed.append(allocator.evict_layer_slots(layer, logical[evict]))
    return freed


def _private_copy(logical, keep, pool, allocator, tree):
    """m new logical slots for the request's prompt positions, holding a physical slot (a copy of the
    K/V) only in the layers that keep that position; None if they do not fit even after evicting
    unlocked tree cache (the request's own matched prefix is still locked: never evicted here)."""
    m, table = logical.numel(), allocator.slot_table
    need = [k.numel() for k in keep]

    def shortfall():
        free = table.free_per_layer()
        return max(m - allocator.logical_available_size(), *(n - f for n, f in zip(need, free, strict=True)))

    tree.evict_until(shortfall)
    if shortfall() > 0:
        return None
    private = allocator.alloc_unbacked(m)
    try:
        for layer, k in enumerate(keep):
            dst = allocator.attach(layer, private[k])
            pool.copy_slots(layer, table.physical(layer, logical[k]), dst)
    except Exception:
        allocator.free(private)  # nothing else changed yet: the request still owns its original row
        raise
    return private


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
        "integrity_at_last_flush": allocator.integrity_at_last_flush,
    }
