"""`ReadTables`: per-layer physical slots a decoding request reads, built once and appended per step."""

from types import SimpleNamespace

import torch

from radix_ext.sglang.read_tables import ReadTables
from radix_ext.sglang.slot_table import LayerSlotTable

L, P, LOGICAL = 3, 64, 128


def _setup(prompt=10):
    table = LayerSlotTable(num_layers=L, physical_size=P, logical_size=LOGICAL)
    req_to_token = torch.zeros((4, 64), dtype=torch.int32)
    logical = torch.arange(20, 20 + prompt)
    table.allocate(logical)
    req_to_token[1, :prompt] = logical.to(torch.int32)
    return table, req_to_token


def _decode_one(table, req_to_token, row, seq_len, slot):
    """SGLang's decode step: a new logical slot (with physical ones) at position seq_len - 1."""
    table.allocate(torch.tensor([slot]))
    req_to_token[row, seq_len - 1] = slot


def _expected(table, req_to_token, row, seq_len, view):
    logical = req_to_token[row, :seq_len].to(torch.int64)
    out = []
    for layer in range(L):
        ids = logical if view is None else torch.cat((logical[view.kept[layer]], logical[view.prompt_len :]))
        out.append(table.physical(layer, ids))
    return out


def test_uncompressed_table_matches_the_slot_table_after_decode_steps():
    table, req_to_token = _setup()
    tables = ReadTables(table, req_to_token)
    for step, seq_len in enumerate(range(11, 16)):
        _decode_one(table, req_to_token, 1, seq_len, 60 + step)
        got = tables.for_decode("a", 1, seq_len, None)
        for layer, want in enumerate(_expected(table, req_to_token, 1, seq_len, None)):
            assert torch.equal(got.layer(layer), want)


def test_a_prefix_left_compressed_by_an_earlier_turn_is_read_where_it_holds_slots():
    """`reuse: compressed`: no view, but the reused prefix holds slots in some layers only."""
    table, req_to_token = _setup()
    prefix = req_to_token[1, :10].to(torch.int64)
    held = [torch.tensor([0, 9]), torch.tensor([1, 2, 3, 9]), torch.arange(10)]
    for layer, keep in enumerate(held):
        evicted = torch.ones(10, dtype=torch.bool)
        evicted[keep] = False
        table.release_layer(layer, prefix[evicted])
    tables = ReadTables(table, req_to_token)
    for step, seq_len in enumerate(range(11, 14)):
        _decode_one(table, req_to_token, 1, seq_len, 80 + step)
        got = tables.for_decode("a", 1, seq_len, None)
        assert got.lens.tolist() == [2 + step + 1, 4 + step + 1, 10 + step + 1]
        for layer, keep in enumerate(held):
            ids = torch.cat((prefix[keep], req_to_token[1, 10:seq_len].to(torch.int64)))
            assert torch.equal(got.layer(layer), table.physical(layer, ids))
            assert 0 not in got.layer(layer).tolist()


def test_compressed_table_reads_kept_tokens_then_the_decode_tail_per_layer():
    table, req_to_token = _setup()
    view = SimpleNamespace(prompt_len=10, kept=[torch.tensor([0, 9]), torch.tensor([1, 2, 3, 9]), torch.tensor([9])])
    for layer, kept in enumerate(view.kept):  # eviction frees the rest in each layer
        evicted = torch.ones(10, dtype=torch.bool)
        evicted[kept] = False
        table.release_layer(layer, req_to_token[1, :10].to(torch.int64)[evicted])
    tables = ReadTables(table, req_to_token)
    for step, seq_len in enumerate(range(11, 14)):
        _decode_one(table, req_to_token, 1, seq_len, 70 + step)
        got = tables.for_decode("a", 1, seq_len, view)
        assert got.lens.tolist() == [2 + step + 1, 4 + step + 1, 1 + step + 1]
        for layer, want in enumerate(_expected(table, req_to_token, 1, seq_len, view)):
            assert torch.equal(got.layer(layer), want)
            assert bool((want != 0).all())  # never reads an evicted (unheld) slot


def test_a_new_occupant_of_the_row_gets_a_fresh_table():
    table, req_to_token = _setup()
    tables = ReadTables(table, req_to_token)
    _decode_one(table, req_to_token, 1, 11, 60)
    tables.for_decode("a", 1, 11, None)
    # Request "a" leaves; "b" takes the row with other slots and happens to reach the same length.
    table.release_logical(req_to_token[1, :11].to(torch.int64))
    fresh = torch.arange(90, 101)
    table.allocate(fresh)
    req_to_token[1, :11] = fresh.to(torch.int32)
    tables.forget_rows([1])  # the backend does this at b's extend
    got = tables.for_decode("b", 1, 11, None)
    assert torch.equal(got.layer(0), table.physical(0, fresh))


def test_capacity_grows_past_the_headroom():
    table, req_to_token = _setup(prompt=2)
    req_to_token = torch.zeros((2, 400), dtype=torch.int32)
    req_to_token[1, :2] = torch.tensor([20, 21], dtype=torch.int32)
    tables = ReadTables(table, req_to_token)
    big = LayerSlotTable(num_layers=L, physical_size=400, logical_size=800)
    big.allocate(torch.tensor([20, 21]))
    tables.slot_table = big
    for seq_len in range(3, 300):
        big.allocate(torch.tensor([100 + seq_len]))
        req_to_token[1, seq_len - 1] = 100 + seq_len
        got = tables.for_decode("a", 1, seq_len, None)
    assert got.phys.shape[1] >= 299 and torch.equal(
        got.layer(2), big.physical(2, req_to_token[1, :299].to(torch.int64))
    )
