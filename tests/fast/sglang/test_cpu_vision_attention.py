"""Per-image vision attention on the CPU engine equals SGLang's dense-mask `VisionSdpaAttention`."""

import itertools

import pytest
import torch
from sglang.srt.layers.attention.vision import VisionSdpaAttention

from radix_ext.sglang.cpu_vision_attention import segmented_vision_sdpa


def _dense_block_mask_reference(attn, q, k, v, cu):
    """What stock computes: one SDPA over all patches with a block-diagonal `[s, s]` mask."""
    s = q.shape[0]
    mask = torch.zeros((s, s), dtype=torch.bool)
    for start, end in itertools.pairwise(cu.tolist()):
        mask[start:end, start:end] = True
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=attn.scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_segmented_equals_dense_mask(monkeypatch, heads, kv_heads):
    monkeypatch.setenv("SGLANG_USE_CPU_ENGINE", "1")
    torch.manual_seed(0)
    attn = VisionSdpaAttention(head_dim=8, num_heads=heads, num_kv_heads=kv_heads, flatten_batch=True)
    cu = torch.tensor([0, 16, 20, 52, 52, 64], dtype=torch.int32)  # images of 16, 4, 32, 0, 12 patches
    q = torch.randn(64, heads, 8)
    k, v = torch.randn(64, kv_heads, 8), torch.randn(64, kv_heads, 8)
    calls = []
    got = segmented_vision_sdpa(lambda *a, **kw: calls.append(1), attn, q, k, v, 1, cu_seqlens=cu)
    assert not calls  # the per-segment path ran
    torch.testing.assert_close(got, _dense_block_mask_reference(attn, q, k, v, cu), rtol=1e-5, atol=1e-5)
    for start, end in [(0, 16), (20, 52)]:  # each image alone equals plain attention over that image
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[start:end].transpose(0, 1),
            k[start:end].transpose(0, 1),
            v[start:end].transpose(0, 1),
            scale=attn.scale,
            enable_gqa=heads != kv_heads,
        ).transpose(0, 1)
        torch.testing.assert_close(got[start:end], ref, rtol=1e-5, atol=1e-5)


def test_off_the_cpu_engine_or_single_image_it_defers_to_stock(monkeypatch):
    attn = VisionSdpaAttention(head_dim=8, num_heads=2, num_kv_heads=2, flatten_batch=True)
    q = k = v = torch.randn(8, 2, 8)
    calls = []
    original = lambda *a, **kw: calls.append(1) or "stock"  # noqa: E731
    monkeypatch.setenv("SGLANG_USE_CPU_ENGINE", "0")
    assert segmented_vision_sdpa(original, attn, q, k, v, 1, cu_seqlens=torch.tensor([0, 4, 8])) == "stock"
    monkeypatch.setenv("SGLANG_USE_CPU_ENGINE", "1")
    assert segmented_vision_sdpa(original, attn, q, k, v, 1, cu_seqlens=torch.tensor([0, 8])) == "stock"
    assert len(calls) == 2
