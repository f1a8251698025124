"""`VLCacheTorchNativeBackend`: SGLang's torch_native attention reading per-layer, per-request views.

Decode (the step VL-Cache makes cheaper): each request's physical slot ids per layer come from
`ReadTables` (built once, one column appended per step for all layers), and attention gathers exactly
those K/V rows with one `index_select` per layer and request: one copy of the kept KV, no per-layer
translation, concatenation or padded table. Extend (prefill): per-layer physical tables handed to the stock SDPA loop, so
uncompressed requests compute exactly as stock; the rows each request's policy scores are scored
there (`scoring.score_chunk`, shared with the Triton backend). Sliding-window layers apply the window by
logical position in both (`sliding_window`), where stock counts indices into a list that may be a subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
from torch.nn.functional import scaled_dot_product_attention

from radix_ext.sglang.layerwise_pool import LayerwiseKVPool
from radix_ext.sglang.read_tables import ReadTables, RequestTable
from radix_ext.sglang.scoring import score_chunk
from radix_ext.sglang.sliding_window import extend_attention, layer_window


@dataclass
class ExtendBatch:
    """Per-forward state of an extend batch: logical rows, compressed views, compression plans."""

    seq_lens: list[int]
    logical: list[torch.Tensor]
    views: list
    plans: list


class VLCacheTorchNativeBackend(TorchNativeAttnBackend):
    def __init__(self, model_runner):
        super().__init__(model_runner)
        if not isinstance(self.token_to_kv_pool, LayerwiseKVPool):
            raise RuntimeError(
                "attention backend 'vlcache_torch_native' needs the vlcache KV pool: "
                "start SGLang with --radix-cache-backend vlcache"
            )
        self.read_tables = ReadTables(self.token_to_kv_pool.slot_table, self.req_to_token_pool.req_to_token)
        self._extend: ExtendBatch | None = None
        self._decode: list[RequestTable] = []

    def init_forward_metadata(self, forward_batch):
        super().init_forward_metadata(forward_batch)
        pool = self.token_to_kv_pool
        rows = forward_batch.req_pool_indices.tolist()
        seq_lens = (
            forward_batch.seq_lens_cpu if forward_batch.seq_lens_cpu is not None else forward_batch.seq_lens
        ).tolist()
        rids = forward_batch.rids or [None] * len(rows)
        if forward_batch.forward_mode.is_decode():
            self._extend = None
            self._decode = [
                self.read_tables.for_decode(rid, row, n, pool.views.get(row))
                for rid, row, n in zip(rids, rows, seq_lens, strict=True)
            ]
            return
        # Every occupant of a row starts with an extend: the previous occupant's read table is stale.
        self.read_tables.forget_rows(rows)
        self._decode = []
        self._extend = ExtendBatch(
            seq_lens=seq_lens,
            logical=[
                self.req_to_token_pool.req_to_token[row, :n].to(torch.int64)
                for row, n in zip(rows, seq_lens, strict=True)
            ],
            views=[pool.views.get(row) for row in rows],
            plans=[pool.plans.get(rid) for rid in rids],
        )

    def _extend_table(self, layer_id: int, prefix_lens):
        """`[bs, max_len]` physical ids each request of the extend batch reads in this layer, their lengths,
        prefix lengths and logical positions. A prefix reused compressed (`reuse: compressed`) holds no slot
        in this layer for the tokens an earlier turn evicted here (0): those are left out, as its decode
        would."""
        per_req = [self.token_to_kv_pool.physical_indices(layer_id, logical) for logical in self._extend.logical]
        positions = [torch.arange(t.numel()) for t in per_req]
        prefix_lens = [int(n) for n in prefix_lens]
        for i, t in enumerate(per_req):
            held = t != 0
            if not bool(held.all()):  # only prefix slots can be unheld: the new tokens were just allocated
                per_req[i], positions[i] = t[held], positions[i][held]
                prefix_lens[i] -= t.numel() - per_req[i].numel()
        lengths = [t.numel() for t in per_req]
        table = torch.zeros((len(per_req), max(lengths, default=0)), dtype=torch.int64, device=self.device)
        for i, t in enumerate(per_req):
            table[i, : t.numel()] = t
        return table, lengths, prefix_lens, positions

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, forward_batch.out_cache_loc, k, v)
        if any(view is not None for view in self._extend.views):
            raise RuntimeError("an extend reached a compressed request: compressed requests only decode")
        table, lengths, prefix_lens, positions = self._extend_table(
            layer.layer_id, forward_batch.extend_prefix_lens_cpu
        )
        q_ = q.view(-1, layer.tp_q_head_num, layer.qk_head_dim)
        o = q.new_empty((q.shape[0], layer.tp_q_head_num * layer.v_head_dim))
        o_ = o.view(-1, layer.tp_q_head_num, layer.v_head_dim)
        k_buffer = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
        v_buffer = self.token_to_kv_pool.get_value_buffer(layer.layer_id)
        gqa = layer.tp_q_head_num != layer.tp_k_head_num
        window = layer_window(layer)
        if window is None:
            self._run_sdpa_forward_extend(
                q_, o_, k_buffer, v_buffer, table, torch.arange(len(lengths)), torch.tensor(lengths),
                torch.tensor(prefix_lens), forward_batch.extend_seq_lens, None,
                scaling=layer.scaling, enable_gqa=gqa, causal=True,
            )  # fmt: skip
        else:
            slots = [table[i, :n] for i, n in enumerate(lengths)]
            extend_attention(
                q_, o_, k_buffer, v_buffer, slots, positions, forward_batch.extend_seq_lens_cpu, window,
                layer.scaling, gqa,
            )  # fmt: skip
        self._score_rows(q_, layer, forward_batch, table)
        return o

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, forward_batch.out_cache_loc, k, v)
        layer_idx = layer.layer_id - self.token_to_kv_pool.start_layer
        k_buffer = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
        v_buffer = self.token_to_kv_pool.get_value_buffer(layer.layer_id)
        q = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        o = q.new_empty((q.shape[0], layer.tp_q_head_num, layer.v_head_dim))
        gqa = layer.tp_q_head_num != layer.tp_k_head_num
        window = layer_window(layer)
        for i, table in enumerate(self._decode):
            slots = table.layer(layer_idx)
            if window is not None:
                slots = slots[table.window_start(layer_idx, window) :]
            # One gather of the rows this layer reads; [n, Hkv, d] -> [Hkv, n, d] is a view for SDPA.
            keys = torch.index_select(k_buffer, 0, slots).movedim(0, 1)
            values = torch.index_select(v_buffer, 0, slots).movedim(0, 1)
            if keys.dtype != q.dtype:
                keys, values = keys.to(q.dtype), values.to(q.dtype)
            out = scaled_dot_product_attention(
                q[i].unsqueeze(1).unsqueeze(0),
                keys.unsqueeze(0),
                values.unsqueeze(0),
                scale=layer.scaling,
                enable_gqa=gqa,
            )
            o[i] = out[0, :, 0]
        return o.view(q.shape[0], -1)

    def _score_rows(self, q_, layer, forward_batch, table) -> None:
        """Attention statistics of the planned rows in this chunk, against the keys so far (`score_chunk`)."""
        keys = self.token_to_kv_pool.get_key_buffer(layer.layer_id)
        score_chunk(
            q_, self._extend.plans, forward_batch.extend_prefix_lens_cpu, forward_batch.extend_seq_lens_cpu,
            layer.layer_id - self.token_to_kv_pool.start_layer, layer.scaling, lambda i, n: keys[table[i, :n]],
        )  # fmt: skip
