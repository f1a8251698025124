"""Per-layer budgets: how many prompt tokens each layer keeps (docs/algorithm.md section 2).

Every policy ends in `allocate_counts`: integer counts `k[l]` proportional to per-layer weights, within
`[lo, hi]`, summing exactly to the total. Uniform budgets are equal weights, VL-Cache's are layer
densities, PyramidKV's a linear ramp.
"""

from __future__ import annotations

import math

import torch

MIN_LAYER_FRACTION = 0.01  # the paper: beta[l] >= 0.01
MAX_LAYER_FRACTION = 1.0


def total_budget(alpha: float, num_layers: int, num_tokens: int) -> int:
    """`round(alpha * L * m)`: the number of (layer, token) entries kept across all layers."""
    return round(alpha * num_layers * num_tokens)


def count_bounds(num_tokens: int) -> tuple[int, int]:
    """`[lo, hi]` tokens per layer: at least 1% of the prompt (and 1 token), at most all of it."""
    return max(1, math.ceil(MIN_LAYER_FRACTION * num_tokens)), num_tokens


def allocate_counts(weights: torch.Tensor, total: int, lo: int, hi: int) -> list[int]:
    """Integers `k[l]` in `[lo, hi]` with `sum(k) == total` (when `L*lo <= total <= L*hi`), proportional
    to `weights` where no bound binds.

    Water-filling: shares `clip(c * w[l], lo, hi)` at the level `c` where they sum to `total`, so a
    clipped layer's surplus or deficit is spread over the others in proportion to their weights; then
    largest remainders round the shares, ties going to the lower layer index. Outside `[L*lo, L*hi]`
    every layer sits at a bound.
    """
    w = weights.to(torch.float64).clamp_min(0)
    n = w.numel()
    if total <= n * lo:
        return [lo] * n
    if total >= n * hi:
        return [hi] * n
    share = _water_fill(w, float(total), float(lo), float(hi)).tolist()  # L floats: rounded in Python
    counts = [math.floor(x) for x in share]
    shortfall = total - sum(counts)
    if shortfall > 0:
        remainder = [x - c if c < hi else -math.inf for x, c in zip(share, counts, strict=True)]  # capped: never up
        order = sorted(range(n), key=lambda i: (-remainder[i], i))
        for i in order[:shortfall]:
            counts[i] += 1
    return counts


def _water_fill(w: torch.Tensor, total: float, lo: float, hi: float) -> torch.Tensor:
    """Shares `clip(c * w, lo, hi)` with the level `c` found by bisection so they sum to `total`.

    Zero-weight layers sit at `lo` unless every weighted layer is capped; then they share what is left.
    """
    w = w / float(w.max()) if float(w.max()) > 0 else torch.ones_like(w)  # scale-free: no overflow below
    w = torch.where(w < 1e-12, torch.zeros_like(w), w)
    low, high = 0.0, hi / float(w[w > 0].min())  # at `high` every weighted layer is capped
    for _ in range(200):
        mid = (low + high) / 2
        # Adjacent floats: every further step leaves `high` as it is (f(low) < total always holds), so
        # stopping here is exact; it ends after ~55 steps instead of 200 (each one a tensor op and a sync).
        if mid in (low, high):
            break
        if float((w * mid).clamp(lo, hi).sum()) < total:
            low = mid
        else:
            high = mid
    share = (w * high).clamp(lo, hi)
    left = total - float(share.sum())
    unweighted = w == 0
    if left > 0 and bool(unweighted.any()):
        share[unweighted] = (share[unweighted] + left / int(unweighted.sum())).clamp(lo, hi)
    return share


def uniform_counts(num_layers: int, alpha: float, num_tokens: int) -> list[int]:
    lo, hi = count_bounds(num_tokens)
    return allocate_counts(torch.ones(num_layers), total_budget(alpha, num_layers, num_tokens), lo, hi)


def sparsity_fractions(layer_sparsity: torch.Tensor, alpha: float, blend: float = 1.0) -> torch.Tensor:
    """The paper's `beta[l] = clip(dens[l] / Z * alpha * L, 0.01, 1)` with `dens = 1 - gamma` (unrounded);
    with `blend < 1`, `dens / Z` is replaced by `blended_weights` (0 = uniform)."""
    w = blended_weights(layer_sparsity, blend)
    L = w.numel()
    return (w / w.sum() * alpha * L).clamp(MIN_LAYER_FRACTION, MAX_LAYER_FRACTION)


def sparsity_counts(
    layer_sparsity: torch.Tensor, alpha: float, num_tokens: int, renormalize: bool, blend: float = 1.0
) -> list[int]:
    """VL-Cache's per-layer counts. `renormalize=True` (our default) hits `round(alpha*L*m)` exactly;
    `False` reproduces the paper literally: `k[l] = max(1, floor(beta[l] * m))`. `blend` as in
    `blended_weights` (1.0, the default, is the paper's split)."""
    if not renormalize:
        beta = sparsity_fractions(layer_sparsity, alpha, blend)
        return [max(1, math.floor(float(b) * num_tokens)) for b in beta]
    lo, hi = count_bounds(num_tokens)
    L = layer_sparsity.numel()
    return allocate_counts(blended_weights(layer_sparsity, blend), total_budget(alpha, L, num_tokens), lo, hi)


def blended_weights(layer_sparsity: torch.Tensor, blend: float) -> torch.Tensor:
    """Per-layer budget weights `blend * dens / sum(dens) + (1 - blend) / L`.

    1 is the paper's sparsity-aware split, 0 uniform budgets; in between, each layer's share moves
    linearly from `1/L` to its density share (a re-implementation found the paper's split starves later
    layers, and mostly-uniform budgets did better). At 1 the densities are returned as they are, so
    the default is bit-identical to the unblended code."""
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be in [0, 1], got {blend!r}")
    dens = _densities(layer_sparsity)
    if blend == 1.0:
        return dens
    return blend * dens / dens.sum() + (1.0 - blend) / dens.numel()


def _densities(layer_sparsity: torch.Tensor) -> torch.Tensor:
    dens = (1.0 - layer_sparsity.to(torch.float64)).clamp_min(0)
    if float(dens.sum()) <= 0:  # every layer fully sparse: nothing to prefer
        return torch.ones_like(dens)
    return dens


def pyramid_counts(num_layers: int, alpha: float, num_tokens: int, window_fraction: float, beta: int = 20) -> list[int]:
    """PyramidKV: from `2(C-w) - (C-w)/beta` at layer 0 down to `(C-w)/beta` at the last, plus `w`,
    where `C = alpha*m` is the uniform per-layer budget and `w` its recent window."""
    C = alpha * num_tokens
    w = math.ceil(window_fraction * C)
    low = (C - w) / beta
    high = 2 * (C - w) - low
    steps = torch.arange(num_layers, dtype=torch.float64) / max(1, num_layers - 1)
    ramp = high - (high - low) * steps + w
    lo, hi = count_bounds(num_tokens)
    return allocate_counts(ramp, total_budget(alpha, num_layers, num_tokens), lo, hi)
