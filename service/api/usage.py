"""Build the answer's finish reason, usage and timings from SGLang's `meta_info`, and record metrics.

Shared by every route and by the plain and streaming paths, so all report the same figures the
same way. Timings:
- streaming: the gateway timestamps each SSE event from SGLang as it arrives: `ttft_ms` is receipt
  to the first event carrying a token, `decode_ms` first token to last token, and every token after
  the first is one inter-token latency observation (an event carrying k tokens: k observations of
  its interval / k);
- plain: SGLang's own stamps (`first_token_latency`, `e2e_latency`; present when SGLang runs with
  `--enable-metrics`, which `service.sglang_process` sets): `ttft_ms` = gateway time before SGLang +
  SGLang's time to first token, `decode_ms` = SGLang's e2e - its time to first token, and the mean
  decode step is observed once per token after the first. Unknown figures are null.
- `output_tokens_per_s` = (completion_tokens - 1) / decode time (the decode rate, 1 / TPOT);
  `queue_ms` is SGLang's `queue_time` (with `--enable-metrics`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.backend import error_from_backend
from service.kv_report import KVCacheReport, parse_kv_report
from service.metrics import GatewayMetrics
from service.schemas import PromptTokensDetails, Timings, Usage


@dataclass
class RequestClock:
    """perf_counter() instants of one request (seconds), and its token arrivals when streamed."""

    received: float
    media_ms: float = 0.0
    sent_to_backend: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0

    def ms_since_received(self, at: float | None = None) -> float:
        return ((at if at is not None else time.perf_counter()) - self.received) * 1000.0

    def tokens_arrived(self, total: int, at: float) -> list[float]:
        """Record that `total` tokens exist at `at`; return the inter-token latencies of the new ones.

        Tokens that arrive together with the first one have no measurable gap and are not returned.
        """
        new = total - self.tokens
        if new <= 0:
            return []
        gaps: list[float] = []
        if self.first_token is None:
            self.first_token = at
        else:
            gaps = [(at - self.last_token) / new] * new
        self.tokens, self.last_token = total, at
        return gaps


def finish_reason(meta_info: dict) -> str | None:
    """OpenAI's finish reason; an SGLang abort (e.g. it refused the request) raises its error."""
    reason = meta_info.get("finish_reason")
    if not reason:
        return None
    kind = reason.get("type") if isinstance(reason, dict) else str(reason)
    if kind == "abort":
        status = int(reason.get("status_code") or 503) if isinstance(reason, dict) else 503
        message = reason.get("message", "aborted") if isinstance(reason, dict) else "aborted"
        raise error_from_backend(status, f"SGLang aborted the request: {message}")
    return "length" if kind == "length" else "stop"


def _backend_ttft_s(meta_info: dict) -> float | None:
    """SGLang's time to first token: `first_token_latency` when it reports it (with --enable-metrics),
    else prefill end minus request receipt (both wall-clock stamps of the same process)."""
    if meta_info.get("first_token_latency") is not None:
        return float(meta_info["first_token_latency"])
    done, received = meta_info.get("prefill_finished_time"), meta_info.get("request_received_ts")
    if done and received and done >= received:
        return float(done - received)
    return None


def _round(value: float | None, digits: int = 3) -> float | None:
    return round(value, digits) if value is not None else None


def build_usage(meta_info: dict, clock: RequestClock, done_at: float) -> Usage:
    prompt = int(meta_info.get("prompt_tokens", 0))
    completion = int(meta_info.get("completion_tokens", 0))
    ttft_ms = decode_ms = None
    if clock.first_token is not None:  # streamed: the gateway's own stamps
        ttft_ms = clock.ms_since_received(clock.first_token)
        decode_ms = (clock.last_token - clock.first_token) * 1000.0
    elif clock.sent_to_backend is not None and (backend_ttft := _backend_ttft_s(meta_info)) is not None:
        # Plain: gateway time before SGLang + SGLang's own time to the first token.
        ttft_ms = clock.ms_since_received(clock.sent_to_backend) + backend_ttft * 1000.0
        e2e = meta_info.get("e2e_latency")
        if e2e is not None and float(e2e) >= backend_ttft:
            decode_ms = (float(e2e) - backend_ttft) * 1000.0
    rate = (completion - 1) / (decode_ms / 1000.0) if decode_ms and completion > 1 else None
    queue = meta_info.get("queue_time")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=int(meta_info.get("cached_tokens") or 0),
            image_tokens=meta_info.get("image_tokens"),
            video_tokens=meta_info.get("video_tokens"),
        ),
        kv_cache=parse_kv_report(meta_info),
        timings=Timings(
            media_ms=round(clock.media_ms, 3),
            queue_ms=_round(float(queue) * 1000.0) if queue is not None else None,
            ttft_ms=_round(ttft_ms),
            decode_ms=_round(decode_ms),
            e2e_ms=round(clock.ms_since_received(done_at), 3),
            output_tokens_per_s=_round(rate),
        ),
    )


def visual_tokens(usage: Usage) -> int:
    """Image + video tokens of the prompt: SGLang's counts, else the plugin report's."""
    details = usage.prompt_tokens_details
    counted = [n for n in ((details.image_tokens, details.video_tokens) if details else ()) if n is not None]
    if counted:
        return int(sum(counted))
    report = usage.kv_cache
    return int(report.visual_tokens or 0) if isinstance(report, KVCacheReport) else 0


def record_usage(metrics: GatewayMetrics, usage: Usage, clock: RequestClock) -> None:
    """Token counters, KV report, TTFT, queue time and (plain answers) inter-token latency."""
    metrics.observe_usage(usage.prompt_tokens, usage.completion_tokens, visual_tokens(usage))
    if isinstance(usage.kv_cache, KVCacheReport):
        metrics.observe_kv_report(usage.kv_cache)
    timings = usage.timings
    if timings is None:
        return
    if timings.ttft_ms is not None:
        metrics.ttft.observe(timings.ttft_ms / 1000.0)
    if timings.queue_ms is not None:
        metrics.queue_time.observe(timings.queue_ms / 1000.0)
    streamed = clock.first_token is not None  # streamed tokens were observed as they arrived
    if not streamed and timings.decode_ms is not None and usage.completion_tokens > 1:
        step = timings.decode_ms / 1000.0 / (usage.completion_tokens - 1)
        for _ in range(usage.completion_tokens - 1):
            metrics.itl.observe(step)
