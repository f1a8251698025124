"""VL-Cache: post-vision attention scores, sparsity-aware layer budgets (spec sections 1-4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radix_ext.policy.base import register_policy
from radix_ext.policy.layout import PromptLayout
from radix_ext.policy.methods.scored import ScoredPolicy, SparsityBudgetMixin


@dataclass
class _PostVisionScoring(ScoredPolicy):
    def query_rows(self, layout: PromptLayout) -> torch.Tensor:
        return layout.post_vision_rows()

    def skip_reason(self, layout: PromptLayout, budget: float) -> str:
        if not layout.has_visual:
            return "no visual token: there is no post-vision span to score with"
        return super().skip_reason(layout, budget)


@register_policy
@dataclass
class VLCache(SparsityBudgetMixin, _PostVisionScoring):
    """Options: `renormalize` (exact total budget; False = the paper's literal rounding),
    `window_fraction` (recent window, 0.1), `sparsity_threshold` (p, 0.01), `min_prompt_tokens` (64)."""

    name = "vlcache"


@register_policy
@dataclass
class VLCacheUniform(_PostVisionScoring):
    """Ablation: VL-Cache's post-vision scores with uniform layer budgets."""

    name = "vlcache_uniform"
