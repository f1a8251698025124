"""Qwen2.5-VL and Qwen3-VL: HF-format folders, served by SGLang's `Qwen2_5_VLForConditionalGeneration`
and `Qwen3VLForConditionalGeneration`. Both keep Qwen2-VL's tokens and chat template
(vlmodels/tiny_qwen2vl.py); they differ in the vision tower (2.5: windowed attention, patch 14;
3: patch 16, learned position grid, DeepStack features into the first LM layers) and in the LM
(3: explicit head_dim, interleaved M-RoPE, q/k norms)."""

from __future__ import annotations

from pathlib import Path

from vlmodels.families.base import Family, FamilySpec, patch_config
from vlmodels.tiny_qwen2vl import (
    CHAT_TEMPLATE,
    MERGE,
    SPECIAL_TOKENS,
    _mrope_section,
    train_tokenizer,
    write_model_folder,
)


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _vision(spec: FamilySpec) -> dict:
    """The vision tower's fields Qwen2.5-VL and Qwen3-VL share (each adds its patch size and layout)."""
    return dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=2 * spec.vision_hidden_size,
        num_heads=spec.vision_heads,
        out_hidden_size=spec.hidden_size,
        spatial_merge_size=MERGE,
        initializer_range=spec.initializer_range,
    )


def _text(spec: FamilySpec, tokenizer, rope: dict) -> dict:
    pad, eos = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    return spec.text_sizes() | dict(
        rms_norm_eps=1e-6,
        rope_parameters=rope,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def _processor(processor_cls, video_cls, spec: FamilySpec, tokenizer, patch: int, video_bounds):
    """The family processor; `video_bounds(low, high)` spells the video pixel bounds its way."""
    from transformers import Qwen2VLImageProcessor

    token_pixels = (patch * MERGE) ** 2
    low, high = spec.min_visual_tokens_per_image * token_pixels, spec.max_visual_tokens_per_image * token_pixels
    return processor_cls(
        image_processor=Qwen2VLImageProcessor(min_pixels=low, max_pixels=high, patch_size=patch, merge_size=MERGE),
        video_processor=video_cls(patch_size=patch, merge_size=MERGE, **video_bounds(low, high)),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def _save(out_dir: Path, spec: FamilySpec, family: Family, model, processor, top_level: dict) -> Path:
    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        patch_config(folder / "config.json", **top_level)

    return write_model_folder(out_dir, write, family.stamp(spec))


def _sglang_top_level(text: dict, rope: dict) -> dict:
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    keys += ("intermediate_size", "max_position_embeddings", "rms_norm_eps")
    return {k: text[k] for k in keys} | {
        "rope_scaling": {"type": "mrope", "mrope_section": rope["mrope_section"]},
        "rope_theta": rope["rope_theta"],
    }


def build_qwen2_5_vl(out_dir: Path, spec: FamilySpec) -> Path:
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = train_tokenizer(spec.vocab_size, spec.context_length)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(spec.head_dim)}
    text = _text(spec, tokenizer, rope)
    vision = _vision(spec) | dict(
        patch_size=14,
        window_size=112,  # 4 x 4 merged tokens per window, so a 16 x 16 image spans several windows
        fullatt_block_indexes=[spec.vision_depth - 1],  # windowed blocks first, then one full-attention block
    )
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_token_ids(tokenizer))
    torch.manual_seed(spec.seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    processor = _processor(
        Qwen2_5_VLProcessor, Qwen2VLVideoProcessor, spec, tokenizer, 14,
        video_bounds=lambda low, high: {"min_pixels": low, "max_pixels": high},
    )  # fmt: skip
    return _save(out_dir, spec, QWEN2_5_VL, model, processor, _sglang_top_level(text, rope))


def build_qwen3_vl(out_dir: Path, spec: FamilySpec) -> Path:
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = train_tokenizer(spec.vocab_size, spec.context_length)
    rope = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": _mrope_section(spec.head_dim),
        "mrope_interleaved": True,
    }
    text = _text(spec, tokenizer, rope) | {"head_dim": spec.head_dim}
    vision = _vision(spec) | dict(
        patch_size=16,
        num_position_embeddings=256,  # a 16 x 16 learned grid, interpolated to each image's patch grid
        deepstack_visual_indexes=[0],
    )
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_token_ids(tokenizer))
    torch.manual_seed(spec.seed)
    model = Qwen3VLForConditionalGeneration(config).to(torch.float32).eval()
    processor = _processor(
        Qwen3VLProcessor, Qwen3VLVideoProcessor, spec, tokenizer, 16,
        video_bounds=lambda low, high: {"size": {"shortest_edge": low, "longest_edge": high}},
    )  # fmt: skip
    return _save(out_dir, spec, QWEN3_VL, model, processor, {})


QWEN2_5_VL = Family(
    "qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "HF", lambda o, s: build_qwen2_5_vl(o, s)
)
QWEN3_VL = Family("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", "HF", lambda o, s: build_qwen3_vl(o, s))
