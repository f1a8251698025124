"""Every SGLang name the plugin depends on, as data: the checklist of an SGLang upgrade.

Plain data, no SGLang import (importable anywhere). `tests/fast/sglang/test_upstream_inventory.py`
resolves each entry against the installed SGLang and prints what moved. Contract: a new use of an
SGLang hook target, base-class method, private name or field in `radix_ext/sglang/` is added here.

- `HOOKS`: `HookRegistry` targets (registered by `registration.py` from this tuple).
- `METHODS`: methods the plugin overrides, calls or hooks, with the parameter names it relies on, in
  order (`positional`: how many of them it passes by position, which must be the first ones).
- `FIELDS`: attributes (instance fields, methods, properties) the plugin reads or writes on SGLang
  objects, per class.
- `PRIVATE`: the private names among them, each with why no public way serves.
- `PLUGIN_ATTRS`: attributes the plugin adds to SGLang objects or its subclasses of them; none may
  shadow a name of the SGLang base class. On objects SGLang creates they carry `ATTR_PREFIX`.
"""

from __future__ import annotations

from dataclasses import dataclass

ENTRY_POINT_GROUP = "sglang.srt.plugins"
ATTR_PREFIX = "vl_"


@dataclass(frozen=True)
class Hook:
    target: str  # dotted path HookRegistry resolves
    hook: str  # function name in radix_ext.sglang.hooks
    kind: str  # HookType member name


@dataclass(frozen=True)
class Method:
    owner: str  # dotted path of the class (or module) defining it
    name: str
    params: tuple[str, ...] = ()  # parameter names relied on, in signature order (self excluded)
    positional: int = 0  # the first `positional` of `params` are passed by position


@dataclass(frozen=True)
class Fields:
    owner: str
    names: tuple[str, ...]
    access: str = "read"  # "read", "write" or "read/write"


@dataclass(frozen=True)
class Private:
    owner: str
    name: str
    why: str


@dataclass(frozen=True)
class PluginAttr:
    base: str  # the SGLang class whose instances carry it (directly or through our subclass)
    name: str


_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_RESULTS = "sglang.srt.managers.scheduler_components.batch_result_processor.SchedulerBatchResultProcessor"
_CONFIGURATOR = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator"
_RADIX = "sglang.srt.mem_cache.radix_cache.RadixCache"
_BASE_CACHE = "sglang.srt.mem_cache.base_prefix_cache"
_ALLOC = "sglang.srt.mem_cache.allocator.token.TokenToKVPoolAllocator"
_POOL = "sglang.srt.mem_cache.memory_pool.MHATokenToKVPool"
_TORCH = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend"
_TRITON = "sglang.srt.layers.attention.triton_backend.TritonAttnBackend"
_BATCH = "sglang.srt.managers.schedule_batch"
_FWD = "sglang.srt.model_executor.forward_batch_info"
_STREAMER = "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"
_VISION = "sglang.srt.layers.attention.vision.VisionSdpaAttention"
_ARGS = "sglang.srt.server_args.ServerArgs"
_HOOK_REGISTRY = "sglang.srt.plugins.hook_registry.HookRegistry"
_FORWARD = ("q", "k", "v", "layer", "forward_batch", "save_kv_cache")

HOOKS = (
    Hook(f"{_ARGS}.resolve_once", "check_server_args", "BEFORE"),
    Hook(f"{_CONFIGURATOR}._build_mha_kv_pool", "build_mha_kv_pool", "AROUND"),
    Hook(f"{_CONFIGURATOR}._build_token_to_kv_pool_allocator", "build_token_to_kv_pool_allocator", "AROUND"),
    Hook(f"{_SCHED}._add_request_to_queue", "plan_request", "BEFORE"),
    Hook(f"{_RESULTS}.process_batch_result_prefill", "compress_after_prefill", "AROUND"),
    Hook(f"{_SCHED}.get_output_streamer_class", "output_streamer_class", "REPLACE"),
    Hook(f"{_SCHED}.get_internal_state", "add_pool_figures", "AFTER"),
    Hook(f"{_SCHED}._release_aborted_request", "forget_aborted_plan", "AFTER"),
    # CPU engine only (a no-op elsewhere), plugin selected or not: per-image vision attention.
    Hook(f"{_VISION}.forward", "segmented_vision_sdpa", "AROUND"),
)

_SDPA_EXTEND = (  # TorchNativeAttnBackend._run_sdpa_forward_extend: the first 10 passed by position
    "query", "output", "k_cache", "v_cache", "req_to_token", "req_pool_indices", "seq_lens",
    "extend_prefix_lens", "extend_seq_lens", "encoder_lens", "scaling", "enable_gqa", "causal",
)  # fmt: skip
_FILL_KV = ("plan", "bs", "seq_lens", "req_pool_indices", "kv_indices", "kv_indptr")
_GRAPH_STATE = ("max_bs", "max_num_tokens", "kv_indices_buf", "cuda_graph_num_kv_splits_buf")

METHODS = (
    # registration.py
    Method(_HOOK_REGISTRY, "register", ("target", "hook", "hook_type"), 3),
    Method("sglang.srt.mem_cache.registry", "register_radix_cache_backend", ("name", "factory"), 2),
    Method("sglang.srt.layers.attention.attention_registry", "register_attention_backend", ("name",), 1),
    Method("sglang.srt.arg_groups.choices", "add_attention_backend_choices", ("iterable",), 1),  # list.extend
    Method("sglang.srt.runtime_context", "get_memory"),
    # hooks.py: the hooked methods, with the arguments the hooks read
    Method(_ARGS, "resolve_once"),
    Method(_CONFIGURATOR, "_build_mha_kv_pool", ("mha_pool_class",)),
    Method(_CONFIGURATOR, "_build_token_to_kv_pool_allocator", ("token_to_kv_pool",)),
    Method(_SCHED, "_add_request_to_queue", ("req",), 1),
    Method(_RESULTS, "process_batch_result_prefill", ("batch", "result"), 2),
    Method(_SCHED, "get_output_streamer_class"),
    Method(_SCHED, "get_internal_state"),
    Method(_SCHED, "_release_aborted_request", ("req",), 1),
    Method(_VISION, "forward", ("q", "k", "v", "bsz", "cu_seqlens", "attention_mask"), 6),
    Method(f"{_BATCH}.FINISH_ABORT", "__init__", ("message", "status_code", "err_type"), 3),
    # radix_cache.py: VLCacheRadixCache(RadixCache)
    Method(_RADIX, "reset"),
    Method(_RADIX, "match_prefix", ("params",), 1),
    Method(_RADIX, "evictable_size"),
    Method(_RADIX, "evict", ("params",), 1),
    Method(_RADIX, "inc_lock_ref", ("node",), 1),
    Method(_RADIX, "dec_lock_ref", ("node", "params"), 2),
    Method(_RADIX, "_insert_helper", ("node", "key", "value", "priority", "inserted_len"), 5),
    Method(_RADIX, "_split_node", ("key", "child", "split_len"), 3),
    Method(_RADIX, "_delete_leaf", ("node",), 1),
    Method(_RADIX, "insert", ("params",), 1),
    Method(_RADIX, "unlock", ("lock",), 1),
    Method(_RADIX, "on_release", ("req", "checkpointed")),
    Method(_RADIX, "total_size"),
    Method(_RADIX, "supports_prefix_sharing"),
    Method(f"{_BASE_CACHE}.EvictParams", "__init__", ("num_tokens",)),
    Method(f"{_BASE_CACHE}.InsertParams", "__init__", ("key", "value", "inserted_len", "priority")),
    Method("sglang.srt.mem_cache.radix_cache.RadixKey", "__init__", ("token_ids", "extra_key", "cache_salt"), 2),
    # layerwise_allocator.py: LayerwiseTokenAllocator(TokenToKVPoolAllocator)
    Method(_ALLOC, "__init__", ("size", "dtype", "device", "kvcache", "need_sort"), 5),
    Method(_ALLOC, "clear"),
    Method(_ALLOC, "available_size"),
    Method(_ALLOC, "alloc", ("need_size",), 1),
    Method(_ALLOC, "free", ("free_index",), 1),
    Method(_ALLOC, "evict_to_free_tokens", ("tree_cache", "num_tokens"), 2),
    Method(_ALLOC, "get_kvcache"),
    # layerwise_pool.py: LayerwiseKVPool(MHATokenToKVPool)
    Method(_POOL, "set_kv_buffer", ("layer", "loc_info", "cache_k", "cache_v", "layer_id_override"), 4),
    Method(_POOL, "get_key_buffer", ("layer_id",), 1),
    Method(_POOL, "get_value_buffer", ("layer_id",), 1),
    Method(_POOL, "get_cpu_copy"),
    Method(_POOL, "load_cpu_copy"),
    Method(_POOL, "move_kv_cache"),
    Method("sglang.srt.mem_cache.memory_pool", "unwrap_write_loc", ("loc_info",), 1),
    # output_streamer.py
    Method(_STREAMER, "is_request_level_customized_info_key", ("key",), 1),
    # attention_backend.py: VLCacheTorchNativeBackend(TorchNativeAttnBackend)
    Method(_TORCH, "__init__", ("model_runner",), 1),
    Method(_TORCH, "init_forward_metadata", ("forward_batch",), 1),
    Method(_TORCH, "forward_extend", _FORWARD, 5),
    Method(_TORCH, "forward_decode", _FORWARD, 5),
    Method(_TORCH, "_run_sdpa_forward_extend", _SDPA_EXTEND, 10),
    # triton_backend.py: VLCacheTritonBackend(TritonAttnBackend)
    Method(_TRITON, "__init__", ("model_runner",), 1),
    Method(_TRITON, "init_forward_metadata", ("forward_batch",), 1),
    Method(_TRITON, "init_forward_metadata_out_graph", ("forward_batch", "in_capture"), 2),
    Method(_TRITON, "_fill_kv_indptr_and_indices", _FILL_KV),
    Method(_TRITON, "get_num_kv_splits", ("num_kv_splits", "seq_lens", "uneven_batch"), 3),
    Method(_TRITON, "init_cuda_graph_state", _GRAPH_STATE, 4),
    Method(_TRITON, "forward_extend", _FORWARD, 6),
    Method(_TRITON, "forward_decode", _FORWARD, 6),
)

# Every ServerArgs field the plugin reads or sets (`hooks.check_server_args` checks them first, so a
# field renamed by an upgrade fails the start naming it, not a silent default).
SERVER_ARGS_FIELDS = (
    "radix_cache_backend", "speculative_algorithm", "page_size", "disable_radix_cache",
    "enable_hierarchical_cache", "tp_size", "dp_size", "pp_size", "disaggregation_mode",
    "enable_torch_compile", "kv_canary", "attention_backend", "prefill_attention_backend",
    "decode_attention_backend", "enable_mixed_chunk", "disable_overlap_schedule",
    "cuda_graph_backend_decode", "cuda_graph_backend_prefill",
)  # fmt: skip
_REQ_READ = (
    "rid", "origin_input_ids", "sampling_params", "multimodal_inputs", "to_finish", "finished", "is_retracted",
    "inflight_middle_chunks", "set_finish_with_abort", "kv", "cache_salt", "priority",
)  # fmt: skip
_REQ_WRITE = ("skip_radix_cache_insert", "extra_key", "customized_info", "lock", "last_node")
_BUILD_CTX = ("params", "is_hybrid_swa", "is_hybrid_ssm", "enable_hierarchical_cache", "disable_radix_cache", "is_dsa")
_TREE = ("root_node", "token_to_kv_pool_allocator", "req_to_token_pool", "evictable_size_", "_empty_match_result")
_FORWARD_BATCH = (
    "req_pool_indices", "seq_lens", "seq_lens_cpu", "rids", "forward_mode", "out_cache_loc",
    "extend_prefix_lens_cpu", "extend_seq_lens", "extend_seq_lens_cpu",
)  # fmt: skip
_LAYER = ("layer_id", "tp_q_head_num", "tp_k_head_num", "qk_head_dim", "v_head_dim", "scaling")
_TRITON_FIELDS = (
    "token_to_kv_pool", "req_to_token", "device", "kv_indptr", "cuda_graph_kv_indices", "max_context_len",
    "forward_metadata",
)  # fmt: skip
_VISION_FIELDS = ("softmax_in_single_precision", "dropout", "num_heads", "head_size", "num_kv_heads", "scale")

FIELDS = (
    Fields(_ARGS, SERVER_ARGS_FIELDS, "read/write"),
    # Read with a default: `device` is None until SGLang resolves it (after the plugin's start-up hook),
    # `_resolution_finished` exists once resolution ran. The runtime context's memory bag (`get_memory()`)
    # projects `radix_cache_backend` from ServerArgs.
    Fields(_ARGS, ("device", "_resolution_finished")),
    Fields(_SCHED, ("tree_cache", "token_to_kv_pool_allocator", "server_args", "running_batch")),
    Fields(_RESULTS, ("tree_cache", "token_to_kv_pool_allocator")),
    Fields(f"{_BATCH}.ScheduleBatch", ("reqs",)),
    Fields(f"{_BATCH}.Req", _REQ_READ),
    Fields(f"{_BATCH}.Req", _REQ_WRITE, "read/write"),
    Fields(f"{_BATCH}.ReqKvInfo", ("req_pool_idx", "cache_protected_len", "cache_inserted_len"), "read/write"),
    Fields("sglang.srt.sampling.sampling_params.SamplingParams", ("custom_params", "beam_width")),
    Fields(f"{_BATCH}.MultimodalInputs", ("mm_items",)),
    Fields(f"{_BATCH}.MultimodalDataItem", ("offsets", "pad_value", "pad_values")),
    Fields("sglang.srt.managers.io_struct.GetInternalStateReqOutput", ("internal_state",), "read/write"),
    Fields("sglang.srt.mem_cache.registry.TreeCacheBuildContext", _BUILD_CTX),
    Fields("sglang.srt.mem_cache.cache_init_params.CacheInitParams", ("token_to_kv_pool_allocator",)),
    Fields(f"{_BASE_CACHE}.MatchPrefixParams", ("req", "key")),
    Fields(f"{_BASE_CACHE}.MatchResult", ("device_prefix_len",)),
    Fields(f"{_BASE_CACHE}.InsertResult", ("prefix_len",)),
    Fields(f"{_BASE_CACHE}.EvictResult", ("num_tokens_evicted",)),
    Fields(_RADIX, _TREE),
    Fields("sglang.srt.mem_cache.radix_cache.TreeNode", ("lock_ref", "parent", "value")),
    Fields("sglang.srt.mem_cache.memory_pool.ReqToTokenPool", ("req_to_token", "size", "available_size")),
    Fields(_ALLOC, ("size", "dtype", "device", "need_sort", "free_pages", "release_pages", "free_group")),
    Fields(_POOL, ("layer_num", "head_num", "start_layer", "k_buffer", "v_buffer")),
    Fields(f"{_FWD}.ForwardBatch", _FORWARD_BATCH),
    Fields(f"{_FWD}.ForwardMode", ("is_decode", "is_decode_or_idle", "is_extend", "is_target_verify")),
    Fields("sglang.srt.layers.radix_attention.RadixAttention", _LAYER),
    Fields(_TORCH, ("token_to_kv_pool", "req_to_token_pool", "device")),
    Fields(_TRITON, _TRITON_FIELDS),
    Fields(_VISION, _VISION_FIELDS),
)

PRIVATE = (
    Private(_RADIX, "_insert_helper", "the one place a new leaf is made: counts its missing slots (vl_missing)"),
    Private(_RADIX, "_split_node", "a split halves a node's value: the missing count must follow"),
    Private(_RADIX, "_delete_leaf", "the one place an evicted leaf leaves: its missing count too"),
    Private(_RADIX, "_empty_match_result", "the stock empty match, returned when a compressed match is unusable"),
    Private(_RADIX, "evictable_size_", "the stock evictable count, corrected per layer in evictable_size()"),
    Private(_TORCH, "_run_sdpa_forward_extend", "the stock extend SDPA loop, handed per-layer physical tables"),
    Private(_TRITON, "_fill_kv_indptr_and_indices", "the one place stock builds kv_indptr/kv_indices"),
    Private(_SCHED, "_add_request_to_queue", "the one admission point every request passes (plan it there)"),
    Private(_SCHED, "_release_aborted_request", "aborts of waiting requests reach no cache release"),
    Private(_CONFIGURATOR, "_build_mha_kv_pool", "the only seam choosing the MHA pool class"),
    Private(_CONFIGURATOR, "_build_token_to_kv_pool_allocator", "the only seam choosing the allocator"),
    Private(_ARGS, "_resolution_finished", "resolve_once runs more than once; SGLang reads this marker itself"),
)

PLUGIN_ATTRS = (
    PluginAttr("sglang.srt.mem_cache.radix_cache.TreeNode", "vl_missing"),  # a node SGLang creates
    PluginAttr(_RADIX, "missing_per_layer"),
    PluginAttr(_POOL, "slot_table"),
    PluginAttr(_POOL, "views"),
    PluginAttr(_POOL, "plans"),
    PluginAttr(_POOL, "peak_requests"),
    PluginAttr(_ALLOC, "slot_table"),
    PluginAttr(_ALLOC, "integrity_at_last_flush"),
    PluginAttr(_TORCH, "read_tables"),
    PluginAttr(_TORCH, "_extend"),
    PluginAttr(_TORCH, "_decode"),
    PluginAttr(_TRITON, "num_layers"),
    PluginAttr(_TRITON, "views"),
    PluginAttr(_TRITON, "_decode"),
    PluginAttr(_TRITON, "_layer_indptr"),
    PluginAttr(_TRITON, "_layer_indices"),
    PluginAttr(_TRITON, "_split_lens"),
    PluginAttr(_TRITON, "_graph_indptr"),
    PluginAttr(_TRITON, "_graph_indices"),
    PluginAttr(_TRITON, "_plans"),
)


def missing_server_args_fields(server_args) -> list[str]:
    """The `SERVER_ARGS_FIELDS` that `server_args` (a record or the class) lacks."""
    return [name for name in SERVER_ARGS_FIELDS if not hasattr(server_args, name)]
