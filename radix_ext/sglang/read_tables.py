"""What each decoding request reads, per layer, as physical slot ids: built once, then one column per step.

A request's table `phys[l, :lens[l]]` lists, in layer `l`, the physical slots of the tokens it attends
to: every logical token holding a slot in `l` when uncompressed (all of them, unless it read a prefix
an earlier turn left compressed); `kept[l]` then `[prompt_len, seq_len)` when compressed. It
is built from `req_to_token` and the slot table on the request's first decode step (all layers at
once), and each later step appends the new token's physical slot in every layer with one vectorised
write, so a step costs no per-layer translation, concatenation or padding of the kept tokens.

Contract: a table belongs to one request on one `req_to_token` row. Every occupant of a row starts
with an extend (prefill, re-prefill after retraction), so `ReadTables.forget_rows` at each extend
drops the previous occupant's table; the request id is checked as well. Plain torch: no SGLang import.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RequestTable:
    """`phys[l, :lens[l]]`: physical slots the request reads in layer `l`; covers `seq_len` logical tokens."""

    rid: str
    seq_len: int
    phys: torch.Tensor  # [L, capacity] int64
    lens: torch.Tensor  # [L] int64

    def layer(self, layer: int) -> torch.Tensor:
        return self.phys[layer, : int(self.lens[layer])]


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
        else:  # a compressed view, or a prefix reused compressed (slots held in some layers only)
            if view is None:
                per_layer = [row[row != 0] for row in cols]
            else:
                tail = logical[view.prompt_len :]
                per_layer = [phys[layer, torch.cat((logical[kept], tail))] for layer, kept in enumerate(view.kept)]
            lens = torch.tensor([t.numel() for t in per_layer], dtype=torch.int64)
            cols = torch.zeros((num_layers, int(lens.max())), dtype=torch.int64, device=phys.device)
            for layer, t in enumerate(per_layer):
                cols[layer, : t.numel()] = t
        capacity = cols.shape[1] + 256  # headroom for decode steps before the first regrowth
        out = torch.zeros((num_layers, capacity), dtype=torch.int64, device=phys.device)
        out[:, : cols.shape[1]] = cols
        return RequestTable(rid, seq_len, out, lens)

    def _append(self, table: RequestTable, logical_slot: int) -> None:
        if int(table.lens.max()) >= table.phys.shape[1]:
            grown = torch.zeros(
                (table.phys.shape[0], table.phys.shape[1] * 2), dtype=torch.int64, device=table.phys.device
            )
            grown[:, : table.phys.shape[1]] = table.phys
            table.phys = grown
        layers = torch.arange(table.phys.shape[0])
        table.phys[layers, table.lens] = self.slot_table.phys[:, logical_slot].to(torch.int64)
        table.lens += 1
        table.seq_len += 1
