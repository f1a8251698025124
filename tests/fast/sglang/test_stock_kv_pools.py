"""SGLang's stock KV pools and radix tree, built on CPU and driven by hand.

These are the structures the plugin extends; the test pins down the behaviour it relies on
(slot 0 reserved, per-layer K/V buffers, tree match/lock/evict returning slots to the allocator).
"""

from array import array

import pytest
import torch
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey

SIZE, LAYERS, HEADS, HEAD_DIM = 64, 3, 2, 8


@pytest.fixture
def pools():
    kv = MHATokenToKVPool(
        size=SIZE, page_size=1, dtype=torch.float32, head_num=HEADS, head_dim=HEAD_DIM,
        layer_num=LAYERS, device="cpu", enable_memory_saver=False,
    )  # fmt: skip
    allocator = TokenToKVPoolAllocator(SIZE, torch.float32, "cpu", kv, need_sort=False)
    req_to_token = ReqToTokenPool(size=4, max_context_len=32, device="cpu", enable_memory_saver=False)
    tree = RadixCache(
        CacheInitParams(
            disable=False, req_to_token_pool=req_to_token, token_to_kv_pool_allocator=allocator, page_size=1
        )
    )
    return kv, allocator, req_to_token, tree


def key(ids):
    return RadixKey(array("l", ids))


def test_alloc_write_read_per_layer(pools):
    kv, allocator, req_to_token, _ = pools
    assert allocator.available_size() == SIZE
    slots = allocator.alloc(5)
    assert slots.tolist() == [1, 2, 3, 4, 5]  # slot 0 is reserved for padding
    assert allocator.available_size() == SIZE - 5

    row = req_to_token.alloc_rows(1)[0]
    req_to_token.write((row, slice(0, 5)), slots.to(torch.int32))
    assert req_to_token.req_to_token[row, :5].tolist() == slots.tolist()

    for layer in range(LAYERS):
        k = torch.full((5, HEADS, HEAD_DIM), float(layer))
        v = -k - 1
        kv.set_kv_buffer(_Layer(layer), slots, k, v)
    for layer in range(LAYERS):
        got_k = kv.get_key_buffer(layer)[req_to_token.req_to_token[row, :5].long()]
        got_v = kv.get_value_buffer(layer)[slots]
        assert torch.all(got_k == layer) and torch.all(got_v == -layer - 1)
    assert torch.all(kv.get_key_buffer(0)[0] == 0)  # the padding slot was never written

    allocator.free(slots)
    assert allocator.available_size() == SIZE


def test_tree_insert_match_lock_evict(pools):
    _, allocator, _, tree = pools
    slots = allocator.alloc(6)
    tree.insert(InsertParams(key=key([1, 2, 3, 4, 5, 6]), value=slots))
    assert tree.total_size() == 6 and tree.evictable_size() == 6

    match = tree.match_prefix(MatchPrefixParams(key=key([1, 2, 3, 9])))
    assert match.device_prefix_len == 3
    assert tree.path_device_indices(match.last_device_node).tolist() == slots[:3].tolist()

    tree.inc_lock_ref(match.last_device_node)  # a running request holds the shared prefix
    assert tree.protected_size() == 3 and tree.evictable_size() == 3
    result = tree.evict(EvictParams(num_tokens=6))
    assert result.num_tokens_evicted == 3  # only the unlocked tail can go
    assert allocator.available_size() == SIZE - 3

    tree.dec_lock_ref(match.last_device_node)
    tree.evict(EvictParams(num_tokens=6))
    assert tree.total_size() == 0
    assert allocator.available_size() == SIZE  # every slot is back


class _Layer:
    """The two attributes `set_kv_buffer` reads from a RadixAttention layer."""

    def __init__(self, layer_id):
        self.layer_id = layer_id
        self.k_scale = self.v_scale = None
