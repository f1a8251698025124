"""`VLCacheRadixCache`: SGLang's classic radix tree, aware of compressed requests.

Uncompressed requests behave exactly as stock (prefix sharing of text and images included).
A request that will be compressed never inserts its decode KV (`skip_radix_cache_insert`, set at
admission: that KV was computed over a compressed context, it is not the KV of its tokens), and its
prefix match stops before the first row its policy scores, so every scored row is computed. Under
`reuse: lazy` its prompt KV (full, exact) is handed to the tree at compression (`hand_over_prompt`),
as ordinary evictable cache for a follow-up turn (`docs/multiturn.md`).
"""

from __future__ import annotations

import dataclasses

import torch
from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey


class VLCacheRadixCache(RadixCache):
    def match_prefix(self, params: MatchPrefixParams):
        plan = self._plan(params.req)
        if plan is not None and plan.will_compress and len(params.key) > plan.first_scored_row:
            params = dataclasses.replace(params, key=params.key[: plan.first_scored_row])
        return super().match_prefix(params)

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
