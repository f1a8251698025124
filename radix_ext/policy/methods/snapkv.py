"""SnapKV and PyramidKV: attention from the last prompt rows, smoothed by 1-D average pooling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from radix_ext.policy.base import register_policy, require_int
from radix_ext.policy.budgets import pyramid_counts
from radix_ext.policy.layout import PromptLayout
from radix_ext.policy.methods.scored import ScoredPolicy
from radix_ext.policy.stats import LayerStats


@register_policy
@dataclass
class SnapKV(ScoredPolicy):
    """Keeps, per layer, the recent window and the tokens most attended by the last
    `observation_window` prompt rows (summed over heads, then 1-D average-pooled so that neighbours
    of a hit survive with it); uniform layer budgets.

    Paper: Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024
    (arXiv 2404.14469). One token set per layer (the paper selects per head).

    Options: `observation_window` (int >= 1, default 32: the scored rows), `pool_kernel` (odd int >= 1,
    default 5; zero padding at the edges, counted in the average).
    Shared options: `window_fraction` (float in [0, 1], default 0.1: the recent window
    `ceil(window_fraction * k[l])`), `min_prompt_tokens` (int >= 0, default 64), `sparsity_threshold`
    (`p` in (0, 1), default 0.01).
    """

    name = "snapkv"
    observation_window: int = 32
    pool_kernel: int = 5

    def __post_init__(self):
        super().__post_init__()
        require_int(self, "observation_window", low=1)
        require_int(self, "pool_kernel", low=1)
        if self.pool_kernel % 2 == 0:
            raise ValueError(f"option pool_kernel of policy {self.name!r} must be odd, got {self.pool_kernel}")

    def query_rows(self, layout: PromptLayout) -> torch.Tensor:
        return layout.last_rows(self.observation_window)

    def token_scores(self, stats: LayerStats, layer: int) -> torch.Tensor:
        scores = stats.column_sums.sum(0)[None, None]
        pooled = F.avg_pool1d(scores, self.pool_kernel, stride=1, padding=self.pool_kernel // 2)
        return pooled[0, 0, : stats.num_keys]


@register_policy
@dataclass
class PyramidKV(SnapKV):
    """SnapKV's scores and selection, with layer budgets that fall linearly from the first layer to the
    last (a pyramid: lower layers attend broadly, upper layers narrowly); the total stays exact.

    Paper: Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
    Funneling" (arXiv 2406.02069).

    Options: `pyramid_beta` (int >= 1, default 20: the last layer gets `(C - w) / pyramid_beta` plus its
    window, `C = alpha * m`), `observation_window` (32) and `pool_kernel` (5) as SnapKV.
    Shared options: `window_fraction` (float in [0, 1], default 0.1: the recent window
    `ceil(window_fraction * k[l])`), `min_prompt_tokens` (int >= 0, default 64), `sparsity_threshold`
    (`p` in (0, 1), default 0.01).
    """

    name = "pyramidkv"
    pyramid_beta: int = 20

    def __post_init__(self):
        super().__post_init__()
        require_int(self, "pyramid_beta", low=1)

    def layer_counts(self, stats, layout, budget):
        return pyramid_counts(len(stats), budget, layout.num_tokens, self.window_fraction, self.pyramid_beta)
