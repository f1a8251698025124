"""`LayerwiseKVPool`: SGLang's MHA KV pool addressed by logical slots, stored per layer physically."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, unwrap_write_loc

from radix_ext.sglang.slot_table import LayerSlotTable


@dataclass
class RequestView:
    """What one compressed request reads: in layer `l`, prompt positions `kept[l]`, then `[prompt_len, seq_len)`.

    Owned by the pool, keyed by the request's `req_to_token` row; dropped when the request releases its row.
    """

    prompt_len: int
    kept: list[torch.Tensor]


class LayerwiseKVPool(MHATokenToKVPool):
    """Buffers `k_buffer[l]` / `v_buffer[l]` hold `size` physical slots per layer (as stock); writes arrive
    with logical slots (`out_cache_loc`) and land at `slot_table.phys[l, loc]`.

    `get_key_buffer(l)` returns the physical buffer: readers index it with `physical_indices(l, ...)`.
    The slot table is attached by `LayerwiseTokenAllocator` (it knows the logical size).
    """

    slot_table: LayerSlotTable | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.views: dict[int, RequestView] = {}  # by req_to_token row, while the request holds it
        self.plans: dict = {}  # rid -> CompressionPlan, from admission until the request releases its KV
        self.peak_requests = 0  # the most requests holding KV at once since start (a pool figure)

    def set_kv_buffer(self, layer, loc_info, cache_k, cache_v, *args, **kwargs):
        loc, _, _ = unwrap_write_loc(loc_info)
        layer_id = kwargs.get("layer_id_override")
        layer_id = layer.layer_id if layer_id is None else layer_id
        physical = self.slot_table.physical(layer_id - self.start_layer, loc)
        super().set_kv_buffer(layer, physical, cache_k, cache_v, *args, **kwargs)

    def physical_indices(self, layer_id: int, logical: torch.Tensor) -> torch.Tensor:
        return self.slot_table.physical(layer_id - self.start_layer, logical)

    def copy_slots(self, layer: int, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy layer `layer`'s (0-based) K/V from physical slots `src` to physical slots `dst`."""
        self.k_buffer[layer][dst] = self.k_buffer[layer][src]
        self.v_buffer[layer][dst] = self.v_buffer[layer][src]

    def token_bytes_per_layer(self) -> int:
        """K and V bytes of one token in one layer."""
        k, v = self.k_buffer[0], self.v_buffer[0]
        return k[0].numel() * k.element_size() + v[0].numel() * v.element_size()

    # Stock paths that read K/V by slot id without translation: refused rather than silently wrong.
    def get_cpu_copy(self, *args, **kwargs):
        raise NotImplementedError("LayerwiseKVPool does not support KV offloading / disaggregation")

    def load_cpu_copy(self, *args, **kwargs):
        raise NotImplementedError("LayerwiseKVPool does not support KV offloading / disaggregation")

    def move_kv_cache(self, *args, **kwargs):
        raise NotImplementedError("LayerwiseKVPool does not support KV moves (speculative decoding)")
