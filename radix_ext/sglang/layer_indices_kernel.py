"""The GPU fill of `layer_indices`' contract: every layer's `kv_indices` of a batch in one Triton launch.

`grid = (L, bs)`: program `(l, b)` walks request `b`'s `lens[l, b]` entries in blocks, so the work is
proportional to what the layer reads (not to a padded `[L, bs, max_len]`), it needs no host sync and
it is recorded into a CUDA graph as one kernel. Imports torch and Triton only (no SGLang), so
`bench/gpu_decode.py` runs it on a machine without SGLang. Tested against `layer_indices.gather_indices`
under `TRITON_INTERPRET=1`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radix_ext.sglang.layer_indices import ViewStore


@triton.jit
def _fill_layer_kv_indices(
    out, out_stride, indptr, indptr_stride, rows, seq_lens,
    req_to_token, rtt_stride, phys, phys_stride,
    prompt_len, count, count_stride, start, start_stride, kept,
    DECODE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    layer = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1)
    row = tl.load(rows + b).to(tl.int64)
    n = tl.load(seq_lens + b).to(tl.int64)
    base = tl.load(indptr + layer * indptr_stride + b).to(tl.int64)
    prompt = tl.load(prompt_len + row).to(tl.int64)
    on = (prompt > 0) & (n >= prompt) & DECODE
    cnt = tl.where(on, tl.load(count + row * count_stride + layer).to(tl.int64), 0)
    seg = tl.where(on, tl.load(start + row * start_stride + layer), 0)
    prompt = tl.where(on, prompt, 0)
    length = cnt + n - prompt
    for i in range(0, length, BLOCK):
        j = i + tl.arange(0, BLOCK).to(tl.int64)
        mask = j < length
        from_kept = j < cnt
        kpos = tl.load(kept + seg + j, mask=mask & from_kept, other=0).to(tl.int64)
        pos = tl.where(from_kept, kpos, prompt + j - cnt)
        logical = tl.load(req_to_token + row * rtt_stride + pos, mask=mask, other=0).to(tl.int64)
        physical = tl.load(phys + layer * phys_stride + logical, mask=mask, other=0).to(tl.int64)
        tl.store(out + layer * out_stride + base + j, physical, mask=mask)


def fill_layer_kv_indices(
    out: torch.Tensor, indptr: torch.Tensor, store: ViewStore, req_to_token, phys, rows, seq_lens, decode: bool,
    block: int = 128,
) -> torch.Tensor:  # fmt: skip
    """Write every layer's physical slots into `out [L, width]` (int64) by `indptr [L, >= bs + 1]`
    (from `layer_indices.fill_indptr`); entries past a layer's total are left as they were."""
    bs = rows.numel()
    if bs == 0:
        return out
    assert out.stride(1) == 1 and indptr.stride(1) == 1 and req_to_token.stride(1) == 1 and phys.stride(1) == 1
    _fill_layer_kv_indices[(phys.shape[0], bs)](
        out, out.stride(0), indptr, indptr.stride(0), rows, seq_lens,
        req_to_token, req_to_token.stride(0), phys, phys.stride(0),
        store.prompt_len, store.count, store.count.stride(0), store.start, store.start.stride(0), store.kept,
        DECODE=decode, BLOCK=block,
    )  # fmt: skip
    return out
