"""`VLCacheTritonBackend`: SGLang's Triton attention backend, each layer reading its own KV view.

SGLang's Triton kernels read K/V by physical slot id through `kv_indptr` / `kv_indices`. This subclass
builds one pair per layer for the whole batch (`layer_indices`: lengths and `indptr` in torch, the
indices in one Triton launch for all layers, no host sync), where stock builds one pair from
`req_to_token`, and hands layer `l`'s pair to the stock kernel before each layer's call. Uncompressed
requests read every token through the layer's slot map (exactly stock's attention); a compressed one
reads `kept[l]` then its decode tail. The kernels, the KV writes and the kv-split heuristics are stock.

Decode runs under CUDA graphs: the per-layer buffers are fixed, sized at capture as
`indptr [L, max_bs + 1]` int32 and `indices [L, max_bs * context_len]` int64 (L x stock's one
`kv_indices` buffer, which this backend does not allocate), e.g. 28 layers x 160 x 32768 x 8 B = 1.2 GB
for a 7B model at batch 160, 32k context: lower `--cuda-graph-max-bs` to shrink it. What is not
captured: prefill (extend) stays eager, because the post-vision scoring of planned rows runs there
with host-side plans (`attention_stats`, chunked: never the full `[rows, m]` attention in fp32 at once),
and the views are synced into `ViewStore` on the host before each forward (outside any graph).
"""

from __future__ import annotations

import torch
from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

from radix_ext.sglang.layer_indices import ViewStore, fill_indptr, layer_lengths
from radix_ext.sglang.layer_indices_kernel import fill_layer_kv_indices
from radix_ext.sglang.layerwise_pool import LayerwiseKVPool
from radix_ext.sglang.scoring import score_chunk, scores


class VLCacheTritonBackend(TritonAttnBackend):
    def __init__(self, model_runner):
        super().__init__(model_runner)
        pool = self.token_to_kv_pool
        if not isinstance(pool, LayerwiseKVPool):
            raise RuntimeError(
                "attention backend 'vlcache_triton' needs the vlcache KV pool: "
                "start SGLang with --radix-cache-backend vlcache"
            )
        if (getattr(model_runner, "sliding_window_size", None) or -1) > -1:
            raise RuntimeError(  # its views read every kept key: a window would be silently ignored
                "attention backend 'vlcache_triton' does not apply sliding windows: "
                "serve this model on the torch-native attention backend (vlcache_torch_native)"
            )
        self.num_layers = pool.layer_num
        # Every kept (row, layer) entry holds its own physical slot in that layer (a private copy, or
        # slots the request owns), so L x physical slots bounds the store.
        self.views = ViewStore(
            self.num_layers, self.req_to_token.shape[0], self.num_layers * pool.slot_table.physical_size, self.device
        )
        self._decode = False
        self._layer_indptr = self._layer_indices = None
        self._split_lens = None  # per request, the most entries any layer reads: sizes the kv splits
        self._graph_indptr = self._graph_indices = None
        self._plans: list = []

    # --- metadata: one (indptr, indices) pair per layer -----------------------------------------------

    def init_forward_metadata(self, forward_batch):
        self._begin(forward_batch)
        super().init_forward_metadata(forward_batch)

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        self._begin(forward_batch)
        super().init_forward_metadata_out_graph(forward_batch, in_capture)

    def _begin(self, forward_batch) -> None:
        mode = forward_batch.forward_mode
        if not (mode.is_decode_or_idle() or mode.is_extend()) or mode.is_target_verify():
            raise RuntimeError(f"vlcache_triton serves decode and extend batches only, not {mode}")
        self._decode = mode.is_decode_or_idle()
        pool = self.token_to_kv_pool
        self.views.sync(pool.views)
        self._plans = []
        if not self._decode:
            rows = forward_batch.req_pool_indices.tolist()  # extends are eager: a host read is fine
            if any(row in pool.views for row in rows):
                raise RuntimeError("an extend reached a compressed request: compressed requests only decode")
            rids = forward_batch.rids or [None] * len(rows)
            self._plans = [(row, pool.plans.get(rid)) for row, rid in zip(rows, rids, strict=True)]

    def _fill_kv_indptr_and_indices(self, plan, bs, seq_lens, req_pool_indices, kv_indices, kv_indptr=None):
        """Stock fills one pair from `req_to_token`; here every layer's pair (`layer_indices` contract).
        `seq_lens` are the decode lengths, or an extend's prefix lengths."""
        rows, lens_in = req_pool_indices[:bs], seq_lens[:bs]
        lens = layer_lengths(self.views, rows, lens_in, self._decode)
        if self._graph_indices is not None and kv_indices is self.cuda_graph_kv_indices:
            indptr, indices = self._graph_indptr, self._graph_indices  # fixed: captured graphs read them
        else:
            indptr = torch.empty((self.num_layers, bs + 1), dtype=torch.int32, device=self.device)
            indices = torch.empty((self.num_layers, max(kv_indices.numel(), 1)), dtype=torch.int64, device=self.device)
        self._layer_indptr = fill_indptr(lens, indptr)
        fill_layer_kv_indices(
            indices, indptr, self.views, self.req_to_token, self.token_to_kv_pool.slot_table.phys,
            rows, lens_in, self._decode,
        )  # fmt: skip
        self._layer_indices = indices
        self._split_lens = lens.amax(0).to(seq_lens.dtype) if self._decode else None
        # Stock hands this (layer 0's) on to its metadata; each layer's call swaps in its own.
        stock = self.kv_indptr[: bs + 1] if kv_indptr is None else kv_indptr
        stock.copy_(self._layer_indptr[0])
        return stock

    def get_num_kv_splits(self, num_kv_splits, seq_lens, uneven_batch=None):
        # Split by what a request reads (its longest layer), not by its logical length.
        if self._split_lens is not None and self._split_lens.shape == seq_lens.shape:
            seq_lens, self._split_lens = self._split_lens, None
        return super().get_num_kv_splits(num_kv_splits, seq_lens, uneven_batch)

    def init_cuda_graph_state(self, max_bs, max_num_tokens, kv_indices_buf=None, cuda_graph_num_kv_splits_buf=None):
        # Stock's single kv_indices buffer is never read (each layer has its own): a 1-entry stand-in.
        stand_in = torch.zeros(1, dtype=torch.int64, device=self.device) if kv_indices_buf is None else kv_indices_buf
        super().init_cuda_graph_state(max_bs, max_num_tokens, stand_in, cuda_graph_num_kv_splits_buf)
        self._graph_indptr = torch.zeros((self.num_layers, max_num_tokens + 1), dtype=torch.int32, device=self.device)
        self._graph_indices = torch.zeros(
            (self.num_layers, max_num_tokens * self.max_context_len), dtype=torch.int64, device=self.device
        )

    def _use_layer(self, layer) -> None:
        index = layer.layer_id - self.token_to_kv_pool.start_layer
        self.forward_metadata.kv_indptr = self._layer_indptr[index]
        self.forward_metadata.kv_indices = self._layer_indices[index]

    # --- forwards -------------------------------------------------------------------------------------

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        self._use_layer(layer)
        return super().forward_decode(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        self._use_layer(layer)
        o = super().forward_extend(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        if any(scores(plan) for _, plan in self._plans):
            self._score_rows(q.view(-1, layer.tp_q_head_num, layer.qk_head_dim), layer, forward_batch)
        return o

    def _score_rows(self, q_, layer, forward_batch) -> None:
        """Attention statistics of the planned rows in this chunk against the prompt keys so far (this
        chunk's K/V are in the pool already): `score_chunk`, reading keys through the slot table."""
        pool, rows = self.token_to_kv_pool, [row for row, _ in self._plans]
        k_buffer = pool.get_key_buffer(layer.layer_id)

        def prompt_keys(i: int, n: int) -> torch.Tensor:
            return k_buffer[pool.physical_indices(layer.layer_id, self.req_to_token[rows[i], :n])]

        score_chunk(
            q_, [plan for _, plan in self._plans], forward_batch.extend_prefix_lens_cpu,
            forward_batch.extend_seq_lens_cpu, layer.layer_id - pool.start_layer, layer.scaling, prompt_keys,
        )  # fmt: skip
