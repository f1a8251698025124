"""Both attention backends score through one loop (`scoring.score_chunk`): the same plan over the same
pool gives the same statistics from each, equal to `attention_stats` over the request's prompt keys, and
a plan that will not compress is scored by neither.

The backends are built without a model runner (as in test_triton_views.py): only the attributes their
`_score_rows` read, over a real `LayerwiseKVPool` whose layers hand out physical slots in different orders.
"""

from types import SimpleNamespace

import pytest
import torch
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool

from radix_ext.policy import PromptLayout, attention_stats, get_policy
from radix_ext.sglang import attention_backend, scoring, triton_backend
from radix_ext.sglang.attention_backend import ExtendBatch, VLCacheTorchNativeBackend
from radix_ext.sglang.layerwise_allocator import LayerwiseTokenAllocator
from radix_ext.sglang.layerwise_pool import LayerwiseKVPool
from radix_ext.sglang.request_plan import CompressionPlan
from radix_ext.sglang.triton_backend import VLCacheTritonBackend

L, H, HKV, D, P, CTX = 2, 4, 2, 8, 64, 32
ROWS = [1, 3, 2]  # three requests of one extend batch
PREFIX, EXTEND, PROMPT = [4, 0, 2], [6, 8, 3], [10, 8, 5]


def _layer(layer_id):
    return SimpleNamespace(
        layer_id=layer_id, tp_q_head_num=H, qk_head_dim=D, scaling=D**-0.5, k_scale=None, v_scale=None
    )


@pytest.fixture
def batch():
    """A pool holding every request's prefix and this chunk's K/V, as when `_score_rows` runs."""
    torch.manual_seed(0)
    pool = LayerwiseKVPool(
        size=P, page_size=1, dtype=torch.float32, head_num=HKV, head_dim=D, layer_num=L, device="cpu",
        enable_memory_saver=False,
    )  # fmt: skip
    allocator = LayerwiseTokenAllocator(P, 2 * P, torch.float32, "cpu", pool, need_sort=False)
    for layer in range(L):
        allocator.slot_table.free[layer] = allocator.slot_table.free[layer][torch.randperm(P)]
    req_to_token = ReqToTokenPool(size=4, max_context_len=CTX, device="cpu", enable_memory_saver=False)
    rtt = req_to_token.req_to_token
    for row, p, n in zip(ROWS, PREFIX, EXTEND, strict=True):
        logical = allocator.alloc(p + n)
        rtt[row, : p + n] = logical.to(rtt.dtype)
        for layer in range(L):
            pool.set_kv_buffer(_layer(layer), logical, torch.randn(p + n, HKV, D), torch.randn(p + n, HKV, D))
    fb = SimpleNamespace(extend_prefix_lens_cpu=PREFIX, extend_seq_lens_cpu=EXTEND)
    return SimpleNamespace(pool=pool, rtt=rtt, req_to_token=req_to_token, fb=fb)


def _plan(prompt, rows, skip_reason="", reused_prefix=0):
    policy = get_policy("vlcache")
    plan = CompressionPlan(policy, 0.5, PromptLayout(prompt), torch.tensor(rows), skip_reason)
    plan.reused_prefix = reused_prefix
    return plan


def _torch_native(batch, plans):
    b = object.__new__(VLCacheTorchNativeBackend)
    lens = [p + n for p, n in zip(PREFIX, EXTEND, strict=True)]
    logical = [batch.rtt[row, :n].to(torch.int64) for row, n in zip(ROWS, lens, strict=True)]
    b.__dict__.update(token_to_kv_pool=batch.pool, req_to_token_pool=batch.req_to_token, device=torch.device("cpu"))
    b._extend = ExtendBatch(seq_lens=lens, logical=logical, views=[None] * len(ROWS), plans=plans)
    return b


def _triton(batch, plans):
    b = object.__new__(VLCacheTritonBackend)
    b.__dict__.update(token_to_kv_pool=batch.pool, req_to_token=batch.rtt, _plans=list(zip(ROWS, plans, strict=True)))
    return b


def _score_both(batch, make_plans, q):
    """Run each backend's `_score_rows` on fresh plans for every layer; returns (torch plans, triton plans)."""
    native_plans, triton_plans = make_plans(), make_plans()
    native, triton = _torch_native(batch, native_plans), _triton(batch, triton_plans)
    for layer_id in range(L):
        layer = _layer(layer_id)
        table, _, _, _ = native._extend_table(layer_id, PREFIX)
        native._score_rows(q[layer_id], layer, batch.fb, table)
        triton._score_rows(q[layer_id], layer, batch.fb)
    return native_plans, triton_plans


def test_both_backends_call_the_one_scoring_loop():
    assert attention_backend.score_chunk is triton_backend.score_chunk is scoring.score_chunk


def test_both_backends_score_the_same_rows_of_the_same_plan(batch):
    q = torch.randn(L, sum(EXTEND), H, D)
    # Request 0 is scored in this chunk (rows 6..9 of [4, 10)), request 1 in part (rows 5..7; row 9 is in
    # a later chunk), request 2 has no plan.
    native, triton = _score_both(batch, lambda: [_plan(10, [6, 7, 8, 9]), _plan(10, [5, 6, 7, 9]), None], q)
    for i in (0, 1):
        assert len(native[i].parts) == len(triton[i].parts) == L
        for layer in range(L):
            (got_native,), (got_triton,) = native[i].parts[layer], triton[i].parts[layer]
            torch.testing.assert_close(got_native.column_sums, got_triton.column_sums)
            torch.testing.assert_close(got_native.sparsity, got_triton.sparsity)
            assert got_native.num_rows == got_triton.num_rows
    rows = torch.tensor([5, 6, 7])  # request 1 against its own keys, computed here
    keys = batch.pool.get_key_buffer(1)[batch.pool.physical_indices(1, batch.rtt[3, :8])]
    start = EXTEND[0]
    want = attention_stats(q[1][start + rows].transpose(0, 1), keys.transpose(0, 1), rows, scale=D**-0.5)
    torch.testing.assert_close(native[1].parts[1][0].column_sums, want.column_sums)
    assert native[1].parts[1][0].num_rows == 3


@pytest.mark.parametrize("skip", [{"skip_reason": "prompt too short"}, {"reused_prefix": 4}])
def test_neither_backend_scores_a_plan_that_will_not_compress(batch, skip):
    q = torch.randn(L, sum(EXTEND), H, D)
    native, triton = _score_both(batch, lambda: [_plan(10, [6, 7], **skip), None, None], q)
    assert not native[0].will_compress
    assert native[0].parts == triton[0].parts == [] and native[0].scoring_s == triton[0].scoring_s == 0.0
    assert not any(scoring.scores(plan) for plan in native)  # the Triton forward's gate: no scoring pass at all
