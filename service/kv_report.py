"""The per-request VL-Cache report: what the SGLang plugin returns in `meta_info["vl_cache"]`.

Contract with the plugin (radix_ext/sglang): a JSON object with at least the fields of
`KVCacheReport`. The gateway copies it to `usage.kv_cache` and into the `vlcache_kv_*` metrics.
The plugin delivers it as a one-element list (SGLang's request-level `customized_info`); the last
non-null entry is the report. Until the plugin reports (or for a backend without it) the key is absent and `usage.kv_cache` is
null; a malformed report is logged and treated as absent: a report must never fail a generation.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

META_INFO_KEY = "vl_cache"


class KVCacheReport(BaseModel):
    """KV-cache figures of one request, as measured inside SGLang after prefill."""

    model_config = ConfigDict(extra="allow")  # the plugin may add figures; forward them untouched

    policy: str
    budget: float = Field(description="requested fraction of prompt tokens to keep")
    compressed: bool
    reason: str | None = Field(default=None, description="why the prompt was left whole (empty when compressed)")
    prompt_tokens: int = Field(ge=0)
    visual_tokens: int | None = Field(default=None, ge=0, description="image and video tokens of the prompt")
    kept_tokens_per_layer: list[int]
    freed_slots_per_layer: list[int] | None = Field(default=None, description="physical KV slots freed per layer")
    layer_sparsity: list[float | None] | None = Field(default=None, description="per-layer attention sparsity")
    kv_bytes_full: int = Field(ge=0, description="KV bytes of the prompt without compression")
    kv_bytes_kept: int = Field(ge=0, description="KV bytes of the prompt after compression")
    realized_budget: float = Field(description="sum(kept_tokens_per_layer) / (layers * prompt_tokens)")
    scoring_ms: float = Field(ge=0)


def parse_kv_report(meta_info: dict | None) -> KVCacheReport | None:
    """The report in `meta_info`, or None when absent or malformed (logged, never raised)."""
    raw = (meta_info or {}).get(META_INFO_KEY)
    if isinstance(raw, list):
        # SGLang's customized_info path delivers a list (one entry per output step that set it); the
        # report is the last one set.
        raw = next((item for item in reversed(raw) if item is not None), None)
    if raw is None:
        return None
    try:
        return KVCacheReport.model_validate(raw)
    except ValidationError as exc:
        logger.warning("ignoring a malformed vl_cache report from SGLang: %s", exc.errors()[:3])
        return None
