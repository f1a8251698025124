"""`VLCacheRadixCache`: SGLang's classic radix tree, aware of compressed requests.

Uncompressed requests behave exactly as stock (prefix sharing of text and images included).
A request that will be compressed never inserts its KV (`skip_radix_cache_insert`, set at admission),
and its prefix match stops before the first row its policy scores, so every scored row is computed.
"""

from __future__ import annotations

import dataclasses

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixCache


class VLCacheRadixCache(RadixCache):
    def match_prefix(self, params: MatchPrefixParams):
        plan = self._plan(params.req)
        if plan is not None and plan.will_compress and len(params.key) > plan.first_scored_row:
            params = dataclasses.replace(params, key=params.key[: plan.first_scored_row])
        return super().match_prefix(params)

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
