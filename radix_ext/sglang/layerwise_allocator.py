"""`LayerwiseTokenAllocator`: logical slots for SGLang, physical slots per layer underneath."""

from __future__ import annotations

import torch
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator

from radix_ext.sglang.layerwise_pool import LayerwiseKVPool
from radix_ext.sglang.slot_table import LayerSlotTable


class LayerwiseTokenAllocator(TokenToKVPoolAllocator):
    """Hands out logical slots (`logical_size` of them, more than the `physical_size` per layer: logical
    slots are cheap indices) and, with each, one physical slot per layer.

    Admission sees `available_size() = min(logical free, min over layers of physical free)`, so the
    scheduler never admits what some layer cannot hold. Freeing a logical slot frees whatever physical
    slots it still holds; `evict_layer_slots` frees one layer's slots of a live request (compression).
    """

    def __init__(self, physical_size: int, logical_size: int, dtype, device, kvcache: LayerwiseKVPool, need_sort: bool):
        self.slot_table = LayerSlotTable(kvcache.layer_num, physical_size, logical_size, device)
        super().__init__(logical_size, dtype, device, kvcache, need_sort)  # calls clear()
        kvcache.slot_table = self.slot_table

    def clear(self):
        """`flush_cache` (server idle): every slot free, no view or plan left behind."""
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

    def free(self, free_index: torch.Tensor):
        if free_index.numel() == 0:
            return
        if self.free_group is None:  # inside a free group the base class defers, then calls free() again
            self.slot_table.release_logical(free_index)
        super().free(free_index)

    def evict_layer_slots(self, layer: int, logical: torch.Tensor) -> int:
        """Free layer `layer`'s physical slots of `logical` (owned by one live request); returns the count."""
        return self.slot_table.release_layer(layer, logical)
