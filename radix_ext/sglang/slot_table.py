"""Logical slots (what SGLang sees) mapped to physical slots per layer, each layer with its own free list.

SGLang keeps one slot per token for all layers. VL-Cache keeps a different number of tokens per layer, so
a token's K/V in layer `l` lives at `phys[l, logical_slot]` (0 = not held; physical slot 0 is SGLang's
padding slot in every layer, and logical 0 maps to it). Plain torch: no SGLang import.
"""

from __future__ import annotations

import torch


class LayerSlotTable:
    """Owns the per-layer physical free lists and the logical-to-physical map.

    Contract (`check_integrity` asserts it): every physical slot of a layer is either on that layer's
    free list or held by exactly one live logical slot, never both, never twice; a logical slot that is
    not live holds nothing. `allocate` makes logical slots live with one physical slot per layer;
    `adopt` makes them live holding none (`attach` then gives them a slot in chosen layers);
    `release_layer` frees one layer's slots (eviction) and leaves the logical slot alive;
    `release_logical` ends logical slots and returns whatever they still hold, refusing a double free.
    """

    def __init__(self, num_layers: int, physical_size: int, logical_size: int, device="cpu"):
        self.num_layers, self.physical_size, self.logical_size = num_layers, physical_size, logical_size
        self.device = torch.device(device)
        # int32: the map has L x (logical + 1) entries, 4x the physical slots by default; halve it.
        self.phys = torch.zeros((num_layers, logical_size + 1), dtype=torch.int32, device=self.device)
        self.live = torch.zeros(logical_size + 1, dtype=torch.bool, device=self.device)
        self.clear()

    def clear(self) -> None:
        self.phys.zero_()
        self.live.zero_()
        self.free = [
            torch.arange(1, self.physical_size + 1, dtype=torch.int64, device=self.device)
            for _ in range(self.num_layers)
        ]

    def free_per_layer(self) -> list[int]:
        return [int(f.numel()) for f in self.free]

    def min_free(self) -> int:
        return min(int(f.numel()) for f in self.free)

    def used_per_layer(self) -> list[int]:
        return [self.physical_size - n for n in self.free_per_layer()]

    def allocate(self, logical: torch.Tensor) -> None:
        """Make `logical` live, each with one fresh physical slot in every layer (caller checked `min_free`)."""
        n = logical.numel()
        if n > self.min_free():
            raise RuntimeError(
                f"LayerSlotTable: {n} physical slots requested, {self.min_free()} free in the fullest layer"
            )
        self.adopt(logical)
        for layer in range(self.num_layers):
            self.phys[layer, logical] = self.free[layer][:n].to(torch.int32)
            self.free[layer] = self.free[layer][n:]

    def adopt(self, logical: torch.Tensor) -> None:
        """Make free logical slots live without any physical slot (they get some through `attach`)."""
        logical = logical.to(torch.int64)
        if bool(self.live[logical].any()) or bool((logical == 0).any()):
            raise RuntimeError(
                f"LayerSlotTable: logical slots {logical[self.live[logical]][:8].tolist()} are already live"
            )
        self.live[logical] = True

    def attach(self, layer: int, logical: torch.Tensor) -> torch.Tensor:
        """Give each live logical slot, holding nothing in `layer`, a fresh physical slot there; returns them."""
        logical = logical.to(torch.int64)
        n = logical.numel()
        if n > int(self.free[layer].numel()):
            raise RuntimeError(
                f"LayerSlotTable: {n} physical slots requested in layer {layer}, {self.free[layer].numel()} free"
            )
        if not bool(self.live[logical].all()) or bool((self.phys[layer, logical] != 0).any()):
            raise RuntimeError(
                f"LayerSlotTable: attach in layer {layer} needs live logical slots that hold nothing there"
            )
        physical = self.free[layer][:n]
        self.phys[layer, logical] = physical.to(torch.int32)
        self.free[layer] = self.free[layer][n:]
        return physical

    def release_layer(self, layer: int, logical: torch.Tensor) -> int:
        """Free layer `layer`'s physical slots of `logical` (those still held); returns how many."""
        held = self.phys[layer, logical].to(torch.int64)
        held = held[held != 0]
        if held.numel():
            self.free[layer] = torch.cat((self.free[layer], held))
            self.phys[layer, logical] = 0
        return int(held.numel())

    def release_logical(self, logical: torch.Tensor) -> None:
        """End live logical slots; a slot that is not live (a double free, slot 0) is refused untouched."""
        logical = logical.to(torch.int64)
        live = self.live[logical]
        if not bool(live.all()):
            raise RuntimeError(f"LayerSlotTable: double free of logical slots {logical[~live][:8].tolist()} (not live)")
        if logical.unique().numel() != logical.numel():
            raise RuntimeError("LayerSlotTable: double free: the same logical slot twice in one free")
        for layer in range(self.num_layers):
            self.release_layer(layer, logical)
        self.live[logical] = False

    def physical(self, layer: int, logical: torch.Tensor) -> torch.Tensor:
        return self.phys[layer, logical.to(torch.int64)].to(torch.int64)

    def num_live(self) -> int:
        return int(self.live.sum())

    def check_integrity(self) -> None:
        """Assert the contract: per layer, free list and held slots partition `[1, P]` exactly; only live
        logical slots hold anything; logical 0 (padding) holds nothing and is never live."""
        assert not bool(self.live[0]) and not bool(self.phys[:, 0].any()), "logical slot 0 must stay the padding slot"
        dead_holding = (self.phys != 0) & ~self.live.unsqueeze(0)
        assert not bool(dead_holding.any()), (
            f"logical slots {dead_holding.any(0).nonzero().flatten()[:8].tolist()} hold physical slots but are not live"
        )
        for layer in range(self.num_layers):
            held = self.phys[layer][self.phys[layer] != 0].to(torch.int64)
            every = torch.cat((held, self.free[layer]))
            counts = torch.bincount(every, minlength=self.physical_size + 1)
            assert every.numel() == 0 or int(every.min()) >= 1 and int(every.max()) <= self.physical_size, (
                f"layer {layer}: a physical slot outside [1, {self.physical_size}]"
            )
            twice = (counts[1:] > 1).nonzero().flatten() + 1
            lost = (counts[1:] == 0).nonzero().flatten() + 1
            assert not twice.numel(), f"layer {layer}: physical slots {twice[:8].tolist()} held or freed twice"
            assert not lost.numel(), f"layer {layer}: physical slots {lost[:8].tolist()} neither free nor held (leaked)"
