"""Pool-level KV figures for the `vlcache_kv_pool_*` gauges, read from SGLang at scrape time.

Two sources:
- SGLang 0.5.23's `GET /v1/loads` (always on, no `--enable-metrics` needed): used and total token
  slots, token usage, KV pool size in GB, running and waiting requests;
- `plugin_layer_figures`: the VL-Cache plugin's per-layer physical pools (one free list per layer,
  docs/architecture.md). The plugin adds to each entry of `/server_info`'s `internal_states` a key
  `"vl_cache": {"physical_slots_total": int, "physical_slots_used_per_layer": [int, ...], ...}`
  (radix_ext/sglang/compressor.py::pool_figures). Absent key (plugin not selected): no layer gauges.
A scrape never fails because SGLang is down: `vlcache_backend_up` says so instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.backend import Backend
from service.errors import APIError
from service.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

GB = 1024**3


@dataclass(frozen=True)
class LayerPoolFigures:
    layer: int
    used_slots: int
    capacity_slots: int


def plugin_layer_figures(server_info: dict) -> list[LayerPoolFigures] | None:
    """The plugin's per-layer pool figures from `/server_info` (summed over DP ranks), or None."""
    figures: dict[int, LayerPoolFigures] = {}
    for state in server_info.get("internal_states") or []:
        pool = (state or {}).get("vl_cache") or {}
        try:
            capacity = int(pool["physical_slots_total"])
            used_per_layer = [int(u) for u in pool["physical_slots_used_per_layer"]]
        except (KeyError, TypeError, ValueError):
            continue
        for layer, used in enumerate(used_per_layer):
            prev = figures.get(layer)
            figures[layer] = LayerPoolFigures(
                layer, used + (prev.used_slots if prev else 0), capacity + (prev.capacity_slots if prev else 0)
            )
    return [figures[k] for k in sorted(figures)] or None


def apply_loads(loads: dict, metrics: GatewayMetrics) -> None:
    """Set the pool gauges from a `/v1/loads` answer (summed over DP ranks)."""
    entries = loads.get("loads") or []
    used = sum(int(e.get("num_used_tokens", 0)) for e in entries)
    capacity = sum(int(e.get("max_total_num_tokens", 0)) for e in entries)
    metrics.pool_used_tokens.set(used)
    metrics.pool_capacity_tokens.set(capacity)
    metrics.pool_token_usage.set(used / capacity if capacity else 0.0)
    metrics.pool_bytes.set(sum(float((e.get("memory") or {}).get("kv_cache_gb", 0.0)) for e in entries) * GB)
    metrics.backend_running.set(sum(int(e.get("num_running_reqs", 0)) for e in entries))
    metrics.backend_waiting.set(sum(int(e.get("num_waiting_reqs", 0)) for e in entries))


async def refresh_pool_gauges(backend: Backend, metrics: GatewayMetrics, with_layers: bool = True) -> None:
    try:
        apply_loads(await backend.loads(), metrics)
        metrics.backend_up.set(1)
    except (APIError, ValueError) as exc:
        logger.debug("pool figures unavailable: %s", exc)
        metrics.backend_up.set(0)
        return
    if not with_layers:
        return
    try:
        layers = plugin_layer_figures(await backend.server_info())
    except (APIError, ValueError):
        return
    for fig in layers or []:
        metrics.pool_layer_used_slots.labels(layer=str(fig.layer)).set(fig.used_slots)
        metrics.pool_layer_capacity_slots.labels(layer=str(fig.layer)).set(fig.capacity_slots)
