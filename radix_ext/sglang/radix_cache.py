"""`VLCacheRadixCache`: SGLang's classic radix tree, aware of compressed requests.

Uncompressed requests behave exactly as stock (prefix sharing of text and images included).
A request that will be compressed never inserts its decode KV (`skip_radix_cache_insert`, set at
admission: that KV was computed over a compressed context, it is not the KV of its tokens), and its
prefix match stops before the first row its policy scores, so every scored row is computed. Under
`reuse: lazy` its prompt KV (full, exact) is handed to the tree at compression (`hand_over_prompt`),
as ordinary evictable cache for a follow-up turn (`docs/multiturn.md`). Under `reuse: compressed` the
request lives in a namespace of its own (`extra_key`, `CompressionPlan.cache_namespace`): it enters the
tree once compressed (SGLang's checkpoint right after compression, and at finish; its logical slots
hold physical slots only in the layers that kept them), and a follow-up whose match covers its images
reads that prefix as it is (any other match in the namespace is dropped: the request starts over).

Such partly backed slots make the tree's token count overstate what evicting gives back, so the tree
also counts, per layer, the evictable slots that hold no physical slot there (`missing_per_layer`), and
`evictable_size` reports what eviction can really make allocatable in the fullest layer.
"""

from __future__ import annotations

import dataclasses

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey


class VLCacheRadixCache(RadixCache):
    def reset(self):
        super().reset()
        self.missing_per_layer = None  # [L] int64, made on first use (the allocator knows L)

    def match_prefix(self, params: MatchPrefixParams):
        plan = self._plan(params.req)
        if plan is not None and plan.reuse == "compressed":
            result = super().match_prefix(params)
            plan.reused_prefix = plan.usable_compressed_prefix(result.device_prefix_len)
            return result if plan.reused_prefix == result.device_prefix_len else self._empty_match_result
        if plan is not None and plan.will_compress and len(params.key) > plan.first_scored_row:
            params = dataclasses.replace(params, key=params.key[: plan.first_scored_row])
        return super().match_prefix(params)

    # --- evictable memory, per layer ---------------------------------------------------------------

    def evictable_size(self):
        """Logical slots eviction could make allocatable: `min(logical, fullest layer's physical)` free
        after evicting every unlocked node, minus what is free now (stock's count when nothing in the
        tree is partly backed; `available + evictable` is then the pool size when idle, as SGLang checks)."""
        missing = self._missing()
        if not bool(missing.any()):
            return self.evictable_size_
        allocator = self.token_to_kv_pool_allocator
        stock = self.evictable_size_
        reachable = min(
            allocator.logical_available_size() + stock,
            *(
                free + stock - int(gap)
                for free, gap in zip(allocator.slot_table.free_per_layer(), missing, strict=True)
            ),
        )
        return max(0, reachable - allocator.available_size())

    def evict_until(self, shortfall) -> None:
        """Evict LRU cache until `shortfall()` (slots still missing) is <= 0 or nothing is left to evict:
        a partly backed node gives back fewer physical slots than tokens, so one `evict` may not do."""
        while (need := shortfall()) > 0:
            if not self.evict(EvictParams(num_tokens=need)).num_tokens_evicted:
                return

    def inc_lock_ref(self, node):
        self._count_missing(self._path(node, lock_ref=0), -1)  # leaving the evictable set
        return super().inc_lock_ref(node)

    def dec_lock_ref(self, node, params=None):
        self._count_missing(self._path(node, lock_ref=1), +1)  # joining it
        return super().dec_lock_ref(node, params)

    def _insert_helper(self, node, key, value, priority=0, inserted_len=0):
        prefix_len, last = super()._insert_helper(node, key, value, priority, inserted_len)
        if prefix_len < len(key):  # a new, unlocked leaf holding value[prefix_len:]
            last.vl_missing = self._missing_of(last.value)
            self._count_missing([last], +1)
        return prefix_len, last

    def _split_node(self, key, child, split_len):
        new_node = super()._split_node(key, child, split_len)
        if hasattr(child, "vl_missing"):  # the two halves share the count: the total stays as counted
            new_node.vl_missing = self._missing_of(new_node.value)
            child.vl_missing = child.vl_missing - new_node.vl_missing
        return new_node

    def _delete_leaf(self, node):
        self._count_missing([node], -1)  # only unlocked leaves are deleted
        super()._delete_leaf(node)

    def _path(self, node, lock_ref: int) -> list:
        out = []
        while node is not None and node is not self.root_node:
            if node.lock_ref == lock_ref:
                out.append(node)
            node = node.parent
        return out

    def _missing(self) -> torch.Tensor:
        if self.missing_per_layer is None:
            table = self.token_to_kv_pool_allocator.slot_table
            self.missing_per_layer = torch.zeros(table.num_layers, dtype=torch.int64, device=table.device)
        return self.missing_per_layer

    def _missing_of(self, value) -> torch.Tensor:
        """`[L]`: how many of `value`'s logical slots hold no physical slot in each layer."""
        return (self.token_to_kv_pool_allocator.slot_table.phys[:, value] == 0).sum(1)

    def _count_missing(self, nodes, sign: int) -> None:
        """Each node adds and later removes the count recorded when it entered the tree (`vl_missing`)."""
        for node in nodes:
            if getattr(node, "vl_missing", None) is not None:
                self._missing().add_(node.vl_missing * sign)

    def hand_over_prompt(self, req, m: int) -> None:
        """The tree takes the request's prompt slots `req_to_token[row, :m]` as evictable cache and the
        request's tree lock is dropped: afterwards the request owns none of these slots and reads none
        of them (the caller has already made its private copy and rewrites the row after this call).

        Same bookkeeping as stock `_insert_cache`: slots of ours that duplicate what the tree already
        holds (`[cache_protected_len, prefix_len)`, inserted meanwhile by another request) are freed.
        """
        row = self.req_to_token_pool.req_to_token[req.kv.req_pool_idx, :m]
        key = RadixKey(req.origin_input_ids[:m], req.extra_key, cache_salt=req.cache_salt)
        result = self.insert(
            InsertParams(
                key=key,
                value=row.to(dtype=torch.int64, copy=True),
                inserted_len=req.kv.cache_inserted_len,
                priority=req.priority or 0,
            )
        )
        protected = int(req.kv.cache_protected_len)
        if result.prefix_len > protected:
            self.token_to_kv_pool_allocator.free(row[protected : result.prefix_len].to(torch.int64))
        req.kv.cache_inserted_len = max(req.kv.cache_inserted_len, m)
        self.unlock(req.lock)
        req.lock, req.last_node = None, self.root_node

    def on_release(self, req, *, checkpointed: bool) -> None:
        """The request gave back its row and slots: forget its view and plan."""
        pool = self.token_to_kv_pool_allocator.get_kvcache()
        pool.views.pop(req.kv.req_pool_idx, None)
        pool.plans.pop(req.rid, None)
        super().on_release(req, checkpointed=checkpointed)

    def _plan(self, req):
        if req is None:
            return None
        return self.token_to_kv_pool_allocator.get_kvcache().plans.get(req.rid)
