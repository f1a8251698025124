"""Per-layer `kv_indptr` / `kv_indices` of a whole batch, built on the device for all layers at once.

SGLang's Triton kernels read K/V through one `kv_indptr [bs + 1]` / `kv_indices` pair per batch. With
per-layer views each layer needs its own pair; this module defines them and builds them in plain torch
(the reference, and what the CPU tests check); `layer_indices_kernel.py` fills the same arrays with
one Triton launch (`grid = (L, bs)`, work proportional to the entries, CUDA-graph capturable).

Contract, for layer `l` and batch entry `b` (row `r = rows[b]`, length `n = seq_lens[b]`):
- uncompressed (or `decode=False`, an extend: its prefix): positions `0 .. n-1`;
- compressed (`decode=True`, the row holds a view with `prompt_len <= n`): `kept[l]` then
  `prompt_len .. n-1` — exactly what `ReadTables` (the torch-native backend) reads;
- `lens[l, b]` is that count, `indptr[l] = [0, cumsum(lens[l])]`, and
  `indices[l, indptr[l, b] + j] = slot_table.phys[l, req_to_token[r, position_j]]`.

`ViewStore` keeps every compressed row's view on the device in fixed buffers (never reallocated, so
a captured CUDA graph stays valid): `prompt_len [R]`, `count [R, L]`, `start [R, L]` into one flat
`kept` array of int32 positions, managed by a first-fit segment list on the host.
"""

from __future__ import annotations

import torch


class ViewStore:
    """Device copy of the pool's compressed views (`LayerwiseKVPool.views`), keyed by `req_to_token` row."""

    def __init__(self, num_layers: int, num_rows: int, capacity: int, device="cpu"):
        self.num_layers, self.capacity = num_layers, capacity
        self.device = torch.device(device)
        self.prompt_len = torch.zeros(num_rows, dtype=torch.int32, device=self.device)  # 0: uncompressed
        self.count = torch.zeros((num_rows, num_layers), dtype=torch.int32, device=self.device)
        self.start = torch.zeros((num_rows, num_layers), dtype=torch.int64, device=self.device)
        self.kept = torch.zeros(max(capacity, 1), dtype=torch.int32, device=self.device)
        self._free: list[tuple[int, int]] = [(0, capacity)]  # (offset, size), sorted, coalesced
        self._rows: dict[int, tuple[object, int, int]] = {}  # row -> (view, offset, size)

    def sync(self, views: dict) -> None:
        """Mirror `views` (row -> `RequestView`): drop rows whose view ended or changed, upload new ones.
        Called before every forward, outside any CUDA graph."""
        for row, (view, _, _) in list(self._rows.items()):
            if views.get(row) is not view:
                self._drop(row)
        for row, view in views.items():
            if row not in self._rows:
                self._add(int(row), view)

    def used(self) -> int:
        return sum(size for _, _, size in self._rows.values())

    def _add(self, row: int, view) -> None:
        counts = [int(k.numel()) for k in view.kept]
        if len(counts) != self.num_layers:
            raise ValueError(f"a view has {len(counts)} layers, the store {self.num_layers}")
        size = sum(counts)
        offset = self._allocate(size)
        if size:
            self.kept[offset : offset + size] = torch.cat(list(view.kept)).to(self.device, torch.int32)
        starts = torch.tensor(counts, dtype=torch.int64).cumsum(0) - torch.tensor(counts) + offset
        self.start[row] = starts.to(self.device)
        self.count[row] = torch.tensor(counts, dtype=torch.int32).to(self.device)
        self.prompt_len[row] = int(view.prompt_len)
        self._rows[row] = (view, offset, size)

    def _drop(self, row: int) -> None:
        _, offset, size = self._rows.pop(row)
        self.prompt_len[row] = 0
        self.count[row] = 0
        self._release(offset, size)

    def _allocate(self, size: int) -> int:
        for i, (offset, free) in enumerate(self._free):
            if free >= size:
                self._free[i] = (offset + size, free - size)
                return offset
        raise RuntimeError(
            f"vlcache: the kept-position store is full ({self.used()} of {self.capacity} entries in use, "
            f"{size} more needed); it holds num_layers x physical slots, which only shared prefixes with "
            "reuse 'off' can exceed"
        )

    def _release(self, offset: int, size: int) -> None:
        merged = sorted(self._free + [(offset, size)])
        self._free = []
        for off, n in merged:
            if self._free and self._free[-1][0] + self._free[-1][1] == off:
                self._free[-1] = (self._free[-1][0], self._free[-1][1] + n)
            elif n or not self._free:
                self._free.append((off, n))


def _compressed(store: ViewStore, rows: torch.Tensor, seq_lens: torch.Tensor, decode: bool):
    """`[bs]` bool (rows read through their view), and their prompt lengths (0 where not)."""
    prompt = store.prompt_len[rows].to(torch.int64)
    on = (prompt > 0) & (seq_lens >= prompt)
    if not decode:  # an extend reads its prefix whole (compressed requests never extend)
        on = torch.zeros_like(on)
    return on, torch.where(on, prompt, 0)


def layer_lengths(store: ViewStore, rows: torch.Tensor, seq_lens: torch.Tensor, decode: bool) -> torch.Tensor:
    """`[L, bs]` int64: how many K/V entries each request reads in each layer (capturable: no host sync)."""
    rows, seq_lens = rows.to(torch.int64), seq_lens.to(torch.int64)
    on, prompt = _compressed(store, rows, seq_lens, decode)
    count = torch.where(on, store.count[rows].T.to(torch.int64), 0)  # [L, bs]
    return count + (seq_lens - prompt).unsqueeze(0)


def fill_indptr(lens: torch.Tensor, indptr: torch.Tensor) -> torch.Tensor:
    """Write `[0, cumsum(lens[l])]` into `indptr[l, : bs + 1]` (int32 buffer of width >= bs + 1); returns it."""
    bs = lens.shape[1]
    indptr[:, 0] = 0
    indptr[:, 1 : bs + 1] = torch.cumsum(lens, dim=1).to(indptr.dtype)
    return indptr[:, : bs + 1]


def gather_indices(
    store: ViewStore, req_to_token, phys, rows, seq_lens, indptr, width: int, decode: bool
) -> torch.Tensor:
    """`[L, width]` int64 physical slots by the contract above (entries past `indptr[l, bs]` are 0).

    Vectorised over `[L, width]` (`width` >= every layer's total): the reference for the Triton fill, and
    the CPU path. Its cost is proportional to `L * width`, so the GPU uses the kernel instead."""
    rows, seq_lens = rows.to(torch.int64), seq_lens.to(torch.int64)
    num_layers, bs = phys.shape[0], rows.numel()
    out_pos = torch.arange(width, device=phys.device).expand(num_layers, width)
    ends = indptr[:, 1 : bs + 1].to(torch.int64).contiguous()
    batch = torch.searchsorted(ends, out_pos.contiguous(), right=True)  # [L, width], bs = padding
    valid = batch < bs
    batch = batch.clamp(max=max(bs - 1, 0))
    j = out_pos - indptr[:, :bs].to(torch.int64).gather(1, batch)
    on, prompt = _compressed(store, rows, seq_lens, decode)
    row = rows[batch]
    layer = torch.arange(num_layers, device=phys.device).unsqueeze(1)
    count = torch.where(on[batch], store.count[row, layer].to(torch.int64), 0)
    from_kept = j < count
    kept_at = torch.where(from_kept, store.start[row, layer] + j, 0).clamp(0, store.kept.numel() - 1)
    pos = torch.where(from_kept, store.kept[kept_at].to(torch.int64), prompt[batch] + j - count)
    pos = torch.where(valid, pos, 0)
    logical = req_to_token[row, pos].to(torch.int64)
    physical = phys[layer, logical].to(torch.int64)
    return torch.where(valid, physical, 0)
