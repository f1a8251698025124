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
    name = "h2o"

    def query_rows(self, layout: PromptLayout) -> torch.Tensor:
        return layout.all_rows()


@register_policy
@dataclass
class H2OSparsityBudget(SparsityBudgetMixin, H2O):
    """Ablation: H2O's scores with VL-Cache's sparsity-aware budgets (sparsity over all rows)."""

    name = "h2o_sparsity"
