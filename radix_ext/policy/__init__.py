"""VL-Cache and its baselines in plain PyTorch: the one policy library the whole project uses.

No SGLang import here. An engine (the transformers reference, the SGLang plugin, a benchmark):
  1. builds a `PromptLayout` (prompt length, visual spans),
  2. asks `policy.query_rows(layout)` which rows it needs,
  3. computes one `attention_stats(...)` per layer over those rows,
  4. calls `policy.select(stats, layout, budget)` and keeps `selection.keep[l]` in layer `l`.
"""

from radix_ext.policy import methods  # noqa: F401  (registers every policy)
from radix_ext.policy.base import Policy, available_policies, check_budget, get_policy, register_policy
from radix_ext.policy.layout import PromptLayout, visual_spans_from_ids
from radix_ext.policy.selection import Selection
from radix_ext.policy.stats import LayerStats, attention_stats, merge_layer_stats

__all__ = [
    "LayerStats",
    "Policy",
    "PromptLayout",
    "Selection",
    "attention_stats",
    "available_policies",
    "check_budget",
    "get_policy",
    "merge_layer_stats",
    "register_policy",
    "visual_spans_from_ids",
]
