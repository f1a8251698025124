"""Sliding windows by position: the plugin's extend equals SGLang's torch-native extend where every token
holds a slot, and a dense reference where a prefix holds a subset; decode tables start at the window."""

from types import SimpleNamespace

import pytest
import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

from radix_ext.sglang.read_tables import ReadTables
from radix_ext.sglang.sliding_window import extend_attention, layer_window, window_mask

HEADS, KV_HEADS, DIM, WINDOW = 4, 2, 8, 5


def _buffers(slots: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(slots, KV_HEADS, DIM, generator=g), torch.randn(slots, KV_HEADS, DIM, generator=g))


def test_layer_window_reads_sglang_s_field():
    assert layer_window(SimpleNamespace(sliding_window_size=-1, is_cross_attention=False)) is None
    assert layer_window(SimpleNamespace(sliding_window_size=None, is_cross_attention=False)) is None
    assert layer_window(SimpleNamespace(sliding_window_size=7, is_cross_attention=True)) is None
    assert layer_window(SimpleNamespace(sliding_window_size=7, is_cross_attention=False)) == 7


def test_window_mask_is_sglang_s_mask_when_positions_are_indices():
    stock = TorchNativeAttnBackend._make_sliding_window_mask(
        q_len=4, kv_len=12, sliding_window_size=WINDOW, device="cpu", query_offset=8
    )
    assert torch.equal(window_mask(torch.arange(8, 12), torch.arange(12), WINDOW), stock)


@pytest.mark.parametrize("prefix_lens", [[0, 0], [6, 9], [12, 3]])
def test_extend_equals_sglang_torch_native_when_every_token_is_held(prefix_lens):
    extend_lens, seq_lens = [7, 4], [p + 7 if i == 0 else p + 4 for i, p in enumerate(prefix_lens)]
    k_buf, v_buf = _buffers(64)
    perm = torch.randperm(63, generator=torch.Generator().manual_seed(1)) + 1  # physical ids, any order
    tables = [perm[:n] for n in seq_lens[:1]] + [perm[32 : 32 + seq_lens[1]]]
    q = torch.randn(sum(extend_lens), HEADS, DIM, generator=torch.Generator().manual_seed(2))
    ours, stock = torch.empty(q.shape[0], HEADS, DIM), torch.empty(q.shape[0], HEADS, DIM)
    positions = [torch.arange(n) for n in seq_lens]
    extend_attention(q, ours, k_buf, v_buf, tables, positions, extend_lens, WINDOW, 0.3, True)
    table = torch.zeros(2, max(seq_lens), dtype=torch.int64)
    for i, t in enumerate(tables):
        table[i, : t.numel()] = t
    backend = TorchNativeAttnBackend.__new__(TorchNativeAttnBackend)  # the SDPA loop reads no state
    backend._run_sdpa_forward_extend(
        q, stock, k_buf, v_buf, table, torch.arange(2), torch.tensor(seq_lens), torch.tensor(prefix_lens),
        torch.tensor(extend_lens), None, scaling=0.3, enable_gqa=True, causal=True, sliding_window_size=WINDOW,
    )  # fmt: skip
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)


def test_extend_over_a_partly_held_prefix_reads_the_held_keys_inside_the_window():
    """A prefix of 10 whose positions 3, 6, 7 an earlier turn evicted in this layer, then 4 new tokens:
    each new token reads the held keys within WINDOW positions of it, not the last WINDOW held entries."""
    seq_len, new = 14, 4
    held = torch.tensor([p not in (3, 6, 7) for p in range(seq_len)])
    physical = torch.arange(1, seq_len + 1)
    k_buf, v_buf = _buffers(seq_len + 1)
    q = torch.randn(new, HEADS, DIM, generator=torch.Generator().manual_seed(3))
    ours = torch.empty(new, HEADS, DIM)
    positions = torch.arange(seq_len)[held]
    extend_attention(q, ours, k_buf, v_buf, [physical[held]], [positions], [new], WINDOW, 0.3, True)

    # dense reference: every position, the unheld ones masked out as well
    keys = k_buf[physical].repeat_interleave(HEADS // KV_HEADS, 1).movedim(0, 1)
    values = v_buf[physical].repeat_interleave(HEADS // KV_HEADS, 1).movedim(0, 1)
    mask = window_mask(torch.arange(seq_len - new, seq_len), torch.arange(seq_len), WINDOW) & held[None, :]
    scores = (q.movedim(0, 1) @ keys.transpose(1, 2) * 0.3).masked_fill(~mask, float("-inf"))
    reference = (scores.softmax(-1) @ values).movedim(0, 1)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    # and it differs from windowing the held list by index (what stock would compute on it)
    by_index = torch.empty_like(ours)
    extend_attention(q, by_index, k_buf, v_buf, [physical[held]], [torch.arange(int(held.sum()))], [new], WINDOW, 0.3, True)  # fmt: skip
    assert not torch.allclose(by_index, reference, atol=1e-3)


def _read_tables(num_layers: int, seq_len: int):
    """A slot table whose logical slot s sits at physical 100 * (layer + 1) + s; one request on row 0."""
    slot_table = SimpleNamespace(phys=torch.zeros(num_layers, 1024, dtype=torch.int32))
    for layer in range(num_layers):
        slot_table.phys[layer, 1:] = 100 * (layer + 1) + torch.arange(1, 1024, dtype=torch.int32)
    req_to_token = torch.zeros(1, 1024, dtype=torch.int32)
    req_to_token[0, :seq_len] = torch.arange(1, seq_len + 1, dtype=torch.int32)
    return ReadTables(slot_table, req_to_token), slot_table


def _positions_read(table, slot_table, layer, window):
    slots = table.layer(layer)[table.window_start(layer, window) :]
    logical = slots - 100 * (layer + 1)  # logical slot s holds position s - 1
    return (logical - 1).tolist()


def test_decode_reads_the_window_of_an_uncompressed_table():
    tables, slot_table = _read_tables(2, 12)
    table = tables.for_decode("r", 0, 12, None)
    assert _positions_read(table, slot_table, 1, WINDOW) == list(range(6, 12))  # [11 - 5, 11]
    assert _positions_read(table, slot_table, 1, 50) == list(range(12))


def test_decode_reads_the_kept_tokens_inside_the_window_as_it_grows():
    prompt, steps = 10, 300  # past the table's headroom: it regrows with its positions
    tables, slot_table = _read_tables(2, prompt + steps)
    view = SimpleNamespace(prompt_len=prompt, kept=[torch.tensor([0, 5, 8]), torch.tensor([1, 2, 3, 9])])
    for n in range(prompt + 1, prompt + steps + 1):  # the first decode step covers the prompt + 1 token
        table = tables.for_decode("r", 0, n, view)
        for layer, kept in enumerate(view.kept):
            expected = [p for p in kept.tolist() + list(range(prompt, n)) if p >= n - 1 - WINDOW]
            assert _positions_read(table, slot_table, layer, WINDOW) == expected, (n, layer)
