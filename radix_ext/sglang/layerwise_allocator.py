"""`LayerwiseTokenAllocator`: logical slots for SGLang, physical slots per layer underneath."""

from __future__ import annotations

import logging

import torch
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator

from radix_ext.sglang.layerwise_pool import LayerwiseKVPool
from radix_ext.sglang.slot_table import LayerSlotTable

logger = logging.getLogger("radix_ext.sglang")


class LayerwiseTokenAllocator(TokenToKVPoolAllocator):
    """Hands out logical slots (`logical_size` of them, more than the `physical_size` per layer: logical
    slots are cheap indices) and, with each, one physical slot per layer.

    Admission sees `available_size() = min(logical free, min over layers of physical free)`, so the
    scheduler never admits what some layer cannot hold. Freeing a logical slot frees whatever physical
    slots it still holds (a second free of the same slot raises); `evict_layer_slots` frees one layer's
    slots of a live request (compression); `alloc_unbacked` + `attach` build a compressed request's
    private copy of its kept tokens (`docs/multiturn.md`).
    """

    def __init__(self, physical_size: int, logical_size: int, dtype, device, kvcache: LayerwiseKVPool, need_sort: bool):
        self.slot_table = LayerSlotTable(kvcache.layer_num, physical_size, logical_size, device)
        self.integrity_at_last_flush = "never flushed"
        super().__init__(logical_size, dtype, device, kvcache, need_sort)  # calls clear()
        kvcache.slot_table = self.slot_table

    def clear(self):
        """`flush_cache` (server idle): every slot free, no view or plan left behind. The slot accounting
        is checked first (idle is the cheap moment) and the outcome kept for the pool figures."""
        if getattr(self, "free_pages", None) is not None:  # not the first clear, from __init__
            try:
                self.check_integrity()
                self.integrity_at_last_flush = "ok"
            except AssertionError as error:
                self.integrity_at_last_flush = f"violated: {error}"
                logger.error("vlcache: slot accounting violated before a flush: %s", error)
        super().clear()
        self.slot_table.clear()
        pool = self.get_kvcache()
        if isinstance(pool, LayerwiseKVPool) and hasattr(pool, "views"):
            pool.views.clear()
            pool.plans.clear()

    def logical_available_size(self) -> int:
        return super().available_size()

    def available_size(self):
        return min(self.logical_available_size(), self.slot_table.min_free())

    def alloc(self, need_size: int):
        if need_size > self.slot_table.min_free():
            return None
        logical = super().alloc(need_size)
        if logical is not None:
            self.slot_table.allocate(logical)
        return logical

    def evict_to_free_tokens(self, tree_cache, num_tokens: int):
        """Stock eviction, then more until `num_tokens` are allocatable in every layer or the tree has
        nothing unlocked left: a compressed tree node gives back fewer physical slots than its tokens."""
        super().evict_to_free_tokens(tree_cache, num_tokens)
        if tree_cache is not None and tree_cache.supports_prefix_sharing():  # always our VLCacheRadixCache
            tree_cache.evict_until(lambda: num_tokens - self.available_size())

    def alloc_unbacked(self, need_size: int):
        """Logical slots holding no physical slot in any layer (None if too few are free)."""
        logical = super().alloc(need_size)
        if logical is not None:
            self.slot_table.adopt(logical)
        return logical

    def attach(self, layer: int, logical: torch.Tensor) -> torch.Tensor:
        """One fresh physical slot in `layer` for each of `logical` (live, holding none there)."""
        return self.slot_table.attach(layer, logical)

    def free(self, free_index: torch.Tensor):
        if free_index.numel() == 0:
            return
        if self.free_group is None:  # inside a free group the base class defers, then calls free() again
            self.slot_table.release_logical(free_index)  # raises on a double free, before the free list sees it
        super().free(free_index)

    def evict_layer_slots(self, layer: int, logical: torch.Tensor) -> int:
        """Free layer `layer`'s physical slots of `logical` (owned by one live request); returns the count."""
        return self.slot_table.release_layer(layer, logical)

    def check_integrity(self) -> None:
        """Assert `LayerSlotTable.check_integrity` and that the logical free list and the live slots
        partition `[1, logical_size]` (call outside a free group: deferred frees are still live)."""
        self.slot_table.check_integrity()
        free = torch.cat((self.free_pages, self.release_pages)).to(torch.int64)
        counts = torch.bincount(free, minlength=self.size + 1)
        assert int(counts[0]) == 0, "logical slot 0 (padding) is on the free list"
        assert int(counts.max()) <= 1, "a logical slot is twice on the free list"
        both = (counts.bool() & self.slot_table.live).nonzero().flatten()
        assert not both.numel(), f"logical slots {both[:8].tolist()} are free and live at once"
        assert free.numel() + self.slot_table.num_live() == self.size, (
            f"{self.size - free.numel() - self.slot_table.num_live()} logical slots neither free nor live (leaked)"
        )
