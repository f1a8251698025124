"""A pure-torch stand-in for SGLang's `sgl_kernel` package on CPU (imported as `sgl_kernel`).

With `SGLANG_USE_CPU_ENGINE=1`, SGLang imports a few bookkeeping helpers from `sgl_kernel` at module
load and reads `torch.ops.sgl_kernel.<name>_cpu` attributes at import time in some model files. All real
compute falls back to plain torch because `torch.ops.sgl_kernel.convert_weight_packed` is absent (SGLang
then takes its non-AMX paths). So this module implements the helpers a plain decoder model calls and
hands out, for any other `*_cpu` name, a function that fails loudly if it is ever called.
"""

from __future__ import annotations

import ctypes

import torch

__version__ = "0.0.0+vlcache-cpu-standin"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    max_context_len: int,
) -> None:
    """For each request i: `req_to_token[row_i, start_i:end_i] = out_cache_loc[next end_i - start_i]`."""
    del max_context_len  # the row width; slicing already bounds the write
    starts, ends, rows = start_offset.tolist(), end_offset.tolist(), req_pool_indices.tolist()
    cursor = 0
    for row, start, end in zip(rows, starts, ends, strict=True):
        n = end - start
        req_to_token[row, start:end] = out_cache_loc[cursor : cursor + n].to(req_to_token.dtype)
        cursor += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    """Copy slot `src_loc[i]` to slot `tgt_loc[i]` in every buffer (raw pointers, row size in bytes)."""
    pairs = list(zip(tgt_loc.tolist(), src_loc.tolist(), strict=True))
    for ptr, stride in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        for tgt, src in pairs:
            ctypes.memmove(ptr + tgt * stride, ptr + src * stride, stride)


def fused_qk_norm_cpu(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float
) -> None:
    """In place, RMSNorm over each head of `q` and `k` (`[tokens, heads * head_dim]`, head rows dense), as
    SGLang's `RMSNorm.forward_native` computes it. SGLang takes this path (models/utils.py `apply_qk_norm`:
    Qwen3's q/k norms) for bf16 and fp16 on CPU whenever the op resolves, which every `*_cpu` name does here."""
    for x, weight in ((q, q_weight), (k, k_weight)):
        heads = x.view(x.shape[0], -1, weight.numel())
        h = heads.float()
        h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
        heads.copy_((h * weight).to(x.dtype))


_IMPLEMENTED = {
    "assign_req_to_token_pool_cpu": assign_req_to_token_pool_cpu,
    "copy_all_layer_kv_cache_cpu": copy_all_layer_kv_cache_cpu,
    "fused_qk_norm_cpu": fused_qk_norm_cpu,
}


def _missing_kernel(name: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} has no pure-torch stand-in (vlcache-serve CPU shim); "
            "this model or feature needs SGLang's real CPU kernels"
        )

    kernel.__name__ = name
    return kernel


def __getattr__(name: str):
    """Module-level lookup: `from sgl_kernel import x_cpu` gets a loud stub for unknown `*_cpu` names."""
    if name.endswith("_cpu"):
        return _missing_kernel(name)
    raise AttributeError(f"module 'sgl_kernel' (CPU stand-in) has no attribute {name!r}")


class CpuOpNamespace:
    """Installed as `torch.ops.sgl_kernel`: `*_cpu` names resolve, everything else is absent.

    `convert_weight_packed` in particular must stay absent: SGLang probes it to decide whether the
    Intel AMX kernels exist, and without it every layer uses plain torch.
    """

    name = "sgl_kernel"

    def __getattr__(self, name: str):
        if name in _IMPLEMENTED:
            return _IMPLEMENTED[name]
        if name.endswith("_cpu"):
            return _missing_kernel(name)
        raise AttributeError(f"'torch.ops.sgl_kernel' (CPU stand-in) has no op {name!r}")


def install_op_namespace() -> None:
    """Make `torch.ops.sgl_kernel` the stand-in namespace (idempotent)."""
    if not isinstance(torch.ops.__dict__.get("sgl_kernel"), CpuOpNamespace):
        torch.ops.sgl_kernel = CpuOpNamespace()
