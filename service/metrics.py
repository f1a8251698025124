"""Prometheus metrics of the gateway, namespace `vlcache_` (prometheus-client).

Naming follows SGLang's and vLLM's own metrics (`sglang:e2e_request_latency_seconds`,
`vllm:inter_token_latency_seconds`, `sglang:generation_tokens_total`, ...): base units (seconds,
bytes), `_total` counters. Each app gets its own `CollectorRegistry`, so tests and several apps in one
process do not collide. Families:

- requests: `vlcache_requests_total{endpoint,status}`, `vlcache_e2e_request_latency_seconds{stream}`,
  `vlcache_time_to_first_token_seconds`, `vlcache_inter_token_latency_seconds`,
  `vlcache_request_queue_time_seconds`, `vlcache_inflight_requests`,
  `vlcache_rejected_requests_total{reason}`, `vlcache_aborted_requests_total`;
- media: `vlcache_media_items_total{kind}`, `vlcache_media_rejected_total{kind,code}`,
  `vlcache_media_processing_seconds{kind}`, `vlcache_video_frames_sampled` (histogram);
- tokens: `vlcache_prompt_tokens_total`, `vlcache_visual_tokens_total`, `vlcache_generation_tokens_total`;
- per-request KV (from the plugin's report): `vlcache_kv_requests_total{policy,compressed}`,
  `vlcache_kv_bytes_full_total`, `vlcache_kv_bytes_kept_total` (counters), `vlcache_request_kv_bytes_full`,
  `vlcache_request_kv_bytes_kept`, `vlcache_kv_realized_budget`, `vlcache_kv_scoring_seconds` (histograms);
- pool (refreshed from SGLang at each scrape, see `service.pool_stats`): `vlcache_kv_pool_*`,
  `vlcache_backend_*`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.kv_report import KVCacheReport

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
# SGLang's inter-token latency buckets (seconds), up to the seconds a CPU decode step can take.
ITL_BUCKETS = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.06,
    0.08,
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    2.0,
    4.0,
)
RATIO_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
BYTES_BUCKETS = tuple(float(4**k * 1024) for k in range(4, 17))  # 256 KiB .. 4 TiB, x4


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r, ns = self.registry, "vlcache"
        # requests
        self.requests = Counter(
            "requests",
            "Requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            namespace=ns,
            registry=r,
        )
        self.latency = Histogram(
            "e2e_request_latency_seconds",
            "Gateway receipt to the complete answer.",
            ["stream"],
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.ttft = Histogram(
            "time_to_first_token_seconds",
            "Gateway receipt to first generated token.",
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.itl = Histogram(
            "inter_token_latency_seconds",
            "Time between consecutive generated tokens"
            " (streaming: measured per token; plain: the request's mean decode step).",
            namespace=ns,
            registry=r,
            buckets=ITL_BUCKETS,
        )
        self.queue_time = Histogram(
            "request_queue_time_seconds",
            "Time in SGLang's scheduler queue (when SGLang reports it).",
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.inflight = Gauge("inflight_requests", "Requests admitted and not finished.", namespace=ns, registry=r)
        self.rejected = Counter(
            "rejected_requests", "Requests refused before work, by reason.", ["reason"], namespace=ns, registry=r
        )
        self.aborted = Counter(
            "aborted_requests", "Generations aborted in SGLang because the client left.", namespace=ns, registry=r
        )
        # media
        self.media_items = Counter("media_items", "Media items accepted, by kind.", ["kind"], namespace=ns, registry=r)
        self.media_rejected = Counter(
            "media_rejected", "Media items refused, by kind and error code.", ["kind", "code"], namespace=ns, registry=r
        )
        self.media_seconds = Histogram(
            "media_processing_seconds",
            "Fetch + validate + re-encode time per item.",
            ["kind"],
            namespace=ns,
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.video_frames = Histogram(
            "video_frames_sampled",
            "Frames sampled per video.",
            namespace=ns,
            registry=r,
            buckets=(2, 4, 8, 16, 32, 64, 128),
        )
        # tokens
        self.prompt_tokens = Counter(
            "prompt_tokens", "Prompt tokens (visual tokens included).", namespace=ns, registry=r
        )
        self.visual_tokens = Counter(
            "visual_tokens", "Visual (image and video) tokens of prompts.", namespace=ns, registry=r
        )
        self.generation_tokens = Counter("generation_tokens", "Generated tokens.", namespace=ns, registry=r)
        # per-request KV report
        self.kv_requests = Counter(
            "kv_requests",
            "Requests with a VL-Cache report, by policy and outcome.",
            ["policy", "compressed"],
            namespace=ns,
            registry=r,
        )
        self.kv_bytes_full = Counter(
            "kv_bytes_full", "Prompt KV bytes before compression (reported requests).", namespace=ns, registry=r
        )
        self.kv_bytes_kept = Counter(
            "kv_bytes_kept", "Prompt KV bytes after compression (reported requests).", namespace=ns, registry=r
        )
        self.kv_bytes_full_per_request = Histogram(
            "request_kv_bytes_full",
            "Prompt KV bytes before compression, per reported request.",
            namespace=ns,
            registry=r,
            buckets=BYTES_BUCKETS,
        )
        self.kv_bytes_kept_per_request = Histogram(
            "request_kv_bytes_kept",
            "Prompt KV bytes after compression, per reported request.",
            namespace=ns,
            registry=r,
            buckets=BYTES_BUCKETS,
        )
        self.kv_realized_budget = Histogram(
            "kv_realized_budget",
            "Kept fraction of prompt KV per request.",
            namespace=ns,
            registry=r,
            buckets=RATIO_BUCKETS,
        )
        self.kv_scoring = Histogram(
            "kv_scoring_seconds",
            "Time the plugin spent scoring tokens per request.",
            namespace=ns,
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
        )
        # pool (set by service.pool_stats at scrape time)
        self.backend_up = Gauge(
            "backend_up", "1 if SGLang answered the last scrape's load query.", namespace=ns, registry=r
        )
        self.pool_used_tokens = Gauge(
            "kv_pool_used_tokens", "KV token slots in use in SGLang's pool.", namespace=ns, registry=r
        )
        self.pool_capacity_tokens = Gauge(
            "kv_pool_capacity_tokens", "KV token slots in SGLang's pool.", namespace=ns, registry=r
        )
        self.pool_token_usage = Gauge(
            "kv_pool_token_usage", "Used / capacity of SGLang's KV pool (0..1).", namespace=ns, registry=r
        )
        self.pool_bytes = Gauge("kv_pool_bytes", "Memory of SGLang's KV pool.", namespace=ns, registry=r)
        self.backend_running = Gauge(
            "backend_running_requests", "Requests SGLang is decoding.", namespace=ns, registry=r
        )
        self.backend_waiting = Gauge(
            "backend_waiting_requests", "Requests waiting in SGLang's queue.", namespace=ns, registry=r
        )
        # Hook for the plugin's per-layer pool figures (service.pool_stats.plugin_layer_figures).
        self.pool_layer_used_slots = Gauge(
            "kv_pool_layer_used_slots",
            "Physical KV slots in use, per layer (plugin).",
            ["layer"],
            namespace=ns,
            registry=r,
        )
        self.pool_layer_capacity_slots = Gauge(
            "kv_pool_layer_capacity_slots",
            "Physical KV slots, per layer (plugin).",
            ["layer"],
            namespace=ns,
            registry=r,
        )

    def observe_kv_report(self, report: KVCacheReport) -> None:
        self.kv_requests.labels(policy=report.policy, compressed=str(report.compressed).lower()).inc()
        self.kv_bytes_full.inc(report.kv_bytes_full)
        self.kv_bytes_kept.inc(report.kv_bytes_kept)
        self.kv_bytes_full_per_request.observe(report.kv_bytes_full)
        self.kv_bytes_kept_per_request.observe(report.kv_bytes_kept)
        self.kv_realized_budget.observe(report.realized_budget)
        self.kv_scoring.observe(report.scoring_ms / 1000.0)

    def observe_usage(self, prompt_tokens: int, completion_tokens: int, visual_tokens: int = 0) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(completion_tokens)
        self.visual_tokens.inc(visual_tokens)
