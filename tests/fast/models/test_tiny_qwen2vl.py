"""The embedded default model: deterministic, offline, sized for compression, accepted by SGLang."""

import hashlib
import json

import pytest
from PIL import Image

from vlmodels.tiny_qwen2vl import SPECIAL_TOKENS, TinyQwen2VLSpec, build_tiny_qwen2vl


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = build_tiny_qwen2vl(tmp_path / "a", TinyQwen2VLSpec(seed=0))
    b = build_tiny_qwen2vl(tmp_path / "b", TinyQwen2VLSpec(seed=0))
    c = build_tiny_qwen2vl(tmp_path / "c", TinyQwen2VLSpec(seed=1))
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert "model.safetensors" in da and "tokenizer.json" in da
    assert da == db
    assert da["model.safetensors"] != dc["model.safetensors"]  # the seed really drives the weights


def test_tokenizer_and_chat_template(tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and tok.unk_token_id not in ids
    text = "Describe the image in one sentence."
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE round-trips
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("size,expected_max", [((1024, 1024), 256), ((224, 224), 64), ((2000, 300), 256)])
def test_image_gives_at_most_256_visual_tokens(tiny_model_dir, size, expected_max):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    out = processor.image_processor(images=[Image.new("RGB", size, (10, 200, 30))], return_tensors="pt")
    t, h, w = out["image_grid_thw"][0].tolist()
    visual_tokens = t * h * w // 4  # 2x2 patches merge into one token
    assert visual_tokens <= 256
    assert visual_tokens >= expected_max * 0.75  # large images do use most of the budget


def test_config_is_accepted_by_sglang(tiny_model_dir):
    from sglang.srt.configs.model_config import ModelConfig

    config = ModelConfig(str(tiny_model_dir), context_length=8192, dtype="float32")
    assert config.is_multimodal
    assert config.context_len >= 8192
    assert config.num_hidden_layers == TinyQwen2VLSpec().num_layers
    assert config.get_num_kv_heads(1) == TinyQwen2VLSpec().num_kv_heads
    raw = json.loads((tiny_model_dir / "config.json").read_text())
    head_dim = raw["hidden_size"] // raw["num_attention_heads"]
    assert sum(raw["rope_scaling"]["mrope_section"]) == head_dim // 2
