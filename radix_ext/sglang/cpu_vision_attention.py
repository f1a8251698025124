"""Vision attention on the CPU engine: one SDPA per image or frame instead of one dense mask per request.

SGLang's `VisionSdpaAttention` builds a boolean `[1, s, s]` mask over every patch of the batch
(`s` = 4 patches per visual token), so 16k visual tokens need a 4 GiB mask plus the SDPA's own
`[heads, s, s]` scores: the scheduler is killed for memory. Patches attend only within their own
image/frame (`cu_seqlens` segments), so running SDPA segment by segment gives the same output with
memory bounded by the largest segment. Registered on the CPU engine whether or not the plugin is
selected (it changes memory, not results), so stock and plugin runs compare like for like.
"""

from __future__ import annotations

import itertools
import os

import torch
import torch.nn.functional as F


def cpu_engine() -> bool:
    return os.environ.get("SGLANG_USE_CPU_ENGINE", "0").lower() in ("1", "true", "yes")


def segmented_vision_sdpa(original, self, q, k, v, bsz, cu_seqlens=None, attention_mask=None, **kwargs):
    """AROUND hook on `VisionSdpaAttention.forward`; falls back to stock for anything but the flat
    single-batch layout Qwen2-VL uses (`bsz == 1`, `cu_seqlens` given, no explicit mask)."""
    if (
        not cpu_engine()
        or bsz != 1
        or cu_seqlens is None
        or attention_mask is not None
        or self.softmax_in_single_precision
        or self.dropout
        or len(cu_seqlens) <= 2  # one segment: stock builds an all-true mask; same cost either way
    ):
        return original(self, q, k, v, bsz, cu_seqlens, attention_mask, **kwargs)
    bounds = [int(b) for b in (cu_seqlens.tolist() if torch.is_tensor(cu_seqlens) else cu_seqlens)]
    out = q.new_empty((q.shape[0], self.num_heads, self.head_size))
    gqa = self.num_heads != self.num_kv_heads
    for start, end in itertools.pairwise(bounds):
        if end <= start:
            continue
        # [len, heads, d] -> [1, heads, len, d]
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs, scale=self.scale, enable_gqa=gqa)
        out[start:end] = o.squeeze(0).transpose(0, 1)
    return out
