"""H2O: accumulated attention over every prompt row (biased toward early tokens, which more rows see)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radix_ext.policy.base import register_policy
from radix_ext.policy.layout import PromptLayout
from radix_ext.policy.methods.scored import ScoredPolicy, SparsityBudgetMixin


@register_policy
@dataclass
class H2O(ScoredPolicy):
    """Keeps, per layer, the recent window and the tokens with the most attention accumulated over
    every prompt row, summed over heads ("heavy hitters"); uniform layer budgets.

    Paper: Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language
    Models", NeurIPS 2023 (arXiv 2306.14048); applied once after prefill, as in the VL-Cache paper's
    comparison, not at every decode step.

    Options: no own options.
    Shared options: `window_fraction` (float in [0, 1], default 0.1: the recent window
    `ceil(window_fraction * k[l])`), `min_prompt_tokens` (int >= 0, default 64), `sparsity_threshold`
    (`p` in (0, 1), default 0.01).
    """

    name = "h2o"

    def query_rows(self, layout: PromptLayout) -> torch.Tensor:
        return layout.all_rows()


@register_policy
@dataclass
class H2OSparsityBudget(SparsityBudgetMixin, H2O):
    """Ablation: H2O's scores with VL-Cache's sparsity-aware layer budgets, the layer sparsity measured
    over all prompt rows (not only the post-vision ones).

    Paper: the ablation of VL-Cache (arXiv 2410.23317) that separates its budgets from its scoring.

    Options: `renormalize` (bool, default True: exact total `round(alpha * L * m)`; False = the paper's
    literal `k[l] = max(1, floor(beta[l] * m))`).
    Shared options: `window_fraction` (float in [0, 1], default 0.1: the recent window
    `ceil(window_fraction * k[l])`), `min_prompt_tokens` (int >= 0, default 64), `sparsity_threshold`
    (`p` in (0, 1), default 0.01).
    """

    name = "h2o_sparsity"
