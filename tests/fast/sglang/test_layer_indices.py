"""Per-layer `kv_indptr` / `kv_indices` of a batch (`layer_indices`) against the torch-native backend's
`ReadTables`, for mixed compressed and uncompressed requests over decode steps; the Triton fill
(`layer_indices_kernel`, under Triton's CPU interpreter here) against the torch one."""

import os

import pytest
import torch

if not torch.cuda.is_available():  # must precede the kernel's import: @triton.jit reads it at decoration
    os.environ["TRITON_INTERPRET"] = "1"

from radix_ext.sglang.layer_indices import ViewStore, fill_indptr, gather_indices, layer_lengths  # noqa: E402
from radix_ext.sglang.layer_indices_kernel import fill_layer_kv_indices  # noqa: E402
from radix_ext.sglang.layerwise_pool import RequestView  # noqa: E402
from radix_ext.sglang.read_tables import ReadTables  # noqa: E402
from radix_ext.sglang.slot_table import LayerSlotTable  # noqa: E402

L, P, LOGICAL, ROWS, CTX = 3, 96, 192, 5, 64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Batch:
    """Three requests on rows 2, 1, 4: row 1 uncompressed, rows 2 and 4 compressed (uneven kept per layer)."""

    def __init__(self):
        self.table = LayerSlotTable(num_layers=L, physical_size=P, logical_size=LOGICAL)
        self.req_to_token = torch.zeros((ROWS, CTX), dtype=torch.int32)
        self.views: dict[int, RequestView] = {}
        self.seq_lens = {}
        next_slot = 1
        for row, prompt, kept in (
            (2, 12, [[0, 3, 11], [1, 2, 5, 7, 9, 11], [11]]),
            (1, 10, None),
            (4, 9, [[], [0, 8], [2, 4, 6, 8]]),
        ):
            logical = torch.arange(next_slot, next_slot + prompt)
            next_slot += prompt
            self.table.allocate(logical)
            self.req_to_token[row, :prompt] = logical.to(torch.int32)
            self.seq_lens[row] = prompt
            if kept is not None:
                view = RequestView(prompt_len=prompt, kept=[torch.tensor(k, dtype=torch.int64) for k in kept])
                for layer, k in enumerate(view.kept):  # compression frees the rest in each layer
                    evict = torch.ones(prompt, dtype=torch.bool)
                    evict[k] = False
                    self.table.release_layer(layer, logical[evict])
                self.views[row] = view
        self.next_slot = next_slot
        self.rows = [2, 1, 4]

    def decode_step(self):
        """SGLang's decode: each request gets a new logical slot (one physical slot per layer) at its end."""
        for row in self.rows:
            self.table.allocate(torch.tensor([self.next_slot]))
            self.req_to_token[row, self.seq_lens[row]] = self.next_slot
            self.seq_lens[row] += 1
            self.next_slot += 1

    def tensors(self):
        rows = torch.tensor(self.rows, device=DEVICE)
        seq_lens = torch.tensor([self.seq_lens[r] for r in self.rows], device=DEVICE)
        return rows, seq_lens, self.req_to_token.to(DEVICE), self.table.phys.to(DEVICE)


def _store(batch, capacity=L * P):
    store = ViewStore(L, ROWS, capacity, DEVICE)
    store.sync(batch.views)
    return store


def _build(batch, store, decode=True):
    rows, seq_lens, req_to_token, phys = batch.tensors()
    lens = layer_lengths(store, rows, seq_lens, decode)
    indptr = fill_indptr(lens, torch.zeros((L, len(batch.rows) + 1), dtype=torch.int32, device=DEVICE))
    width = int(seq_lens.sum())
    return lens, indptr, gather_indices(store, req_to_token, phys, rows, seq_lens, indptr, width, decode)


def test_every_layer_reads_what_the_torch_native_backend_reads_over_decode_steps():
    batch = Batch()
    tables = ReadTables(batch.table, batch.req_to_token)
    store = _store(batch)
    for _ in range(4):
        batch.decode_step()
        store.sync(batch.views)
        lens, indptr, indices = _build(batch, store)
        for b, row in enumerate(batch.rows):
            want = tables.for_decode(f"r{row}", row, batch.seq_lens[row], batch.views.get(row))
            assert lens[:, b].tolist() == want.lens.tolist()
            for layer in range(L):
                got = indices[layer, int(indptr[layer, b]) : int(indptr[layer, b + 1])]
                assert torch.equal(got.cpu(), want.layer(layer))
                assert bool((got != 0).all())  # never an evicted (unheld) slot
        for layer in range(L):  # past a layer's total: padding, not another layer's entries
            assert not bool(indices[layer, int(indptr[layer, -1]) :].any())


def test_uneven_layers_give_uneven_lengths():
    batch = Batch()
    batch.decode_step()
    lens, indptr, _ = _build(batch, _store(batch))
    # row 2 keeps [3, 6, 1] of 12, row 1 reads all 11, row 4 keeps [0, 2, 4] of 9; each + 1 decode token
    assert lens.tolist() == [[4, 11, 1], [7, 11, 3], [2, 11, 5]]
    assert indptr[:, -1].tolist() == [16, 21, 18]


def test_an_extend_reads_every_prefix_position_even_on_a_row_with_a_view():
    batch = Batch()
    rows, seq_lens, req_to_token, phys = batch.tensors()
    store = ViewStore(L, ROWS, L * P, DEVICE)
    store.sync({1: RequestView(prompt_len=5, kept=[torch.tensor([0])] * L)})  # a stale view must not matter
    lens, indptr, indices = _build(batch, store, decode=False)
    assert lens.tolist() == [seq_lens.tolist()] * L
    for layer in range(L):
        want = torch.cat([phys[layer, req_to_token[r, : batch.seq_lens[r]].long()] for r in batch.rows])
        assert torch.equal(indices[layer, : want.numel()], want.long())


def test_store_follows_the_pools_views_and_reuses_freed_space():
    batch = Batch()  # kept entries: row 2 holds 3 + 6 + 1 = 10, row 4 holds 0 + 2 + 4 = 6
    store = _store(batch, capacity=16)
    assert store.used() == 16 and store.prompt_len[2] == 12
    ended = batch.views.pop(2)  # the request released its row
    store.sync(batch.views)
    assert store.used() == 6 and store.prompt_len[2] == 0 and not bool(store.count[2].any())
    batch.views[3] = ended  # a new compressed request of the same size fits in the freed segment
    store.sync(batch.views)
    assert store.used() == 16 and store.count[3].tolist() == [3, 6, 1]
    replaced = RequestView(prompt_len=12, kept=[torch.tensor([0])] * L)
    batch.views[3] = replaced  # same row, another view object: re-uploaded
    store.sync(batch.views)
    assert store.count[3].tolist() == [1, 1, 1] and store.used() == 9


def test_a_full_store_refuses_with_a_message():
    with pytest.raises(RuntimeError, match="kept-position store is full"):
        _store(Batch(), capacity=14)


def test_the_triton_fill_writes_what_the_torch_gather_builds():
    batch = Batch()
    store = _store(batch)
    for _ in range(3):
        batch.decode_step()
        for decode in (True, False):
            rows, seq_lens, req_to_token, phys = batch.tensors()
            lens, indptr, want = _build(batch, store, decode)
            out = torch.full_like(want, -1)
            fill_layer_kv_indices(out, indptr, store, req_to_token, phys, rows, seq_lens, decode, block=4)
            for layer in range(L):
                total = int(indptr[layer, -1])
                assert torch.equal(out[layer, :total], want[layer, :total])
                assert bool((out[layer, total:] == -1).all())  # nothing written past the layer's entries
