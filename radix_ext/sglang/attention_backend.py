"""`VLCacheTorchNativeBackend`: SGLang's torch_native attention reading per-layer, per-request views.

For each layer it builds a small table of *physical* slot ids per request (logical `req_to_token`
rows translated through the slot table, compressed requests reduced to their kept tokens in that
layer) and hands it to the stock SDPA loops, so uncompressed requests compute exactly as stock.
During prefill it also scores the rows each request's policy asks for (`radix_ext.policy.attention_stats`).
"""

from __future__ import annotations

import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

from radix_ext.policy import attention_stats
from radix_ext.sglang.layerwise_pool import LayerwiseKVPool
from radix_ext.sglang.request_plan import Stopwatch


class VLCacheTorchNativeBackend(TorchNativeAttnBackend):
    def __init__(self, model_runner):
        super().__init__(model_runner)
        if not isinstance(self.token_to_kv_pool, LayerwiseKVPool):
            raise RuntimeError(
                "attention backend 'vlcache_torch_native' needs the vlcache KV pool: "
                "start SGLang with --radix-cache-backend vlcache"
            )
        self._batch = None

    def init_forward_metadata(self, forward_batch):
        super().init_forward_metadata(forward_batch)
        pool = self.token_to_kv_pool
        rows = forward_batch.req_pool_indices.tolist()
        seq_lens = forward_batch.seq_lens_cpu.tolist() if forward_batch.seq_lens_cpu is not None else forward_batch.seq_lens.tolist()
        self._batch = {
            "rows": rows,
            "seq_lens": seq_lens,
            "logical": [self.req_to_token_pool.req_to_token[row, :n].to(torch.int64) for row, n in zip(rows, seq_lens)],
            "views": [pool.views.get(row) for row in rows],
            "plans": [pool.plans.get(rid) for rid in (forward_batch.rids or [None] * len(rows))],
        }

    def _layer_table(self, layer_id: int):
        """`[bs, max_len]` physical ids of what each request reads in this layer, and their lengths."""
        pool = self.token_to_kv_pool
        per_req = []
        for logical, view in zip(self._batch["logical"], self._batch["views"]):
            if view is not None:
                kept = view.kept[layer_id - pool.start_layer]
                logical = torch.cat((logical[kept], logical[view.prompt_len :]))
            per_req.append(pool.physical_indices(layer_id, logical))
        lengths = [t.numel() for t in per_req]
        table = torch.zeros((len(per_req), max(lengths, default=0)), dtype=torch.int64, device=self.device)
        for i, t in enumerate(per_req):
            table[i, : t.numel()] = t
        return table, lengths

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, forward_batch.out_cache_loc, k, v)
        table, lengths = self._layer_table(layer.layer_id)
        if any(view is not None for view in self._batch["views"]):
            raise RuntimeError("an extend reached a compressed request: compressed requests only decode")
        q_ = q.view(-1, layer.tp_q_head_num, layer.qk_head_dim)
        o = q.new_empty((q.shape[0], layer.tp_q_head_num * layer.v_head_dim))
        self._run_sdpa_forward_extend(
            q_, o.view(-1, layer.tp_q_head_num, layer.v_head_dim),
            self.token_to_kv_pool.get_key_buffer(layer.layer_id),
            self.token_to_kv_pool.get_value_buffer(layer.layer_id),
            table, torch.arange(len(lengths)), torch.tensor(lengths),
            forward_batch.extend_prefix_lens, forward_batch.extend_seq_lens, None,
            scaling=layer.scaling, enable_gqa=layer.tp_q_head_num != layer.tp_k_head_num, causal=True,
        )  # fmt: skip
        self._score_rows(q_, layer, forward_batch, table, lengths)
        return o

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        q = q.reshape(-1, layer.tp_q_head_num * layer.qk_head_dim)
        if save_kv_cache and k is not None and v is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, forward_batch.out_cache_loc, k, v)
        table, lengths = self._layer_table(layer.layer_id)
        o = q.new_empty((q.shape[0], layer.tp_q_head_num * layer.v_head_dim))
        self._run_sdpa_forward_decode(
            q.view(-1, layer.tp_q_head_num, layer.qk_head_dim), o.view(-1, layer.tp_q_head_num, layer.v_head_dim),
            self.token_to_kv_pool.get_key_buffer(layer.layer_id),
            self.token_to_kv_pool.get_value_buffer(layer.layer_id),
            table, torch.arange(len(lengths)), torch.tensor(lengths), None,
            scaling=layer.scaling, enable_gqa=layer.tp_q_head_num != layer.tp_k_head_num, causal=False,
        )  # fmt: skip
        return o

    def _score_rows(self, q_, layer, forward_batch, table, lengths) -> None:
        """Attention statistics of the planned rows that fall in this chunk, against all keys so far."""
        prefix_lens = forward_batch.extend_prefix_lens_cpu
        extend_lens = forward_batch.extend_seq_lens_cpu
        start_q = 0
        layer_idx = layer.layer_id - self.token_to_kv_pool.start_layer
        for i, plan in enumerate(self._batch["plans"]):
            prefix, extend = int(prefix_lens[i]), int(extend_lens[i])
            if plan is not None and plan.rows.numel():
                rows = plan.rows[(plan.rows >= prefix) & (plan.rows < prefix + extend)]
                if rows.numel():
                    with Stopwatch() as watch:
                        q_rows = q_[start_q + rows - prefix].transpose(0, 1)  # [H, r, d]
                        # Prompt keys only: a retracted request re-prefills its output tokens too.
                        n = min(lengths[i], plan.layout.num_tokens)
                        keys = self.token_to_kv_pool.get_key_buffer(layer.layer_id)[table[i, :n]]
                        stats = attention_stats(
                            q_rows, keys.transpose(0, 1), rows, scale=layer.scaling,
                            sparsity_threshold=plan.policy.sparsity_threshold,
                        )  # fmt: skip
                    plan.add_part(layer_idx, stats, watch.seconds)
            start_q += extend
