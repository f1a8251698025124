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
    """Keeps every prompt token in every layer: the uncompressed baseline (never compresses).

    Paper: none (the reference point of every KV-compression paper). Options: only the shared ones,
    which it ignores.
    """

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
    """Keeps the first `sinks` prompt tokens (attention sinks) and the most recent `k[l] - sinks`;
    uniform layer budgets; needs no attention statistics. When `k[l] < sinks + ceil(0.1 k[l])` the sinks
    give way to the recent window.

    Paper: Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024
    (arXiv 2309.17453).

    Options: `sinks` (int >= 0, default 4).
    Shared options: `min_prompt_tokens` (int >= 0, default 64: shorter prompts are left whole) and
    `sparsity_threshold` (`p` in (0, 1), default 0.01: used when an engine computes this policy's stats).
    """

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
    """Keeps a seeded random subset of the prompt plus the recent window; uniform layer budgets; needs
    no attention statistics. The floor any method must beat.

    Paper: none (the usual control).

    Options: `seed` (int, default 0; layer `l` draws from `seed * 1_000_003 + l`).
    Shared options: `window_fraction` (float in [0, 1], default 0.1: the recent window
    `ceil(window_fraction * k[l])`), `min_prompt_tokens` (int >= 0, default 64), `sparsity_threshold`
    (`p` in (0, 1), default 0.01).
    """

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
