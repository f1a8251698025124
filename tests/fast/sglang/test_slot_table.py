"""`LayerSlotTable`: per-layer physical free lists under logical slots (plain torch, no SGLang)."""

import pytest
import torch

from radix_ext.sglang.slot_table import LayerSlotTable


def test_allocate_evict_release_keeps_every_slot_accounted_for():
    table = LayerSlotTable(num_layers=3, physical_size=10, logical_size=40)
    logical = torch.tensor([5, 6, 7, 8])
    table.allocate(logical)
    assert table.used_per_layer() == [4, 4, 4]
    held = [set(table.physical(layer, logical).tolist()) for layer in range(3)]
    assert all(len(h) == 4 and 0 not in h for h in held)

    assert table.release_layer(1, logical[:3]) == 3  # evicted in layer 1 only
    assert table.used_per_layer() == [4, 1, 4]
    assert table.release_layer(1, logical[:3]) == 0  # already free: never freed twice
    table.release_logical(logical)  # the request ends: whatever is still held goes back
    assert table.used_per_layer() == [0, 0, 0]
    assert all(sorted(f.tolist()) == list(range(1, 11)) for f in table.free)


def test_allocation_beyond_the_fullest_layer_is_refused():
    table = LayerSlotTable(num_layers=2, physical_size=4, logical_size=16)
    table.allocate(torch.tensor([1, 2, 3]))
    table.release_layer(0, torch.tensor([1, 2, 3]))
    assert table.min_free() == 1  # layer 1 is the bound
    with pytest.raises(RuntimeError, match="fullest layer"):
        table.allocate(torch.tensor([4, 5]))
