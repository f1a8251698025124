"""VL-Cache: post-vision attention scores, sparsity-aware layer budgets (docs/algorithm.md sections 1-4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radix_ext.policy.base import register_policy, require_number
from radix_ext.policy.budgets import sparsity_counts, sparsity_fractions
from radix_ext.policy.layout import PromptLayout
from radix_ext.policy.methods.scored import ScoredPolicy, SparsityBudgetMixin, _layer_sparsity


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
    """Keeps, per layer, the recent window and the tokens most attended by the post-vision rows (the
    prompt after the last visual token), summed over heads; each layer's budget is proportional to the
    density `1 - gamma[l]` of its post-vision attention. Prompts without a visual token are left whole.

    Paper: Tu et al., "VL-Cache: Sparsity and Modality-Aware KV Cache Compression for Vision-Language
    Model Inference Acceleration", ICLR 2025 (arXiv 2410.23317). As implemented: docs/algorithm.md.

    Options: `renormalize` (bool, default True: the total is exactly `round(alpha * L * m)`; False = the
    paper's literal `k[l] = max(1, floor(beta[l] * m))`), `layer_budget_blend` (float in [0, 1], default
    1.0 = the paper's sparsity-aware budgets, 0.0 = uniform, linear between), `window_fraction` (float in
    [0, 1], default 0.1: the recent window), `sparsity_threshold` (`p` in (0, 1), default 0.01),
    `min_prompt_tokens` (int >= 0, default 64)."""

    name = "vlcache"
    layer_budget_blend: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        require_number(self, "layer_budget_blend", 0.0, 1.0)

    def layer_counts(self, stats, layout, budget):
        sparsity = _layer_sparsity(stats, self.name)
        return sparsity_counts(sparsity, budget, layout.num_tokens, self.renormalize, self.layer_budget_blend)

    def _select(self, stats, layout, budget):
        selection = super()._select(stats, layout, budget)
        sparsity = _layer_sparsity(stats, self.name)
        selection.layer_fractions = sparsity_fractions(sparsity, budget, self.layer_budget_blend).tolist()
        return selection


@register_policy
@dataclass
class VLCacheUniform(_PostVisionScoring):
    """Ablation: VL-Cache's post-vision scores and selection with uniform layer budgets (what the
    sparsity-aware budgets add). Prompts without a visual token are left whole.

    Paper: the ablation of VL-Cache (arXiv 2410.23317) that separates its scoring from its budgets.

    Options: `window_fraction` (0.1), `sparsity_threshold` (0.01), `min_prompt_tokens` (64), as `vlcache`."""

    name = "vlcache_uniform"
