"""Per-layer attention statistics of one request: the only input policies need from a model.

Computed from post-RoPE queries of selected prompt rows and the cached post-RoPE prompt keys, in
float32, in chunks over rows and keys (two passes: row max / log-sum-exp, then normalised sums), so
a 100k-token prompt never materialises an `r x m x H` tensor. When all the logits fit in one chunk's
memory (the common case: tens of post-vision rows), one pass over them instead: a few fused ops, since
at that size the time is per-op overhead, not arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_SPARSITY_THRESHOLD = 0.01  # docs/algorithm.md section 1: p


@dataclass
class LayerStats:
    """Statistics of one layer over `num_rows` query rows and `num_keys` prompt keys.

    `sparsity`: `[H]` float32, per query head, the fraction of causal entries whose attention is below
    `p` times their row's max (docs/algorithm.md section 1); None when computed over zero rows.
    `column_sums`: `[H, num_keys]` float32, attention each key received, summed over the rows.
    """

    sparsity: torch.Tensor | None
    column_sums: torch.Tensor
    num_rows: int
    causal_entries: float = 0.0  # sum over rows of (position + 1): the sparsity denominator

    @property
    def num_keys(self) -> int:
        return self.column_sums.shape[-1]

    @property
    def num_heads(self) -> int:
        return self.column_sums.shape[0]

    @property
    def layer_sparsity(self) -> float | None:
        """`gamma[l]`: the mean over heads."""
        return None if self.sparsity is None else float(self.sparsity.mean())


def attention_stats(
    q_rows: torch.Tensor,
    k: torch.Tensor,
    row_positions: torch.Tensor,
    *,
    scale: float | None = None,
    sparsity_threshold: float = DEFAULT_SPARSITY_THRESHOLD,
    row_chunk: int = 64,
    key_chunk: int = 2048,
) -> LayerStats:
    """Attention statistics of query rows `q_rows` `[H, r, d]` at prompt positions `row_positions` `[r]`
    over the prompt keys `k` `[Hkv, m, d]` (key `j` is at position `j`; row at position `p` sees `j <= p`).

    Query head `h` reads KV head `h // (H / Hkv)` (GQA). `scale` defaults to `1/sqrt(d)`.
    """
    H, r, d = q_rows.shape
    Hkv, m, dk = k.shape
    if dk != d or H % Hkv:
        raise ValueError(f"shape mismatch: q_rows {tuple(q_rows.shape)}, k {tuple(k.shape)}")
    if row_positions.shape != (r,):
        raise ValueError(f"row_positions must have shape ({r},), got {tuple(row_positions.shape)}")
    first, last = (int(row_positions.min()), int(row_positions.max())) if r else (0, 0)
    if first < 0 or last >= m:
        raise ValueError(f"row positions must lie in [0, {m})")
    group = H // Hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    log_p = math.log(sparsity_threshold)

    column_sums = torch.zeros(H, m, dtype=torch.float32, device=k.device)
    if r == 0:
        return LayerStats(sparsity=None, column_sums=column_sums, num_rows=0)

    kf = k.to(torch.float32)
    qf = (q_rows.to(torch.float32) * scale).view(Hkv, group, r, d)
    positions = row_positions.to(device=k.device, dtype=torch.long)
    causal_entries = float((positions + 1).sum())
    if r * (last + 1) <= row_chunk * key_chunk:  # no bigger than one chunk: the chunks bound nothing
        below = _single_pass(qf, kf, positions, first, last + 1, log_p, column_sums, causal_entries)
        sparsity = (below.reshape(H) / causal_entries).to(torch.float32)
        return LayerStats(sparsity=sparsity, column_sums=column_sums, num_rows=r, causal_entries=causal_entries)
    below = torch.zeros(Hkv, group, dtype=torch.float64, device=k.device)

    for r0 in range(0, r, row_chunk):
        q = qf[:, :, r0 : r0 + row_chunk]  # [Hkv, g, rc, d]
        pos = positions[r0 : r0 + row_chunk]
        n_keys = int(pos.max()) + 1  # keys past the last row's position are masked for every row
        # Pass 1: row max and log-sum-exp over causal keys (online, chunk by chunk).
        row_max = torch.full(q.shape[:3], -math.inf, device=k.device)
        row_sum = torch.zeros(q.shape[:3], device=k.device)
        for k0 in range(0, n_keys, key_chunk):
            z = _causal_logits(q, kf, pos, k0, min(k0 + key_chunk, n_keys))
            new_max = torch.maximum(row_max, z.amax(-1))
            row_sum = row_sum * torch.exp(row_max - new_max) + torch.exp(z - new_max[..., None]).sum(-1)
            row_max = new_max
        log_norm = row_max + torch.log(row_sum)
        cutoff = (row_max + log_p)[..., None]
        # Pass 2: normalised attention summed into columns; entries below p * row max counted.
        for k0 in range(0, n_keys, key_chunk):
            k1 = min(k0 + key_chunk, n_keys)
            z = _causal_logits(q, kf, pos, k0, k1)
            probs = torch.exp(z - log_norm[..., None])  # masked entries: exp(-inf) = 0
            column_sums[:, k0:k1] += probs.sum(2).reshape(H, k1 - k0)
            below += ((z < cutoff) & torch.isfinite(z)).sum((2, 3), dtype=torch.float64)

    sparsity = (below.reshape(H) / causal_entries).to(torch.float32)
    return LayerStats(sparsity=sparsity, column_sums=column_sums, num_rows=r, causal_entries=causal_entries)


def _single_pass(qf, kf, positions, first, n_keys, log_p, column_sums, causal_entries) -> torch.Tensor:
    """The chunked passes over all `[Hkv, g, r, n_keys]` logits at once; fills `column_sums[:, :n_keys]`
    and returns the `[Hkv, g]` float64 counts of causal entries below `p` times their row's max."""
    Hkv, g, r, d = qf.shape
    z = torch.bmm(qf.reshape(Hkv, g * r, d), kf[:, :n_keys].transpose(1, 2)).view(Hkv, g, r, n_keys)
    # Keys before the first row are seen by every row: only `[first + 1, n_keys)` needs the causal mask,
    # added as a `-inf` bias (an add is ~10x cheaper than `masked_fill` with a broadcast mask on CPU).
    key_pos = torch.arange(first + 1, n_keys, device=kf.device)
    mask = torch.zeros(r, n_keys - first - 1, device=kf.device)
    z[..., first + 1 :] += mask.masked_fill_(key_pos[None, :] > positions[:, None], -math.inf)
    # Same test as the chunked pass (`z < row max + log p`), written as 0/1 floats: a float sum is exact
    # below 2^24 entries per head (one chunk is far fewer) and several times faster than a bool sum.
    # The masked entries (-inf) pass it too; there are `r * n_keys - causal_entries` of them per head.
    below = torch.lt(z, z.amax(-1, keepdim=True) + log_p, out=torch.empty_like(z)).sum((2, 3))
    column_sums[:, :n_keys] = torch.softmax(z, -1).sum(2).reshape(Hkv * g, n_keys)
    return below.to(torch.float64) - (r * n_keys - causal_entries)


def merge_layer_stats(parts: list[LayerStats], num_keys: int) -> LayerStats:
    """Statistics of the union of disjoint row sets (e.g. rows computed in different prefill chunks).

    Exact: a row's attention only involves keys at or before it, so column sums and below-threshold
    counts add up; each part's column sums may cover fewer keys (those present when it was computed).
    """
    if not parts:
        raise ValueError("merge_layer_stats needs at least one part")
    heads = parts[0].num_heads
    column_sums = torch.zeros(heads, num_keys, dtype=torch.float32, device=parts[0].column_sums.device)
    below = torch.zeros(heads, dtype=torch.float64, device=column_sums.device)
    rows, causal = 0, 0.0
    for part in parts:
        column_sums[:, : part.num_keys] += part.column_sums
        if part.sparsity is not None:
            below += part.sparsity.to(torch.float64) * part.causal_entries
        rows += part.num_rows
        causal += part.causal_entries
    sparsity = (below / causal).to(torch.float32) if rows else None
    return LayerStats(sparsity=sparsity, column_sums=column_sums, num_rows=rows, causal_entries=causal)


def _causal_logits(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, k0: int, k1: int) -> torch.Tensor:
    """Scaled logits `[Hkv, g, rc, k1-k0]` with `-inf` where the key lies after the row."""
    z = torch.einsum("hgrd,hkd->hgrk", q, k[:, k0:k1])
    key_pos = torch.arange(k0, k1, device=k.device)
    return z.masked_fill(key_pos[None, :] > pos[:, None], -math.inf)
