"""Shared helpers of the policy tests: synthetic q/k, the float64 dense reference, prompt layouts.

(Named uniquely: the fast tier has no __init__.py files, so pytest imports test modules by basename.)
"""

from __future__ import annotations

import math

import torch

from radix_ext.policy import PromptLayout, attention_stats

H, HKV, D = 4, 2, 8  # GQA: two query heads per KV head


def random_qk(
    m: int, seed: int, *, num_layers: int = 1, heads: int = H, kv_heads: int = HKV, dim: int = D, temperatures=None
):
    """Per-layer post-RoPE queries `[H, m, d]` and keys `[Hkv, m, d]`, seeded.

    `temperatures[l]` scales layer `l`'s queries: a small one flattens attention (dense layer), a large
    one sharpens it (sparse layer)."""
    gen = torch.Generator().manual_seed(seed)
    temperatures = temperatures or [1.0] * num_layers
    qs, ks = [], []
    for layer in range(num_layers):
        qs.append(torch.randn(heads, m, dim, generator=gen) * temperatures[layer])
        ks.append(torch.randn(kv_heads, m, dim, generator=gen))
    return qs, ks


def stats_for(policy, layout: PromptLayout, qs, ks, **kwargs):
    """What an engine does: one `attention_stats` per layer over `policy.query_rows(layout)`."""
    rows = policy.query_rows(layout)
    return [
        attention_stats(q[:, rows], k, rows, sparsity_threshold=policy.sparsity_threshold, **kwargs)
        for q, k in zip(qs, ks, strict=True)
    ]


def dense_reference(q_rows, k, positions, *, p=0.01, scale=None, margin=1e-4):
    """Float64 dense attention statistics (docs/algorithm.md sections 1 and 3), written independently of the library.

    Returns `(column_sums [H, m], sparsity_low [H], sparsity_high [H])`: the sparsity of an entry whose
    logit lies within `margin` of the cutoff is ambiguous between float32 and float64, so the exact
    sparsity is bracketed (low counts only clear cases, high counts clear and ambiguous ones).
    """
    Hq, r, d = q_rows.shape
    Hk, m, _ = k.shape
    g = Hq // Hk
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q64 = q_rows.to(torch.float64)
    k64 = k.to(torch.float64).repeat_interleave(g, dim=0)  # query head h reads KV head h // g
    logits = torch.einsum("hrd,hkd->hrk", q64, k64) * scale  # [H, r, m]
    causal = torch.arange(m)[None, :] <= positions[:, None]  # [r, m]
    logits = logits.masked_fill(~causal[None], -math.inf)
    attn = torch.softmax(logits, dim=-1)
    column_sums = attn.sum(1)
    row_max = attn.amax(-1, keepdim=True)
    ratio_logit = logits - logits.amax(-1, keepdim=True)  # ln(A / rowmax)
    clear_below = (attn < p * row_max) & causal[None] & (ratio_logit < math.log(p) - margin)
    maybe_below = causal[None] & (ratio_logit < math.log(p) + margin)
    denom = float((positions + 1).sum())
    return column_sums, clear_below.sum((1, 2)) / denom, maybe_below.sum((1, 2)) / denom


def check_valid_keep(keep: torch.Tensor, m: int) -> None:
    assert isinstance(keep, torch.Tensor) and keep.dtype == torch.long and keep.dim() == 1
    if keep.numel():
        assert int(keep.min()) >= 0 and int(keep.max()) < m
        assert bool((keep[1:] > keep[:-1]).all()), f"not sorted/unique: {keep.tolist()}"


def window_size(k: int, fraction: float = 0.1) -> int:
    """`ceil(fraction * k)` computed exactly for the default 0.1 (integer arithmetic)."""
    if fraction == 0.1:
        return min(k, -(-k // 10))
    return min(k, math.ceil(fraction * k))


def selections_equal(a, b) -> bool:
    return (
        a.policy == b.policy
        and a.options == b.options
        and a.budget == b.budget
        and a.num_tokens == b.num_tokens
        and a.compressed == b.compressed
        and a.layer_budgets == b.layer_budgets
        and a.layer_sparsity == b.layer_sparsity
        and a.layer_fractions == b.layer_fractions
        and a.reason == b.reason
        and len(a.keep) == len(b.keep)
        and all(torch.equal(x, y) for x, y in zip(a.keep, b.keep, strict=True))
    )
