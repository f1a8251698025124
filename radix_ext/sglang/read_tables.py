"""What each decoding request reads, per layer, as physical slot ids: built once, then one column per step.

A request's table `phys[l, :lens[l]]` lists, in layer `l`, the physical slots of the tokens it attends
to: every logical token holding a slot in `l` when uncompressed (all of them, unless it read a prefix
an earlier turn left compressed); `kept[l]` then `[prompt_len, seq_len)` when compressed. It
is built from `req_to_token` and the slot table on the request's first decode step (all layers at
once), and each later step appends the new token's physical slot in every layer with one vectorised
write, so a step costs no per-layer translation, concatenation or padding of the kept tokens. Where a
layer holds a subset, the entries' logical positions are kept beside them (`pos`), for sliding windows.

Contract: a table belongs to one request on one `req_to_token` row. Every occupant of a row starts
with an extend (prefill, re-prefill after retraction), so `ReadTables.forget_rows` at each extend
drops the previous occupant's table; the request id is checked as well. Plain torch: no SGLang import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RequestTable:
    """`phys[l, :lens[l]]`: physical slots the request reads in layer `l`; covers `seq_len` logical tokens.
    `pos[l, :lens[l]]`: their logical positions (ascending), or None where every layer holds every token."""

    rid: str
    seq_len: int
    phys: torch.Tensor  # [L, capacity] int64
    lens: torch.Tensor  # [L] int64
    pos: torch.Tensor | None = None  # [L, capacity] int64

    def layer(self, layer: int) -> torch.Tensor:
        return self.phys[layer, : int(self.lens[layer])]

    def window_start(self, layer: int, window: int) -> int:
        """Index of layer `layer`'s first entry the newest token reads under a sliding window `window`
        (positions [seq_len - 1 - window, seq_len - 1])."""
        first = self.seq_len - 1 - window
        if self.pos is None:
            return max(0, first)
        return int(torch.searchsorted(self.pos[layer, : int(self.lens[layer])], first))


class ReadTables:
    """Per-row `RequestTable`s of the decoding requests, kept between steps."""

    def __init__(self, slot_table, req_to_token: torch.Tensor):
        self.slot_table, self.req_to_token = slot_table, req_to_token
        self.by_row: dict[int, RequestTable] = {}

    def forget_rows(self, rows) -> None:
        for row in rows:
            self.by_row.pop(int(row), None)

    def for_decode(self, rid: str, row: int, seq_len: int, view) -> RequestTable:
        """The request's table covering `seq_len` tokens (the new token's slot already in `req_to_token`)."""
        table = self.by_row.get(row)
        if table is not None and table.rid == rid and table.seq_len == seq_len - 1:
            self._append(table, int(self.req_to_token[row, seq_len - 1]))
        elif table is None or table.rid != rid or table.seq_len != seq_len:
            table = self.by_row[row] = self._build(rid, row, seq_len, view)
        return table

    def _build(self, rid: str, row: int, seq_len: int, view) -> RequestTable:
        logical = self.req_to_token[row, :seq_len].to(torch.int64)
        phys = self.slot_table.phys
        num_layers = phys.shape[0]
        cols = phys[:, logical].to(torch.int64) if view is None else None  # [L, seq_len]: one gather
        if cols is not None and bool(cols.all()):
            lens = torch.full((num_layers,), seq_len, dtype=torch.int64)
            return RequestTable(rid, seq_len, _with_headroom(cols), lens)
        # a compressed view, or a prefix reused compressed (slots held in some layers only)
        if view is None:
            positions = [torch.nonzero(row).flatten() for row in cols]
        else:
            tail = torch.arange(view.prompt_len, seq_len, dtype=torch.int64)
            positions = [torch.cat((kept.to(torch.int64), tail)) for kept in view.kept]
        lens = torch.tensor([p.numel() for p in positions], dtype=torch.int64)
        slots = torch.zeros((num_layers, int(lens.max())), dtype=torch.int64, device=phys.device)
        pos = torch.zeros_like(slots)
        for layer, p in enumerate(positions):
            slots[layer, : p.numel()] = phys[layer, logical[p]]
            pos[layer, : p.numel()] = p
        return RequestTable(rid, seq_len, _with_headroom(slots), lens, _with_headroom(pos))

    def _append(self, table: RequestTable, logical_slot: int) -> None:
        if int(table.lens.max()) >= table.phys.shape[1]:
            table.phys = _with_headroom(table.phys, table.phys.shape[1])
            table.pos = None if table.pos is None else _with_headroom(table.pos, table.pos.shape[1])
        layers = torch.arange(table.phys.shape[0])
        table.phys[layers, table.lens] = self.slot_table.phys[:, logical_slot].to(torch.int64)
        if table.pos is not None:
            table.pos[layers, table.lens] = table.seq_len  # the new token's position
        table.lens += 1
        table.seq_len += 1


def _with_headroom(cols: torch.Tensor, extra: int = 256) -> torch.Tensor:
    """`cols` in a wider zero tensor: room for `extra` decode steps before the next regrowth."""
    out = torch.zeros((cols.shape[0], cols.shape[1] + extra), dtype=cols.dtype, device=cols.device)
    out[:, : cols.shape[1]] = cols
    return out
