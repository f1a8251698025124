"""The plugin's core on stock SGLang objects built by hand (CPU): the layer-wise allocator and pool, the
vlcache radix tree, `compress_request` in every reuse mode. Every test ends with the slot-accounting
invariant of docs/structures.md checked (`check_integrity`, in the fixture's teardown)."""

from array import array
from types import SimpleNamespace

import pytest
import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixKey

from radix_ext.policy import LayerStats, PromptLayout, get_policy
from radix_ext.sglang.compressor import compress_request
from radix_ext.sglang.layerwise_allocator import LayerwiseTokenAllocator
from radix_ext.sglang.layerwise_pool import LayerwiseKVPool
from radix_ext.sglang.radix_cache import VLCacheRadixCache
from radix_ext.sglang.request_plan import CompressionPlan

P, LAYERS, HEADS, HEAD_DIM, M = 64, 3, 2, 4, 16


class Core(SimpleNamespace):
    def used(self):
        return self.allocator.slot_table.used_per_layer()

    def new_row(self, slots, start=0):
        row = self.req_to_token.alloc_rows(1)[0]
        self.req_to_token.write((row, slice(start, start + slots.numel())), slots.to(torch.int32))
        return row

    def row(self, row, n=M):
        return self.req_to_token.req_to_token[row, :n].to(torch.int64)

    def write_kv(self, logical, base):
        """Token i of `logical` gets K = base + i + 100 * layer (V = -K) in every layer that holds it."""
        for layer in range(LAYERS):
            k = (
                (base + torch.arange(logical.numel(), dtype=torch.float32) + 100 * layer)
                .view(-1, 1, 1)
                .expand(-1, HEADS, HEAD_DIM)
            )
            self.kv.set_kv_buffer(_Layer(layer), logical, k.contiguous(), -k.contiguous())

    def read_k(self, layer, logical):
        return self.kv.get_key_buffer(layer)[self.kv.physical_indices(layer, logical)][:, 0, 0]


@pytest.fixture
def core():
    kv = LayerwiseKVPool(
        size=P, page_size=1, dtype=torch.float32, head_num=HEADS, head_dim=HEAD_DIM,
        layer_num=LAYERS, device="cpu", enable_memory_saver=False,
    )  # fmt: skip
    allocator = LayerwiseTokenAllocator(P, 4 * P, torch.float32, "cpu", kv, need_sort=False)
    req_to_token = ReqToTokenPool(size=4, max_context_len=64, device="cpu", enable_memory_saver=False)
    params = CacheInitParams(
        disable=False, req_to_token_pool=req_to_token, token_to_kv_pool_allocator=allocator, page_size=1
    )
    c = Core(kv=kv, allocator=allocator, req_to_token=req_to_token, tree=VLCacheRadixCache(params))
    yield c
    allocator.check_integrity()


def key(ids):
    return RadixKey(array("q", ids))


# --- allocator and pool -----------------------------------------------------------------------------------


def test_writes_land_in_each_layers_physical_slot_and_read_back(core):
    logical = core.allocator.alloc(5)
    assert core.used() == [5] * LAYERS and core.allocator.available_size() == P - 5
    core.write_kv(logical, base=0)
    for layer in range(LAYERS):
        assert core.read_k(layer, logical).tolist() == [100 * layer + i for i in range(5)]
        assert 0 not in core.kv.physical_indices(layer, logical).tolist()
    core.allocator.free(logical)
    assert core.used() == [0] * LAYERS and core.allocator.available_size() == P


def test_evicting_one_layer_frees_it_there_only_and_admission_sees_the_fullest_layer(core):
    logical = core.allocator.alloc(10)
    assert core.allocator.evict_layer_slots(1, logical[:6]) == 6
    assert core.allocator.evict_layer_slots(1, logical[:6]) == 0  # already free there: never twice
    assert core.used() == [10, 4, 10]
    assert core.allocator.available_size() == P - 10  # the fullest layer bounds admission
    core.allocator.check_integrity()
    core.allocator.free(logical)  # the rest of each logical slot goes back once
    assert core.used() == [0] * LAYERS


def test_a_double_free_is_refused_and_changes_nothing(core):
    logical = core.allocator.alloc(4)
    core.allocator.free(logical[:2])
    before = (core.allocator.available_size(), core.used())
    with pytest.raises(RuntimeError, match="double free"):
        core.allocator.free(logical[1:3])  # slot 1 already freed
    with pytest.raises(RuntimeError, match="double free"):
        core.allocator.free(logical[2:3].repeat(2))  # the same slot twice in one call
    assert (core.allocator.available_size(), core.used()) == before
    core.allocator.free(logical[2:])


def test_frees_inside_a_free_group_are_deferred_then_released_once(core):
    a, b = core.allocator.alloc(3), core.allocator.alloc(2)
    core.allocator.evict_layer_slots(0, a)
    core.allocator.free_group_begin()
    core.allocator.free(a)
    core.allocator.free(b)
    assert core.used() == [2, 5, 5]  # nothing released while the group is open
    core.allocator.free_group_end()
    assert core.used() == [0] * LAYERS and core.allocator.available_size() == P


def test_integrity_check_catches_a_slot_both_held_and_free_and_a_leaked_one(core):
    logical = core.allocator.alloc(3)
    table = core.allocator.slot_table
    held = table.physical(0, logical[:1])
    table.free[0] = torch.cat((table.free[0], held))
    with pytest.raises(AssertionError, match="twice"):
        table.check_integrity()
    table.free[0] = table.free[0][:-2]  # drop the duplicate and one genuinely free slot: leaked
    with pytest.raises(AssertionError, match="leaked"):
        table.check_integrity()
    table.free[0] = torch.cat((table.free[0], table.free[0].new_tensor([_missing(table, 0)])))
    core.allocator.free(logical)


def _missing(table, layer):
    present = set(table.free[layer].tolist()) | set(table.phys[layer][table.phys[layer] != 0].tolist())
    (slot,) = set(range(1, table.physical_size + 1)) - present
    return slot


# --- the tree over layer-wise slots -----------------------------------------------------------------------


def test_tree_match_lock_evict_over_layerwise_slots_with_a_shared_prefix(core):
    first = core.allocator.alloc(6)
    core.tree.insert(InsertParams(key=key([1, 2, 3, 4, 5, 6]), value=first))
    second_tail = core.allocator.alloc(2)  # a second prompt sharing [1, 2, 3]
    core.tree.insert(InsertParams(key=key([1, 2, 3, 7, 8]), value=torch.cat((first[:3], second_tail))))
    assert core.tree.total_size() == 8 and core.used() == [8] * LAYERS

    match = core.tree.match_prefix(MatchPrefixParams(key=key([1, 2, 3, 7, 9])))
    assert match.device_prefix_len == 4
    assert (
        core.tree.path_device_indices(match.last_device_node).tolist() == first[:3].tolist() + second_tail[:1].tolist()
    )
    lock = core.tree.lock(match.last_device_node)
    core.allocator.evict_layer_slots(2, first[3:])  # a layer-eviction of tree slots is counted once later
    assert core.tree.evict(EvictParams(num_tokens=100)).num_tokens_evicted == 4  # [4,5,6] and [8]
    assert core.used() == [4] * LAYERS
    core.tree.unlock(lock)
    core.tree.evict(EvictParams(num_tokens=100))
    assert core.tree.total_size() == 0 and core.used() == [0] * LAYERS


# --- compress_request -----------------------------------------------------------------------------------


def _request(core, ids, *, protected=0, lock=None, prefix_slots=None):
    """A request whose prompt `ids` is prefilled: row written, K/V written (token i: K = 1000 + i)."""
    own = core.allocator.alloc(len(ids) - protected)
    slots = own if prefix_slots is None else torch.cat((prefix_slots, own))
    row = core.new_row(slots)
    core.write_kv(own, base=1000 + protected)
    kv = SimpleNamespace(req_pool_idx=row, cache_protected_len=protected, cache_inserted_len=0)
    return SimpleNamespace(
        kv=kv, origin_input_ids=array("q", ids), extra_key=None, cache_salt=None, priority=None,
        lock=lock, last_node=None, skip_radix_cache_insert=True, rid="r",
    )  # fmt: skip


def _plan(reuse, budget=0.25, m=M):
    """h2o with hand-made column sums: layer l prefers tokens with i % 3 == l, so the kept sets differ."""
    policy = get_policy("h2o", min_prompt_tokens=1)
    plan = CompressionPlan(policy, budget, PromptLayout(m), torch.arange(m), "", reuse=reuse, client_skip_insert=False)
    for layer in range(LAYERS):
        sums = torch.tensor([10.0 + i if i % 3 == layer else float(i) / m for i in range(m)]).expand(HEADS, m)
        plan.add_part(layer, LayerStats(sparsity=None, column_sums=sums.contiguous(), num_rows=m), 0.0)
    return plan


def _compress(core, req, plan):
    return compress_request(req, plan, core.kv, core.allocator, core.req_to_token.req_to_token, core.tree)


IDS = list(range(100, 100 + M))


def test_lazy_reuse_hands_the_full_prompt_to_the_tree_and_keeps_a_private_copy_of_the_kept(core):
    req = _request(core, IDS)
    original = core.row(req.kv.req_pool_idx).clone()
    report = _compress(core, req, _plan("lazy"))
    view = core.kv.views[req.kv.req_pool_idx]
    kept = [k.numel() for k in view.kept]
    assert report["compressed"] and report["kept_tokens_per_layer"] == kept
    assert len({tuple(k.tolist()) for k in view.kept}) == LAYERS  # the layers keep different tokens
    assert report["freed_slots_per_layer"] == [M - k for k in kept]

    # The tree holds the exact prompt KV, evictable; the request reads its kept tokens from private slots.
    assert core.tree.evictable_size() == M and core.tree.protected_size() == 0
    assert core.tree.match_prefix(MatchPrefixParams(key=key(IDS + [7]))).device_prefix_len == M
    private = core.row(req.kv.req_pool_idx)
    assert not set(private.tolist()) & set(original.tolist()) and req.kv.cache_protected_len == 0
    assert core.used() == [M + k for k in kept]
    for layer, keep in enumerate(view.kept):
        assert core.read_k(layer, private[keep]).tolist() == core.read_k(layer, original[keep]).tolist()
        assert core.kv.physical_indices(layer, private).count_nonzero() == keep.numel()
    core.allocator.check_integrity()

    # Memory pressure: the tree's copy goes, the running request keeps exactly kept[l] and reads the same.
    assert core.tree.evict(EvictParams(num_tokens=M)).num_tokens_evicted == M
    assert core.used() == kept
    for layer, keep in enumerate(view.kept):
        assert core.read_k(layer, private[keep]).tolist() == [1000 + i + 100 * layer for i in keep.tolist()]
    core.allocator.check_integrity()
    core.allocator.free(private)  # release_kv_cache frees the request's whole row
    assert core.used() == [0] * LAYERS


def test_off_frees_the_evicted_tokens_at_once_and_caches_nothing(core):
    req = _request(core, IDS)
    report = _compress(core, req, _plan("off"))
    kept = report["kept_tokens_per_layer"]
    assert core.used() == kept and core.tree.total_size() == 0
    assert report["freed_slots_per_layer"] == [M - k for k in kept]
    core.allocator.free(core.row(req.kv.req_pool_idx))
    assert core.used() == [0] * LAYERS


def test_lazy_over_a_locked_shared_prefix_unlocks_it_and_frees_duplicates(core):
    # An earlier turn left IDS[:8] in the tree; this request matched it, locked it, prefilled the rest.
    prefix = core.allocator.alloc(8)
    core.write_kv(prefix, base=1000)
    core.tree.insert(InsertParams(key=key(IDS[:8]), value=prefix))
    match = core.tree.match_prefix(MatchPrefixParams(key=key(IDS)))
    req = _request(core, IDS, protected=8, lock=core.tree.lock(match.last_device_node), prefix_slots=prefix)
    # Meanwhile another request inserted IDS[:12] with its own slots: ours for [8, 12) are duplicates.
    other = core.allocator.alloc(4)
    core.tree.insert(InsertParams(key=key(IDS[:12]), value=torch.cat((prefix, other))))
    assert core.tree.protected_size() == 8

    report = _compress(core, req, _plan("lazy"))
    kept = report["kept_tokens_per_layer"]
    assert core.tree.protected_size() == 0 and req.lock is None  # the running request pins nothing
    assert core.tree.total_size() == M and core.tree.evictable_size() == M
    assert core.used() == [M + k for k in kept]  # the 4 duplicate slots were freed
    core.tree.evict(EvictParams(num_tokens=M))
    assert core.used() == kept
    core.allocator.free(core.row(req.kv.req_pool_idx))


def test_off_over_a_shared_prefix_leaves_the_tree_slots_alone(core):
    prefix = core.allocator.alloc(8)
    core.tree.insert(InsertParams(key=key(IDS[:8]), value=prefix))
    match = core.tree.match_prefix(MatchPrefixParams(key=key(IDS)))
    lock = core.tree.lock(match.last_device_node)
    req = _request(core, IDS, protected=8, lock=lock, prefix_slots=prefix)
    view_kept = _compress(core, req, _plan("off"))["kept_tokens_per_layer"]
    owned_kept = [int((k >= 8).sum()) for k in core.kv.views[req.kv.req_pool_idx].kept]
    assert core.used() == [8 + k for k in owned_kept] and sum(view_kept) >= sum(owned_kept)
    core.allocator.free(core.row(req.kv.req_pool_idx)[8:])  # SGLang frees [cache_protected_len, end)
    core.tree.unlock(lock)
    core.tree.evict(EvictParams(num_tokens=M))
    assert core.used() == [0] * LAYERS


def test_lazy_without_room_for_the_copy_falls_back_to_freeing_at_once(core):
    filler = core.allocator.alloc(P - M)  # a running request holds everything else
    req = _request(core, IDS)
    report = _compress(core, req, _plan("lazy"))
    assert core.used() == [P - M + k for k in report["kept_tokens_per_layer"]] and core.tree.total_size() == 0
    core.allocator.free(core.row(req.kv.req_pool_idx))
    core.allocator.free(filler)


def test_lazy_evicts_unlocked_tree_cache_to_make_room_for_the_copy(core):
    old = core.allocator.alloc(P - M)
    core.tree.insert(InsertParams(key=key(list(range(P - M))), value=old))  # an older turn, evictable
    req = _request(core, IDS)
    report = _compress(core, req, _plan("lazy"))
    kept = report["kept_tokens_per_layer"]
    assert core.tree.total_size() >= M  # this prompt is cached; enough of the old one went for the copy
    assert core.used() == [core.tree.total_size() + k for k in kept]
    core.allocator.free(core.row(req.kv.req_pool_idx))
    core.tree.evict(EvictParams(num_tokens=P))


def test_a_request_left_whole_under_lazy_goes_back_to_stock_tree_insertion(core):
    req = _request(core, IDS)
    plan = _plan("lazy", budget=1.0)
    plan.skip_reason = "budget 1.0 keeps every token"
    report = _compress(core, req, plan)
    assert not report["compressed"] and req.skip_radix_cache_insert is False
    assert core.used() == [M] * LAYERS and not core.kv.views
    core.allocator.free(core.row(req.kv.req_pool_idx))


# --- reuse: compressed -------------------------------------------------------------------------------------


def _finish_into_tree(core, req, ids):
    """What SGLang's release does for a request that inserts at finish: the tree takes its row's slots."""
    core.tree.insert(InsertParams(key=key(ids), value=core.row(req.kv.req_pool_idx, len(ids)).clone()))


def test_compressed_turn_enters_the_tree_compressed_and_eviction_counts_what_it_gives_back(core):
    req = _request(core, IDS)
    report = _compress(core, req, _plan("compressed"))
    kept = report["kept_tokens_per_layer"]
    assert req.skip_radix_cache_insert is False  # SGLang checkpoints it into the tree from now on
    assert core.used() == kept and core.tree.total_size() == 0  # as `off` while it runs
    _finish_into_tree(core, req, IDS)
    assert core.used() == kept and core.tree.total_size() == M
    # M tokens in the tree, but evicting them frees only kept[l] per layer: the fullest layer decides.
    assert core.tree.evictable_size() == max(kept) < M
    assert core.allocator.available_size() + core.tree.evictable_size() == P  # SGLang's idle leak check
    lock = core.tree.lock(core.tree.match_prefix(MatchPrefixParams(key=key(IDS))).last_device_node)
    assert core.tree.evictable_size() == 0 and core.tree.missing_per_layer.tolist() == [0] * LAYERS
    core.tree.unlock(lock)
    assert core.tree.evictable_size() == max(kept)
    core.tree.evict(EvictParams(num_tokens=M))
    assert core.used() == [0] * LAYERS and core.tree.missing_per_layer.tolist() == [0] * LAYERS


def test_allocation_evicts_compressed_turns_until_every_layer_has_room(core):
    turns = [IDS, list(range(200, 200 + M))]
    for ids in turns:
        req = _request(core, ids)
        _compress(core, req, _plan("compressed"))
        _finish_into_tree(core, req, ids)
    held = core.used()
    filler = core.allocator.alloc(P - max(held))  # a running request takes the rest of the fullest layer
    assert core.allocator.available_size() == 0 and core.tree.evictable_size() == max(held)
    need = max(held) - 1  # more than one turn gives back in some layer, less than its token count
    core.allocator.evict_to_free_tokens(core.tree, need)
    assert core.allocator.available_size() >= need and core.tree.total_size() == 0
    core.allocator.free(filler)


def test_compressed_prefix_match_is_used_only_past_the_images(core):
    prefix = core.allocator.alloc(8)
    core.tree.insert(InsertParams(key=key(IDS[:8]), value=prefix))
    plan = _plan("compressed")
    core.kv.plans["f"] = plan
    follow_up = SimpleNamespace(rid="f")
    for images_end, usable in ((6, 8), (8, 8), (12, 0)):
        plan.layout = PromptLayout(M, [(2, images_end)])
        match = core.tree.match_prefix(MatchPrefixParams(key=key(IDS), req=follow_up))
        assert match.device_prefix_len == usable and plan.reused_prefix == usable
        assert plan.will_compress == (usable == 0)  # a follow-up over a compressed turn is not scored again
    core.tree.evict(EvictParams(num_tokens=8))


class _Layer:
    """The two attributes `set_kv_buffer` reads from a RadixAttention layer."""

    def __init__(self, layer_id):
        self.layer_id = layer_id
        self.k_scale = self.v_scale = None
