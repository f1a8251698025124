"""`VLCacheTritonBackend` end to end on small shapes: its own `forward_decode` / `forward_extend` run SGLang's
stock Triton backend code and kernels (under Triton's CPU interpreter here) over the real `LayerwiseKVPool`,
each layer reading its own view; outputs against a float64 attention over what `ReadTables` (the
torch-native backend's tables) says each request reads in each layer.

The backend is built without a model runner (SGLang's runtime context is not published in a unit
test): `_backend` sets the attributes the eager decode / extend paths read, with the values
`TritonAttnBackend.__init__` computes for a single-GPU, non-MLA, non-SWA, non-speculative model.
"""

import importlib
import os
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():  # before the kernels' import: @triton.jit reads it at decoration
    os.environ["TRITON_INTERPRET"] = "1"

from sglang.srt.layers.radix_attention import AttentionType  # noqa: E402
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402

from radix_ext.policy import attention_stats  # noqa: E402
from radix_ext.sglang.layer_indices import ViewStore  # noqa: E402
from radix_ext.sglang.layerwise_allocator import LayerwiseTokenAllocator  # noqa: E402
from radix_ext.sglang.layerwise_pool import LayerwiseKVPool, RequestView  # noqa: E402
from radix_ext.sglang.read_tables import ReadTables  # noqa: E402
from radix_ext.sglang.triton_backend import VLCacheTritonBackend  # noqa: E402

L, H, HKV, D, P, ROWS, CTX = 3, 4, 2, 16, 128, 5, 64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPLITS = 4


def _kernels():
    """SGLang's decode / extend kernel modules, interpreted on a CPU-only machine even if another test
    imported them first (then they are re-decorated with the interpreter on)."""
    from sglang.kernels.ops.attention import decode_attention, extend_attention, score_mod

    if DEVICE == "cpu" and type(decode_attention._fwd_grouped_kernel_stage1).__name__ != "InterpretedFunction":
        os.environ["TRITON_INTERPRET"] = "1"
        for module in (score_mod, decode_attention, extend_attention):
            importlib.reload(module)
        from sglang.kernels.ops.attention import decode_attention, extend_attention
    return decode_attention, extend_attention


def _layer(layer_id):
    return SimpleNamespace(
        layer_id=layer_id, tp_q_head_num=H, tp_k_head_num=HKV, tp_v_head_num=HKV, qk_head_dim=D, v_head_dim=D,
        scaling=D**-0.5, logit_capping_method="tanh", logit_cap=0.0, k_scale=None, v_scale=None,
        is_cross_attention=False, attn_type=AttentionType.DECODER, sliding_window_size=None, xai_temperature_len=-1,
    )  # fmt: skip


def _backend(pool, req_to_token):
    decode_attention, extend_attention = _kernels()
    b = object.__new__(VLCacheTritonBackend)
    b.__dict__.update(
        token_to_kv_pool=pool, req_to_token_pool=SimpleNamespace(size=ROWS), req_to_token=req_to_token,
        device=torch.device(DEVICE), num_layers=L, views=ViewStore(L, ROWS, L * P, DEVICE),
        _decode=False, _layer_indptr=None, _layer_indices=None, _split_lens=None, _graph_indptr=None,
        _graph_indices=None, _plans=[], dllm_attention=None, _dense_one_shot_kv_indptr=None,
        window_kv_indptr=None, sliding_window_size=None, dcp_size=1, max_context_len=CTX,
        kv_indptr=torch.zeros(ROWS + 1, dtype=torch.int32, device=DEVICE),
        qo_indptr=torch.zeros(ROWS + 1, dtype=torch.int64, device=DEVICE),
        mask_indptr=torch.zeros(ROWS + 1, dtype=torch.int64, device=DEVICE),
        num_head=H, num_kv_head=HKV, v_head_dim=D, swa_v_head_dim=None, max_kv_splits=SPLITS,
        static_kv_splits=True, device_core_count=0, enable_deterministic=False, split_tile_size=None,
        lean_total_programs=1, lean_block_m=16, use_sliding_window_kv_pool=False, is_draft_runner=False,
        use_mla=False, enable_lean_attention=False, use_pdl=False, page_size=1, use_dense_fp8_chunked_prefill=False,
        allow_bidirectional_attention_in_extend=False, use_verify_shared_kv=False, use_verify_splitkv=False,
        decode_attention_fwd=decode_attention.decode_attention_fwd,
        extend_attention_fwd=extend_attention.extend_attention_fwd,
    )  # fmt: skip
    return b


class Engine:
    """A pool with three requests: row 2 and row 4 compressed (uneven kept per layer), row 1 not."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.pool = LayerwiseKVPool(
            size=P, page_size=1, dtype=torch.float32, head_num=HKV, head_dim=D, layer_num=L, device=DEVICE,
            enable_memory_saver=False,
        )  # fmt: skip
        self.allocator = LayerwiseTokenAllocator(P, 2 * P, torch.float32, DEVICE, self.pool, need_sort=False)
        table = self.allocator.slot_table
        for layer in range(L):  # each layer hands out its physical slots in another order
            table.free[layer] = table.free[layer][torch.randperm(P, device=DEVICE)]
        self.req_to_token = ReqToTokenPool(size=ROWS, max_context_len=CTX, device=DEVICE, enable_memory_saver=False)
        self.rtt = self.req_to_token.req_to_token
        self.seq_lens = {}

    def prefill(self, row, prompt, kept=None):
        logical = self.allocator.alloc(prompt)
        self.rtt[row, :prompt] = logical.to(self.rtt.dtype)
        self.seq_lens[row] = prompt
        for layer in range(L):
            self.pool.set_kv_buffer(_layer(layer), logical, torch.randn(prompt, HKV, D), torch.randn(prompt, HKV, D))
        if kept is not None:
            view = RequestView(prompt_len=prompt, kept=[torch.tensor(k, dtype=torch.int64) for k in kept])
            for layer, k in enumerate(view.kept):
                evict = torch.ones(prompt, dtype=torch.bool)
                evict[k] = False
                self.allocator.evict_layer_slots(layer, logical.to(torch.int64)[evict])
            self.pool.views[row] = view

    def decode_batch(self, rows):
        """SGLang's decode step bookkeeping: one new logical slot per request at its end."""
        loc = self.allocator.alloc(len(rows))
        for i, row in enumerate(rows):
            self.rtt[row, self.seq_lens[row]] = int(loc[i])
            self.seq_lens[row] += 1
        seq_lens = torch.tensor([self.seq_lens[r] for r in rows], device=DEVICE)
        return SimpleNamespace(
            forward_mode=ForwardMode.DECODE, batch_size=len(rows), req_pool_indices=torch.tensor(rows, device=DEVICE),
            seq_lens=seq_lens, seq_lens_cpu=seq_lens.cpu(), seq_lens_sum=int(seq_lens.sum()), out_cache_loc=loc,
            out_cache_loc_is_physical=False, spec_info=None, kv_loc_plan=None, rids=[f"r{r}" for r in rows],
            encoder_lens=None,
        )  # fmt: skip


def _attend(q, keys, values, causal_from=None):
    """float64 attention of `q [n, H, d]` over `keys/values [m, HKV, d]` (GQA); `causal_from`: query i sees keys
    `< causal_from + i + 1`."""
    k = keys.double().repeat_interleave(H // HKV, 1)
    v = values.double().repeat_interleave(H // HKV, 1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * D**-0.5
    if causal_from is not None:
        visible = torch.arange(k.shape[0])[None, :] <= (causal_from + torch.arange(q.shape[0]))[:, None]
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def test_decode_reads_each_layers_view_through_the_stock_triton_kernel():
    engine = Engine()
    engine.prefill(2, 12, kept=[[0, 3, 11], [1, 2, 5, 7, 9, 11], [11]])
    engine.prefill(1, 10)
    engine.prefill(4, 9, kept=[[4], [0, 8], [2, 4, 6, 8]])
    rows = [2, 1, 4]
    backend = _backend(engine.pool, engine.rtt)
    tables = ReadTables(engine.allocator.slot_table, engine.rtt)
    for _ in range(3):
        fb = engine.decode_batch(rows)
        backend.init_forward_metadata(fb)
        for layer_id in range(L):
            layer = _layer(layer_id)
            q, k, v = torch.randn(len(rows), H * D), torch.randn(len(rows), HKV, D), torch.randn(len(rows), HKV, D)
            out = backend.forward_decode(q, k, v, layer, fb).view(len(rows), H, D)
            k_buf, v_buf = engine.pool.k_buffer[layer_id], engine.pool.v_buffer[layer_id]
            for i, row in enumerate(rows):
                table = tables.for_decode(f"r{row}", row, engine.seq_lens[row], engine.pool.views.get(row))
                slots = table.layer(layer_id)
                assert torch.equal(k_buf[slots[-1]], k[i])  # this step's K/V landed in the layer's slot
                want = _attend(q.view(-1, H, D)[i : i + 1], k_buf[slots], v_buf[slots])
                torch.testing.assert_close(out[i : i + 1].double(), want, rtol=1e-5, atol=1e-5)


def test_the_kv_splits_follow_what_a_request_reads_not_its_logical_length():
    engine = Engine()
    engine.prefill(2, 40, kept=[[0, 39], [5], [1, 2, 3]])
    engine.prefill(1, 8)
    backend = _backend(engine.pool, engine.rtt)
    fb = engine.decode_batch([2, 1])
    seen = []
    backend.static_kv_splits = False
    backend.device_core_count = 1
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    original = TritonAttnBackend.get_num_kv_splits
    try:
        TritonAttnBackend.get_num_kv_splits = lambda self, splits, lens, uneven=None: seen.append(lens.tolist())
        backend.init_forward_metadata(fb)
    finally:
        TritonAttnBackend.get_num_kv_splits = original
    assert seen == [[4, 9]]  # row 2: its longest layer keeps 3 + 1 decode token; row 1: all 9


def test_extend_reads_each_layers_prefix_and_scores_the_planned_rows():
    engine = Engine(seed=1)
    engine.prefill(1, 7)  # the first chunks, already in the pool
    engine.prefill(3, 5)
    backend = _backend(engine.pool, engine.rtt)
    recorded = []
    plan = SimpleNamespace(
        rows=torch.tensor([8, 9, 10]), layout=SimpleNamespace(num_tokens=11), will_compress=True,
        policy=SimpleNamespace(sparsity_threshold=0.01),
        add_part=lambda layer, stats, seconds: recorded.append((layer, stats)),
    )  # fmt: skip
    engine.pool.plans["r3"] = plan
    rows, prefix, extend = [1, 3], [7, 5], [3, 6]
    loc = engine.allocator.alloc(sum(extend))
    for row, p, n, chunk in zip(rows, prefix, extend, loc.split(extend), strict=True):
        engine.rtt[row, p : p + n] = chunk.to(engine.rtt.dtype)
    seq_lens = torch.tensor([p + n for p, n in zip(prefix, extend, strict=True)])
    fb = SimpleNamespace(
        forward_mode=ForwardMode.EXTEND, batch_size=2, req_pool_indices=torch.tensor(rows), seq_lens=seq_lens,
        seq_lens_cpu=seq_lens, seq_lens_sum=int(seq_lens.sum()), out_cache_loc=loc, out_cache_loc_is_physical=False,
        spec_info=None, kv_loc_plan=None, rids=["r1", "r3"], encoder_lens=None, extend_prefix_lens=torch.tensor(prefix),
        extend_prefix_lens_cpu=prefix, extend_seq_lens=torch.tensor(extend), extend_seq_lens_cpu=extend,
        mha_one_shot=False, attn_attend_prefix_cache=None,
    )  # fmt: skip
    backend.init_forward_metadata(fb)
    for layer_id in range(L):
        layer = _layer(layer_id)
        q, k, v = torch.randn(sum(extend), H * D), torch.randn(sum(extend), HKV, D), torch.randn(sum(extend), HKV, D)
        out = backend.forward_extend(q, k, v, layer, fb).view(-1, H, D)
        k_buf, v_buf = engine.pool.k_buffer[layer_id], engine.pool.v_buffer[layer_id]
        start = 0
        for row, p, n in zip(rows, prefix, extend, strict=True):
            slots = engine.allocator.slot_table.physical(layer_id, engine.rtt[row, : p + n])
            want = _attend(q.view(-1, H, D)[start : start + n], k_buf[slots], v_buf[slots], causal_from=p)
            torch.testing.assert_close(out[start : start + n].double(), want, rtol=1e-5, atol=1e-5)
            start += n
        keys = k_buf[engine.allocator.slot_table.physical(layer_id, engine.rtt[3, :11])]
        q_rows = q.view(-1, H, D)[3 + 8 - 5 : 3 + 11 - 5]  # row 3's queries start after row 1's 3
        want = attention_stats(q_rows.transpose(0, 1), keys.transpose(0, 1), plan.rows)
        got_layer, got = recorded[-1]
        assert got_layer == layer_id
        torch.testing.assert_close(got.column_sums, want.column_sums)


def test_an_extend_of_a_compressed_request_is_refused():
    engine = Engine()
    engine.prefill(2, 6, kept=[[0], [1], [2]])
    backend = _backend(engine.pool, engine.rtt)
    fb = SimpleNamespace(forward_mode=ForwardMode.EXTEND, req_pool_indices=torch.tensor([2]), rids=["r2"])
    with pytest.raises(RuntimeError, match="compressed requests only decode"):
        backend.init_forward_metadata(fb)


def _server_args(**overrides):
    base = dict(
        radix_cache_backend="vlcache", attention_backend=None, prefill_attention_backend=None,
        decode_attention_backend=None, speculative_algorithm=None, page_size=1, disable_radix_cache=False,
        enable_hierarchical_cache=False, tp_size=1, dp_size=1, pp_size=1, disaggregation_mode="null",
        enable_torch_compile=False, kv_canary="none", enable_mixed_chunk=True, disable_overlap_schedule=False,
        cuda_graph_backend_decode="auto", cuda_graph_backend_prefill="auto", device=None,
    )  # fmt: skip
    return SimpleNamespace(**{**base, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [{"device": "cuda"}, {"attention_backend": "triton"}, {"decode_attention_backend": "vlcache_triton"}],
)
def test_cuda_or_a_triton_request_selects_the_triton_backend_with_decode_graphs(overrides):
    from radix_ext.sglang.hooks import check_server_args

    args = _server_args(**overrides)
    check_server_args(args)
    assert args.attention_backend == "vlcache_triton" and args.decode_attention_backend is None
    assert args.cuda_graph_backend_decode == "auto" and args.cuda_graph_backend_prefill == "disabled"
    assert args.disable_overlap_schedule and not args.enable_mixed_chunk


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto-detection picks CUDA here")
@pytest.mark.parametrize("overrides", [{}, {"device": "cpu"}, {"attention_backend": "torch_native"}])
def test_cpu_keeps_the_torch_native_backend_without_graphs(overrides):
    from radix_ext.sglang.hooks import check_server_args

    args = _server_args(**overrides)
    check_server_args(args)
    assert args.attention_backend == "vlcache_torch_native"
    assert args.cuda_graph_backend_decode == args.cuda_graph_backend_prefill == "disabled"


def test_mixing_the_two_backends_is_refused():
    from radix_ext.sglang.hooks import check_server_args

    with pytest.raises(ValueError, match="mixed"):
        check_server_args(_server_args(prefill_attention_backend="torch_native", decode_attention_backend="triton"))
