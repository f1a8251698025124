"""The committed grid-VQA model: SGLang accepts its config, the reference engine answers with it,
its tokenizer has every answer as one token; and the hit-rate diagnostic's arithmetic."""

import json

import pytest
import torch
from PIL import Image

from vlmodels.grid_vqa.spec import EXAMPLE_QUESTION, SPEC, committed_model_dir, example_image_path, example_sample
from vlmodels.grid_vqa.task import ANSWER_WORDS


@pytest.fixture(scope="module")
def model_and_processor():
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    path = committed_model_dir()
    model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(path)


def test_committed_config_is_a_qwen2vl_sglang_accepts():
    from sglang.srt.configs.model_config import ModelConfig

    path = committed_model_dir()
    raw = json.loads((path / "config.json").read_text())
    assert raw["architectures"] == ["Qwen2VLForConditionalGeneration"]
    config = ModelConfig(str(path), context_length=8192, dtype="float32")
    assert config.is_multimodal and config.num_hidden_layers == SPEC.num_layers >= 4


def test_every_answer_is_one_token(model_and_processor):
    _, processor = model_and_processor
    tok = processor.tokenizer
    assert all(len(tok(word)["input_ids"]) == 1 for word in ANSWER_WORDS)


def test_reference_engine_answers_the_example_and_compresses_it(model_and_processor):
    from radix_ext.reference import generate

    model, processor = model_and_processor
    card = (committed_model_dir() / "README.md").read_text()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": EXAMPLE_QUESTION}]}]
    image = Image.open(example_image_path()).convert("RGB")
    full = generate(model, processor, messages, images=[image], policy="full", budget=1.0, max_new_tokens=2)
    answer = processor.tokenizer.decode(full.tokens, skip_special_tokens=True).strip()
    assert answer == example_sample().answer  # right
    assert f"answer: **{answer}**" in card  # and the model card says so
    assert example_sample().images[0].tobytes() == image.tobytes()  # the shipped PNG is that sample
    squeezed = generate(model, processor, messages, images=[image], policy="vlcache", budget=0.1, max_new_tokens=2)
    assert squeezed.selection.compressed and squeezed.kv_bytes_kept < 0.11 * squeezed.kv_bytes_full


def test_hit_rates_count_the_kept_share_of_the_top_k():
    from bench.hit_rate import hit_rates

    attn = [torch.tensor([0.5, 0.1, 0.3, 0.1]), torch.tensor([0.1, 0.2, 0.3, 0.4])]
    keep = [torch.tensor([0, 2]), torch.tensor([0, 1])]  # layer 0 keeps its top 2; layer 1 keeps its bottom 2
    hits, mass = hit_rates(attn, keep)
    assert hits == [1.0, 0.0]
    assert mass == pytest.approx([0.8, 0.3])
