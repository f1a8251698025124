"""The benchmark model: the tiny Qwen2-VL builder, shaped so KV bytes dominate a decode step.

Random weights (answers are meaningless; the benchmarks measure time and bytes). fp32:
- LM weights: 8 layers x (4 x 256^2 attention + 3 x 256 x 512 MLP) + 2 x 512 x 256 embeddings
  = 5.5 M parameters = 22 MB read by every decode step;
- KV: 8 layers x 2 (K, V) x 8 heads x 32 dims x 4 B = 16 KiB per token, so 16k prompt tokens hold
  256 MiB of KV (11.6x the weights) and the byte bound at budget 0.1 is about 5.8x;
- one 980x980 image = 35 x 35 = 1,225 visual tokens (SGLang's Qwen2-VL processor caps an image near
  1,280), so 3 / 13 / 26 images make prompts of about 4k / 16k / 32k tokens.
"""

from __future__ import annotations

from pathlib import Path

from vlmodels.tiny_qwen2vl import TinyQwen2VLSpec, default_cache_dir, ensure_tiny_qwen2vl

BENCH_SPEC = TinyQwen2VLSpec(
    hidden_size=256,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
    intermediate_size=512,
    context_length=40960,
    max_visual_tokens_per_image=1280,
)
IMAGE_SIDE = 980  # pixels: 35 x 35 merged 28-px tokens


def weight_bytes(spec: TinyQwen2VLSpec = BENCH_SPEC) -> int:
    """Bytes of LM weights one decode step reads (fp32; the vision tower does not run in decode)."""
    h, f, layers = spec.hidden_size, spec.intermediate_size, spec.num_layers
    kv_dim = spec.num_kv_heads * spec.head_dim
    per_layer = h * h * 2 + h * kv_dim * 2 + 3 * h * f + 2 * h  # q, o, k, v, MLP, two norms
    return 4 * (layers * per_layer + 2 * spec.vocab_size * h + h)


def kv_bytes_per_token(spec: TinyQwen2VLSpec = BENCH_SPEC) -> int:
    """K and V bytes of one token over all layers (fp32)."""
    return 4 * 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim


def ensure_bench_qwen2vl(out_dir: str | Path | None = None) -> Path:
    out = Path(out_dir) if out_dir else default_cache_dir().parent / "bench-qwen2vl"
    return ensure_tiny_qwen2vl(out, BENCH_SPEC)


if __name__ == "__main__":
    print(ensure_bench_qwen2vl())
