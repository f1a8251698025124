"""A transformers `DynamicCache` whose prompt KV is cut down per layer once, after prefill.

Logical and physical lengths are kept apart: `get_seq_length` is the logical length (prompt + decoded
tokens), which drives `cache_position` and M-RoPE positions, so new tokens keep positions `m, m+1, ...`;
`get_mask_sizes` is the physical length of the layer (what attention reads). Without the split,
`generate()` still runs but the positions of later tokens silently shift.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from radix_ext.policy import LayerStats, Policy, PromptLayout, Selection


class CompressibleLayer(DynamicLayer):
    """One layer's K/V `[1, Hkv, physical_len, d]`, plus the logical length of the sequence."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.logical_length = 0

    def update(self, key_states, value_states, *args, **kwargs):
        self.logical_length += key_states.shape[-2]
        return super().update(key_states, value_states, *args, **kwargs)

    def get_seq_length(self) -> int:
        return self.logical_length

    def physical_length(self) -> int:
        return 0 if not self.is_initialized or self.keys.numel() == 0 else self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.physical_length() + query_length, 0

    def keep_prompt_positions(self, keep: torch.Tensor, prompt_length: int) -> None:
        """Keep prompt positions `keep` (sorted) and every token after the prompt."""
        index = torch.cat([keep, torch.arange(prompt_length, self.physical_length())]).to(self.keys.device)
        self.keys = self.keys.index_select(-2, index).contiguous()
        self.values = self.values.index_select(-2, index).contiguous()

    def reset(self) -> None:
        self.logical_length = 0
        super().reset()


class CompressibleCache(DynamicCache):
    """Collects one `LayerStats` per layer during prefill; `compress()` applies the policy once.

    Batch size 1: one request, one layout.
    """

    def __init__(self, num_layers: int, policy: Policy, layout: PromptLayout, budget: float):
        super().__init__()
        self.layers = [CompressibleLayer() for _ in range(num_layers)]
        self.policy, self.layout, self.budget = policy, layout, budget
        self.stats: list[LayerStats | None] = [None] * num_layers
        self.selection: Selection | None = None

    def physical_lengths(self) -> list[int]:
        return [layer.physical_length() for layer in self.layers]

    def compress(self) -> Selection:
        """Select and evict (idempotent). Must run after prefill, before the first decode step."""
        if self.selection is not None:
            return self.selection
        missing = [i for i, s in enumerate(self.stats) if s is None]
        if missing:
            raise RuntimeError(f"no attention stats for layers {missing}: prefill did not run through the hooks")
        self.selection = self.policy.select(self.stats, self.layout, self.budget)
        if self.selection.compressed:
            for layer, keep in zip(self.layers, self.selection.keep, strict=True):
                layer.keep_prompt_positions(keep, self.layout.num_tokens)
        self.stats = [None] * len(self.layers)  # the column sums are no longer needed
        return self.selection
