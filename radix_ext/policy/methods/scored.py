"""The shape shared by every scoring method: per-layer token scores, per-layer counts, top-k + window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radix_ext.policy.base import Policy, require_bool, require_number
from radix_ext.policy.budgets import sparsity_counts, sparsity_fractions, uniform_counts
from radix_ext.policy.layout import PromptLayout
from radix_ext.policy.selection import RECENT_WINDOW_FRACTION, Selection, keep_top_with_window, recent_window
from radix_ext.policy.stats import LayerStats


@dataclass
class ScoredPolicy(Policy):
    """Keeps, per layer, the `ceil(window_fraction * k[l])` most recent tokens and the best-scoring rest.

    Subclasses say which rows they score with (`query_rows`), how a layer's stats become token scores
    (`token_scores`) and how the budget is split over layers (`layer_counts`, uniform by default).

    Option: `window_fraction` (float in [0, 1], default 0.1), besides those of `Policy`.
    """

    window_fraction: float = RECENT_WINDOW_FRACTION

    def __post_init__(self):
        super().__post_init__()
        require_number(self, "window_fraction", 0.0, 1.0)

    def token_scores(self, stats: LayerStats, layer: int) -> torch.Tensor:
        """`[m]` scores of one layer; the default is the attention received, summed over heads."""
        return stats.column_sums.sum(0)

    def layer_counts(self, stats: list[LayerStats], layout: PromptLayout, budget: float) -> list[int]:
        return uniform_counts(len(stats), budget, layout.num_tokens)

    def _select(self, stats: list[LayerStats], layout: PromptLayout, budget: float) -> Selection:
        counts = self.layer_counts(stats, layout, budget)
        keep = [
            keep_top_with_window(self.token_scores(s, layer), k, recent_window(k, self.window_fraction))
            for layer, (s, k) in enumerate(zip(stats, counts, strict=True))
        ]
        return self._selection(layout, budget, keep, layer_sparsity=_sparsity_or_none(stats))


@dataclass
class SparsityBudgetMixin:
    """Sparsity-aware layer budgets (docs/algorithm.md section 2); the stats must carry per-head sparsity.

    Option: `renormalize` (bool, default True: exact total; False: the paper's literal rounding)."""

    renormalize: bool = True

    def __post_init__(self):
        super().__post_init__()
        require_bool(self, "renormalize")

    def layer_counts(self, stats, layout, budget):
        return sparsity_counts(_layer_sparsity(stats, self.name), budget, layout.num_tokens, self.renormalize)

    def _select(self, stats, layout, budget):
        selection = super()._select(stats, layout, budget)
        selection.layer_fractions = sparsity_fractions(_layer_sparsity(stats, self.name), budget).tolist()
        return selection


def _sparsity_or_none(stats: list[LayerStats]) -> list[float] | None:
    values = [s.layer_sparsity for s in stats]
    return None if any(v is None for v in values) else values


def _layer_sparsity(stats: list[LayerStats], policy: str) -> torch.Tensor:
    values = _sparsity_or_none(stats)
    if values is None:
        raise ValueError(f"policy {policy!r} needs per-layer sparsity: compute stats over its query_rows")
    return torch.tensor(values, dtype=torch.float64)
