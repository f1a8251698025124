"""The per-request VL-Cache report, as the gateway reads it from SGLang's `meta_info["vl_cache"]`.

The report's fields are defined once, in the wire contract (`radix_ext.contract.KVReport`), which the
plugin builds it with; the gateway copies it to `usage.kv_cache` and into the `vlcache_kv_*` metrics.
The plugin delivers it as a one-element list (SGLang's request-level `customized_info`); the last
non-null entry is the report. For a backend without the plugin the key is absent and `usage.kv_cache`
is null; a malformed report (a field renamed on one side) is logged and treated as absent: a report
must never fail a generation, and the tests that compare reports fail instead.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from radix_ext.contract import REQUEST_KEY, KVReport

logger = logging.getLogger(__name__)

KVCacheReport = KVReport  # the gateway's name for it (usage.kv_cache in the OpenAPI document)


def parse_kv_report(meta_info: dict | None) -> KVReport | None:
    """The report in `meta_info`, or None when absent or malformed (logged, never raised)."""
    raw = (meta_info or {}).get(REQUEST_KEY)
    if isinstance(raw, list):
        # SGLang's customized_info path delivers a list (one entry per output step that set it); the
        # report is the last one set.
        raw = next((item for item in reversed(raw) if item is not None), None)
    if raw is None:
        return None
    try:
        return KVReport.model_validate(raw)
    except ValidationError as exc:
        logger.warning("ignoring a malformed vl_cache report from SGLang: %s", exc.errors()[:3])
        return None
