"""The one scoring loop of prefill: both attention backends add each chunk's statistics to the plans here.

A backend calls `score_chunk` after each layer's extend attention, once this chunk's K/V are in the
pool; it only says how to read a request's keys in that layer (`prompt_keys`), since the torch-native
backend holds per-layer physical tables and the Triton one reads through the slot table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from radix_ext.policy import attention_stats
from radix_ext.sglang.request_plan import Stopwatch


def scores(plan) -> bool:
    """Whether `plan` (a `CompressionPlan` or None) has rows to score: only a plan that will compress."""
    return plan is not None and plan.will_compress and bool(plan.rows.numel())


def score_chunk(
    q: torch.Tensor,
    plans: Sequence,
    prefix_lens: Sequence[int],
    extend_lens: Sequence[int],
    layer_idx: int,
    scaling: float,
    prompt_keys: Callable[[int, int], torch.Tensor],
) -> None:
    """Add to every plan that `scores` the `attention_stats` of its planned rows in this chunk.

    `q`: `[tokens, H, d]` post-RoPE queries of the batch, the requests' extend tokens back to back;
    `plans`, `prefix_lens`, `extend_lens`: one entry per request (host values); `layer_idx`: 0-based
    layer of the pool; `prompt_keys(i, n)`: `[n, Hkv, d]`, request `i`'s keys of positions `[0, n)` in
    this layer. Keys stop at the prompt: a retracted request re-prefills its output tokens too.
    """
    start_q = 0
    for i, plan in enumerate(plans):
        prefix, extend = int(prefix_lens[i]), int(extend_lens[i])
        if scores(plan):
            rows = plan.rows[(plan.rows >= prefix) & (plan.rows < prefix + extend)]
            if rows.numel():
                with Stopwatch() as watch:
                    keys = prompt_keys(i, min(prefix + extend, plan.layout.num_tokens))
                    stats = attention_stats(
                        q[start_q + rows.to(q.device) - prefix].transpose(0, 1),  # [H, r, d]
                        keys.transpose(0, 1),
                        rows,
                        scale=scaling,
                        sparsity_threshold=plan.policy.sparsity_threshold,
                    )
                plan.add_part(layer_idx, stats, watch.seconds)
        start_q += extend
