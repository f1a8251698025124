"""Policies that need no attention statistics: full, StreamingLLM and a seeded random subset."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radix_ext.policy.base import Policy, register_policy, require_int
from radix_ext.policy.budgets import uniform_counts
from radix_ext.policy.layout import PromptLayout
from radix_ext.policy.methods.scored import ScoredPolicy
from radix_ext.policy.selection import keep_sinks_and_recent
from radix_ext.policy.stats import LayerStats

_NO_ROWS = torch.empty(0, dtype=torch.long)


@register_policy
@dataclass
class Full(Policy):
    """Keeps everything: the uncompressed baseline."""

    name = "full"

    def query_rows(self, layout: PromptLayout) -> torch.Tensor:
        return _NO_ROWS

    def skip_reason(self, layout: PromptLayout, budget: float) -> str:
        return "policy 'full' keeps every token"

    def _select(self, stats, layout, budget):  # never reached: skip_reason always answers
        raise AssertionError("unreachable")


@register_policy
@dataclass
class StreamingLLM(Policy):
    """The first `sinks` tokens (attention sinks) and the most recent `k - sinks`, uniform budgets."""

    name = "streamingllm"
    sinks: int = 4

    def __post_init__(self):
        super().__post_init__()
        require_int(self, "sinks", low=0)

    def query_rows(self, layout: PromptLayout) -> torch.Tensor:
        return _NO_ROWS

    def _select(self, stats, layout, budget):
        m = layout.num_tokens
        keep = [keep_sinks_and_recent(m, k, self.sinks) for k in uniform_counts(len(stats), budget, m)]
        return self._selection(layout, budget, keep)


@register_policy
@dataclass
class RandomSubset(ScoredPolicy):
    """A seeded random subset (plus the recent window), uniform budgets: the floor any method must beat."""

    name = "random"
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        require_int(self, "seed")

    def query_rows(self, layout: PromptLayout) -> torch.Tensor:
        return _NO_ROWS

    def token_scores(self, stats: LayerStats, layer: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + layer)
        return torch.rand(stats.num_keys, generator=generator)
