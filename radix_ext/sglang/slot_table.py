"""Logical slots (what SGLang sees) mapped to physical slots per layer, each layer with its own free list.

SGLang keeps one slot per token for all layers. VL-Cache keeps a different number of tokens per layer, so
a token's K/V in layer `l` lives at `phys[l, logical_slot]` (0 = not held; physical slot 0 is SGLang's
padding slot in every layer, and logical 0 maps to it). Plain torch: no SGLang import.
"""

from __future__ import annotations

import torch


class LayerSlotTable:
    """Owns the per-layer physical free lists and the logical-to-physical map.

    Contract: every physical slot is either on its layer's free list or held by exactly one logical
    slot. `allocate` takes one physical slot per layer for each logical slot; `release_logical` returns
    whatever physical slots the logical ones still hold; `release_layer` frees a single layer's slots
    (eviction) and leaves the logical slot alive for the other layers.
    """

    def __init__(self, num_layers: int, physical_size: int, logical_size: int, device="cpu"):
        self.num_layers, self.physical_size, self.logical_size = num_layers, physical_size, logical_size
        self.device = torch.device(device)
        # int32: the map has L x (logical + 1) entries, 4x the physical slots by default; halve it.
        self.phys = torch.zeros((num_layers, logical_size + 1), dtype=torch.int32, device=self.device)
        self.clear()

    def clear(self) -> None:
        self.phys.zero_()
        self.free = [torch.arange(1, self.physical_size + 1, dtype=torch.int64, device=self.device) for _ in range(self.num_layers)]

    def free_per_layer(self) -> list[int]:
        return [int(f.numel()) for f in self.free]

    def min_free(self) -> int:
        return min(int(f.numel()) for f in self.free)

    def used_per_layer(self) -> list[int]:
        return [self.physical_size - n for n in self.free_per_layer()]

    def allocate(self, logical: torch.Tensor) -> None:
        """Give each logical slot one fresh physical slot in every layer (caller checked `min_free`)."""
        n = logical.numel()
        if n > self.min_free():
            raise RuntimeError(f"LayerSlotTable: {n} physical slots requested, {self.min_free()} free in the fullest layer")
        for layer in range(self.num_layers):
            self.phys[layer, logical] = self.free[layer][:n].to(torch.int32)
            self.free[layer] = self.free[layer][n:]

    def release_layer(self, layer: int, logical: torch.Tensor) -> int:
        """Free layer `layer`'s physical slots of `logical` (those still held); returns how many."""
        held = self.phys[layer, logical].to(torch.int64)
        held = held[held != 0]
        if held.numel():
            self.free[layer] = torch.cat((self.free[layer], held))
            self.phys[layer, logical] = 0
        return int(held.numel())

    def release_logical(self, logical: torch.Tensor) -> None:
        for layer in range(self.num_layers):
            self.release_layer(layer, logical)

    def physical(self, layer: int, logical: torch.Tensor) -> torch.Tensor:
        return self.phys[layer, logical.to(torch.int64)].to(torch.int64)
