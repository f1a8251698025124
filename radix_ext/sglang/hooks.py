"""The hook functions the plugin registers on SGLang (`upstream.HOOKS` lists the targets).

Each one is a no-op unless the server runs with `--radix-cache-backend vlcache`, so an installed but
unselected plugin leaves SGLang exactly stock.
"""

from __future__ import annotations

import logging

from radix_ext.sglang.config import (
    ATTENTION_BACKEND,
    RADIX_CACHE_BACKEND,
    REQUEST_KEY,
    TRITON_ATTENTION_BACKEND,
    server_defaults,
)
from radix_ext.sglang.cpu_vision_attention import segmented_vision_sdpa  # noqa: F401  (a hook of HOOKS)
from radix_ext.sglang.upstream import missing_server_args_fields

logger = logging.getLogger("radix_ext.sglang")


def vlcache_selected(server_args=None) -> bool:
    """The one "is the plugin active" check: the server runs with `--radix-cache-backend vlcache`.

    `server_args` where the caller holds the record being resolved (the launcher's start-up hook, before
    SGLang publishes its runtime context); everywhere else the published context's. When it is true, the
    pool and allocator are the plugin's (`registration._create_radix_cache` refuses to start otherwise).
    """
    if server_args is not None:
        return server_args.radix_cache_backend == RADIX_CACHE_BACKEND
    from sglang.srt.runtime_context import get_memory

    return get_memory().radix_cache_backend == RADIX_CACHE_BACKEND


# --- start-up: ServerArgs.resolve_once (BEFORE), in the launcher --------------------------------------


def check_server_args(server_args, *args, **kwargs):
    """Refuse setups the layer-wise KV design cannot serve; turn off what it cannot run with (once)."""
    missing = missing_server_args_fields(server_args)
    if missing:
        raise RuntimeError(
            f"vlcache: SGLang's ServerArgs has no field(s) {missing}, which the plugin relies on; "
            "is the pinned SGLang version installed?"
        )
    if not vlcache_selected(server_args):
        return None
    # SGLang itself reads this private marker with a default (it only exists once resolution ran).
    if getattr(server_args, "_resolution_finished", False):
        return None  # resolved (and checked) already; the record is read-only now
    problems = []
    if server_args.speculative_algorithm:
        problems.append("speculative decoding (--speculative-algorithm)")
    if (server_args.page_size or 1) != 1:
        problems.append("--page-size > 1")
    if server_args.disable_radix_cache:
        problems.append("--disable-radix-cache (the vlcache tree is the radix cache)")
    if server_args.enable_hierarchical_cache:
        problems.append("hierarchical KV cache (--enable-hierarchical-cache)")
    if any((getattr(server_args, name) or 1) > 1 for name in ("tp_size", "dp_size", "pp_size")):
        problems.append("tensor/data/pipeline parallelism (v1 is single-GPU/CPU)")
    if (server_args.disaggregation_mode or "null") != "null":
        problems.append("prefill/decode disaggregation (KV transfer would ship logical slot ids)")
    if server_args.enable_torch_compile:
        problems.append("--enable-torch-compile")
    if (server_args.kv_canary or "none") != "none":
        problems.append("--kv-canary (it reads KV by logical slot)")
    flags = ("attention_backend", "prefill_attention_backend", "decode_attention_backend")
    triton, ours = {"triton", TRITON_ATTENTION_BACKEND}, f"{ATTENTION_BACKEND} or {TRITON_ATTENTION_BACKEND}"
    named = {getattr(server_args, flag) for flag in flags} - {None}
    for flag in flags:
        backend = getattr(server_args, flag)
        if backend not in (None, "torch_native", ATTENTION_BACKEND, *triton):
            problems.append(f"--{flag.replace('_', '-')} {backend} (use {ours})")
    if named & triton and named - triton:
        problems.append(f"attention backends {sorted(named)} mixed (use one: {ours})")
    if problems:
        raise ValueError(f"--radix-cache-backend {RADIX_CACHE_BACKEND} cannot run with: " + "; ".join(problems))
    # Triton (its decode under CUDA graphs) where asked, or by default on CUDA; torch-native elsewhere.
    # `device` is resolved after this hook: None means SGLang's auto-detection (CUDA when available).
    device = getattr(server_args, "device", None)
    if named:
        use_triton = bool(named & triton)
    elif device is None:
        import torch

        use_triton = torch.cuda.is_available()
    else:
        use_triton = str(device).startswith("cuda")
    backend = TRITON_ATTENTION_BACKEND if use_triton else ATTENTION_BACKEND
    server_args.attention_backend = backend
    server_args.prefill_attention_backend = server_args.decode_attention_backend = None
    server_args.enable_mixed_chunk = False  # a mixed batch would run compressed decodes as an extend
    server_args.disable_overlap_schedule = True
    if not use_triton:  # vlcache_triton captures decode graphs (fixed per-layer index buffers)
        server_args.cuda_graph_backend_decode = "disabled"
    server_args.cuda_graph_backend_prefill = "disabled"  # prefill scores rows with host-side plans
    logger.warning(
        "vlcache: per-request KV compression on (attention backend %s); overlap scheduling, mixed chunks "
        "and %s are off",
        backend,
        "prefill CUDA graphs" if use_triton else "CUDA graphs",
    )
    return None


# --- pools: KVCacheConfigurator (AROUND), in the scheduler ----------------------------------------------


def build_mha_kv_pool(original, self, *args, **kwargs):
    if vlcache_selected():
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

        from radix_ext.sglang.layerwise_pool import LayerwiseKVPool

        if kwargs.get("mha_pool_class", MHATokenToKVPool) is not MHATokenToKVPool:
            raise ValueError(f"vlcache supports the standard MHA KV pool only, not {kwargs['mha_pool_class'].__name__}")
        kwargs["mha_pool_class"] = LayerwiseKVPool
    return original(self, *args, **kwargs)


def build_token_to_kv_pool_allocator(original, self, *args, **kwargs):
    stock = original(self, *args, **kwargs)
    if not vlcache_selected():
        return stock
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator

    from radix_ext.sglang.layerwise_allocator import LayerwiseTokenAllocator
    from radix_ext.sglang.layerwise_pool import LayerwiseKVPool

    pool = kwargs.get("token_to_kv_pool")
    if type(stock) is not TokenToKVPoolAllocator or not isinstance(pool, LayerwiseKVPool):
        raise ValueError(
            "vlcache supports standard multi-head attention models with page size 1 only "
            f"(got {type(stock).__name__} over {type(pool).__name__}: MLA, hybrid or paged setups are refused)"
        )
    physical = stock.size
    factor = server_defaults().logical_slots_factor
    return LayerwiseTokenAllocator(physical, physical * factor, stock.dtype, stock.device, pool, stock.need_sort)


# --- requests: Scheduler._add_request_to_queue (BEFORE) ---------------------------------------------------


def plan_request(scheduler, req, *args, **kwargs):
    """Parse the request's VL-Cache options; a bad option fails the request (HTTP 400), nothing else."""
    from radix_ext.sglang.request_plan import make_plan

    if not vlcache_selected() or req.to_finish is not None:
        return None
    pool = scheduler.token_to_kv_pool_allocator.get_kvcache()
    try:
        plan = make_plan(req, server_defaults().resolved_for(scheduler.server_args.attention_backend))
    except (ValueError, TypeError) as error:  # options come from clients: never let them reach the forward
        req.set_finish_with_abort(f"invalid {REQUEST_KEY} options: {error}")
        return None
    if plan.will_compress and (req.sampling_params.beam_width or 1) > 1:
        # Beam members share the leader's prompt row without a view of their own.
        req.set_finish_with_abort(f"{REQUEST_KEY} compression does not support beam search; use policy 'full'")
        return None
    if plan.reuse == "compressed" and scheduler.server_args.attention_backend != ATTENTION_BACKEND:
        req.set_finish_with_abort(
            f"{REQUEST_KEY} reuse 'compressed' needs the {ATTENTION_BACKEND} attention backend; use 'lazy'"
        )
        return None
    pool.plans[req.rid] = plan
    namespace = plan.cache_namespace
    # As SGLang namespaces its own tree entries (`extra_key`); once only: a retracted request comes back here.
    if namespace is not None and not (req.extra_key or "").endswith(namespace):
        req.extra_key = f"{req.extra_key}|{namespace}" if req.extra_key else namespace
    # A compressed request's decode KV is computed over a compressed context, not the KV of its tokens: it
    # must never enter the shared tree. Its prompt KV is exact: `reuse: lazy` hands it over at compression.
    # `reuse: compressed` enters its own namespace once compressed (`compress_request` lifts the bar), not
    # chunk by chunk before, so what that namespace holds is always the compressed KV.
    req.skip_radix_cache_insert = req.skip_radix_cache_insert or plan.will_compress
    return None


# --- after the forward of a prefill batch: SchedulerBatchResultProcessor (AROUND) ------------------------


def compress_after_prefill(original, self, batch, result, *args, **kwargs):
    """Compress every planned request whose last prefill chunk just ran, before SGLang commits the
    batch's results (so the report is there for the first streamed output)."""
    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    from radix_ext.sglang.compressor import compress_request

    if vlcache_selected():
        allocator = self.token_to_kv_pool_allocator
        pool = allocator.get_kvcache()
        req_to_token = self.tree_cache.req_to_token_pool.req_to_token
        for req in batch.reqs:
            plan = pool.plans.get(req.rid)
            if plan is None or req.inflight_middle_chunks > 0 or req.finished() or req.to_finish is not None:
                continue
            if req.is_retracted:
                continue
            pool.plans.pop(req.rid, None)  # done: later forwards of this request need no scoring
            try:
                report = compress_request(req, plan, pool, allocator, req_to_token, self.tree_cache)
            except Exception as error:  # fail this request, keep the server (its row is freed at abort)
                logger.exception("vlcache: compression failed for request %s", req.rid)
                req.to_finish = FINISH_ABORT(f"{REQUEST_KEY} compression failed: {error}", 500, "InternalServerError")
                continue
            req.customized_info = {**(req.customized_info or {}), REQUEST_KEY: [report]}
        # The most requests holding KV at once (a request slot each) peaks right after a prefill.
        req_pool = self.tree_cache.req_to_token_pool
        pool.peak_requests = max(pool.peak_requests, req_pool.size - req_pool.available_size())
    return original(self, batch, result, *args, **kwargs)


# --- output: Scheduler.get_output_streamer_class (REPLACE) -----------------------------------------------


def output_streamer_class(scheduler, *args, **kwargs):
    from sglang.srt.managers.scheduler_components.output_streamer import SchedulerOutputStreamer

    from radix_ext.sglang.output_streamer import VLCacheOutputStreamer

    return VLCacheOutputStreamer if vlcache_selected() else SchedulerOutputStreamer


# --- pool figures: Scheduler.get_internal_state (AFTER) ----------------------------------------------------


def add_pool_figures(result, scheduler, *args, **kwargs):
    from radix_ext.sglang.compressor import pool_figures

    if vlcache_selected():
        allocator = scheduler.token_to_kv_pool_allocator
        figures = pool_figures(allocator.get_kvcache(), allocator)
        running = getattr(scheduler, "running_batch", None)
        figures["running_requests"] = len(running.reqs) if running is not None else 0
        figures["tree_cached_slots"] = scheduler.tree_cache.total_size()  # prompts kept for follow-up turns
        figures["tree_evictable_slots"] = scheduler.tree_cache.evictable_size()
        figures["peak_running_requests"] = allocator.get_kvcache().peak_requests  # since start
        result.internal_state[REQUEST_KEY] = figures
    return result


# --- requests dropped before they hold KV: Scheduler._release_aborted_request (AFTER) ------------------------


def forget_aborted_plan(result, scheduler, req, *args, **kwargs):
    """Aborts of waiting requests never reach the tree's `on_release`: drop their plan here."""
    if vlcache_selected():
        scheduler.token_to_kv_pool_allocator.get_kvcache().plans.pop(req.rid, None)
    return result
