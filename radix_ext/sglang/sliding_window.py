"""Sliding-window layers (Gemma 3's local layers) over per-layer views: a window counts positions.

In a layer with SGLang's `sliding_window_size` w > -1, the query at logical position p reads the keys at
positions [p - w, p]. Stock SGLang applies the window by index into the request's key list, which is the
position only while every token holds a slot. A compressed request, or a prefix an earlier turn left
compressed, holds a subset in a layer, so the plugin applies the window by position: the keys' logical
positions come with the slots (`RequestTable.window_start`, `key_positions` below). Plain torch.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention


def layer_window(layer) -> int | None:
    """The layer's window w (keys [p - w, p] for the query at p), or None where it reads every key."""
    w = getattr(layer, "sliding_window_size", None)
    if w is None or w < 0 or getattr(layer, "is_cross_attention", False):
        return None
    return int(w)


def window_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, window: int) -> torch.Tensor:
    """`[queries, keys]` bool: causal and inside the window, by logical position (SGLang's rule)."""
    q, k = query_positions[:, None], key_positions[None, :]
    return (k <= q) & (k >= q - window)


def extend_attention(
    q: torch.Tensor,
    o: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    slots: list[torch.Tensor],
    key_positions: list[torch.Tensor],
    extend_lens: list[int],
    window: int,
    scaling: float,
    enable_gqa: bool,
) -> None:
    """Windowed attention of an extend batch into `o` (`[tokens, Hq, d]`, requests in batch order).

    Request i reads the physical `slots[i]`, whose logical positions are `key_positions[i]` (ascending);
    its `extend_lens[i]` new tokens are the last entries of both (they were just written, so they hold
    a slot in every layer)."""
    start = 0
    for slot, positions, n in zip(slots, key_positions, extend_lens, strict=True):
        keys = k_buffer[slot].movedim(0, 1)  # [n_keys, Hkv, d] -> [Hkv, n_keys, d]
        values = v_buffer[slot].movedim(0, 1)
        queries = q[start : start + n].movedim(0, 1)
        if keys.dtype != queries.dtype:
            keys, values = keys.to(queries.dtype), values.to(queries.dtype)
        out = scaled_dot_product_attention(
            queries.unsqueeze(0),
            keys.unsqueeze(0),
            values.unsqueeze(0),
            attn_mask=window_mask(positions[-n:], positions, window),
            scale=scaling,
            enable_gqa=enable_gqa,
        )
        o[start : start + n] = out[0].movedim(1, 0)
        start += n
