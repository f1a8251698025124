"""The CPU support shims: torchvision imports, the sgl_kernel stand-in computes what SGLang expects."""

import subprocess
import sys

import pytest
import torch


def test_bootstrap_is_active_in_fresh_processes():
    # SGLang's scheduler and detokenizer are fresh interpreters: the .pth must reach them.
    code = (
        "import sys, torchvision, sgl_kernel, sglang, torch;"
        "assert 'cpu_shims.bootstrap' in sys.modules;"
        "assert sgl_kernel.__name__ == 'cpu_shims.sgl_kernel_standin';"
        "assert not hasattr(torch.ops.sgl_kernel, 'convert_weight_packed');"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_torchvision_transforms_work():
    from torchvision.transforms.v2 import functional as F

    img = torch.rand(3, 20, 30)
    assert F.resize(img, [10, 15]).shape == (3, 10, 15)


def test_assign_req_to_token_pool_matches_definition():
    import sgl_kernel

    req_to_token = torch.zeros((4, 10), dtype=torch.int32)
    rows, starts, ends = torch.tensor([2, 1]), torch.tensor([3, 0]), torch.tensor([5, 4])
    out_cache_loc = torch.tensor([11, 12, 21, 22, 23, 24])
    sgl_kernel.assign_req_to_token_pool_cpu(rows, req_to_token, starts, ends, out_cache_loc, 10)
    assert req_to_token[2].tolist() == [0, 0, 0, 11, 12, 0, 0, 0, 0, 0]
    assert req_to_token[1].tolist() == [21, 22, 23, 24, 0, 0, 0, 0, 0, 0]
    assert req_to_token[[0, 3]].abs().sum() == 0


def test_copy_all_layer_kv_cache_moves_slots_in_every_buffer():
    import sgl_kernel

    buffers = [torch.arange(40, dtype=torch.float32).reshape(10, 4) + 100 * i for i in range(3)]
    expected = [b.clone() for b in buffers]
    for e in expected:
        e[[7, 8]] = e[[2, 3]]
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in buffers], dtype=torch.int64)
    sgl_kernel.copy_all_layer_kv_cache_cpu(ptrs, strides, torch.tensor([7, 8]), torch.tensor([2, 3]))
    for got, want in zip(buffers, expected, strict=True):
        assert torch.equal(got, want)


def test_fused_qk_norm_normalises_each_head_of_q_and_k_in_place_as_rmsnorm():
    from sglang.srt.layers.layernorm import RMSNorm

    qkv = torch.randn(5, (4 + 2 + 2) * 16, dtype=torch.bfloat16)
    q, k = qkv[:, : 4 * 16], qkv[:, 4 * 16 : 6 * 16]  # strided views into qkv, as SGLang passes them
    q_norm, k_norm = RMSNorm(16, eps=1e-6), RMSNorm(16, eps=1e-6)
    q_norm.weight.data, k_norm.weight.data = torch.rand(16) + 0.5, torch.rand(16) + 0.5
    want_q = q_norm.forward_native(q.reshape(-1, 16)).view(5, -1)
    want_k = k_norm.forward_native(k.reshape(-1, 16)).view(5, -1)
    v_before = qkv[:, 6 * 16 :].clone()
    torch.ops.sgl_kernel.fused_qk_norm_cpu(q, k, q_norm.weight, k_norm.weight, 1e-6)
    assert torch.equal(q, want_q.to(q.dtype)) and torch.equal(k, want_k.to(k.dtype))
    assert torch.equal(qkv[:, 6 * 16 :], v_before)


def test_unknown_cpu_kernels_fail_loudly_when_called():
    import sgl_kernel
    from sgl_kernel import fused_sigmoid_mul_cpu  # resolvable at import, as SGLang's model files need

    with pytest.raises(NotImplementedError, match="fused_sigmoid_mul_cpu"):
        fused_sigmoid_mul_cpu(torch.zeros(1))
    with pytest.raises(NotImplementedError):
        torch.ops.sgl_kernel.rmsnorm_cpu(torch.zeros(1))
    with pytest.raises(AttributeError):
        sgl_kernel.flash_attn_varlen_func  # noqa: B018  (not a *_cpu name: absent, as on a real CPU build)
