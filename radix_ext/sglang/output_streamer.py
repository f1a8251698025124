"""Carries each request's VL-Cache report to the client in `meta_info["vl_cache"]`, once per request."""

from __future__ import annotations

from sglang.srt.managers.scheduler_components.output_streamer import SchedulerOutputStreamer

from radix_ext.sglang.config import REQUEST_KEY


class VLCacheOutputStreamer(SchedulerOutputStreamer):
    """SGLang slices `customized_info` values per output token unless the key is request-level."""

    def is_request_level_customized_info_key(self, key: str) -> bool:
        return key == REQUEST_KEY or super().is_request_level_customized_info_key(key)
