"""The benchmark model: the tiny Qwen2-VL builder, shaped so KV bytes dominate a decode step.

Random weights (answers are meaningless; the benchmarks measure time and bytes). fp32:
- LM weights: 8 layers x (4 x 256^2 attention + 3 x 256 x 512 MLP) + 2 x 512 x 256 embeddings
  = 5.5 M parameters = 22 MB read by every decode step;
- KV: 8 layers x 2 (K, V) x 8 heads x 32 dims x 4 B = 16 KiB per token, so 16k prompt tokens hold
  256 MiB of KV (11.6x the weights) and the byte bound at budget 0.1 is about 5.8x;
- one 980x980 image = 35 x 35 = 1,225 visual tokens (SGLang's Qwen2-VL processor caps an image near
  1,280), so 3 / 13 / 26 / 52 images make prompts of about 4k / 16k / 32k / 64k tokens (context 64 Ki).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmodels.tiny_qwen2vl import TinyQwen2VLSpec, default_cache_dir, ensure_tiny_qwen2vl

BENCH_SPEC = TinyQwen2VLSpec(
    hidden_size=256,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
    intermediate_size=512,
    context_length=65536,
    max_visual_tokens_per_image=1280,
)
IMAGE_SIDE = 980  # pixels: 35 x 35 merged 28-px tokens


def decode_bytes(model_dir: str | Path) -> tuple[int, int]:
    """(LM weight bytes one decode step reads, KV bytes per token over all layers), fp32, from config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    h, f, layers, vocab = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"], text["vocab_size"]
    kv_dim = text["num_key_value_heads"] * (h // text["num_attention_heads"])
    per_layer = h * h * 2 + h * kv_dim * 2 + 3 * h * f + 2 * h  # q, o, k, v, MLP, two norms
    return 4 * (layers * per_layer + 2 * vocab * h + h), 4 * 2 * layers * kv_dim


def ensure_bench_qwen2vl(out_dir: str | Path | None = None) -> Path:
    out = Path(out_dir) if out_dir else default_cache_dir().parent / "bench-qwen2vl"
    return ensure_tiny_qwen2vl(out, BENCH_SPEC)


if __name__ == "__main__":
    print(ensure_bench_qwen2vl())
