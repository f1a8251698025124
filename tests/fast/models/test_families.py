"""The tiny family builds: deterministic, offline, with the family's tokens and template, and the
gateway's visual-token estimate (service/media/visual_tokens.py) equal to what each family's own
processor makes of an image."""

import hashlib

import pytest
import torch
from PIL import Image

from service.media.visual_tokens import VisualTokenCost
from vlmodels.families import FAMILIES, FamilySpec, ensure_family
from vlmodels.families.internvl import IMG_CONTEXT, IMG_END, IMG_START, TOKENS_PER_TILE

NAMES = list(FAMILIES)


def _digests(folder):
    """File digests, the folder's own path left out (original LLaVA names its tower folder by path)."""
    own = str(folder.resolve()).encode()
    return {
        p.name: hashlib.sha256(p.read_bytes().replace(own, b"")).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    return request.param, ensure_family(request.param)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_byte_identical_files(tmp_path, name):
    build = FAMILIES[name].build
    a, b = build(tmp_path / "a", FamilySpec()), build(tmp_path / "b", FamilySpec())
    c = build(tmp_path / "c", FamilySpec(seed=1))
    da, db, dc = _digests(a), _digests(b), _digests(c)
    assert da == db and "model.safetensors" in da
    assert da["model.safetensors"] != dc["model.safetensors"]


def test_chat_template_marks_each_image(family):
    from transformers import AutoProcessor

    name, model_dir = family
    processor = AutoProcessor.from_pretrained(model_dir)  # InternVL's folder has none: its tokenizer
    tokenizer = getattr(processor, "tokenizer", processor)
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Hi"}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.count(FAMILIES[name].image_marker) == 2
    assert tokenizer.unk_token_id not in tokenizer(prompt)["input_ids"]


@pytest.mark.parametrize("size", [(448, 448), (224, 336), (640, 480), (1000, 37), (29, 55), (2000, 1500)])
def test_visual_token_estimate_equals_the_processor(family, size):
    """The 413 bound counts what the family's processor really produces (Qwen3-VL: 32-px tokens; Gemma 3:
    a fixed number per image)."""
    from transformers import AutoConfig, AutoProcessor

    name, model_dir = family
    cost = VisualTokenCost.from_model_dir(model_dir)
    if cost.engine_counts:  # original LLaVA: SGLang's anyres tiling counts, not the HF processor
        assert FAMILIES[name].hf_format.startswith("original LLaVA") and cost.check([], [], 1) == 0
        return
    if cost.tokens_per_tile is not None:  # InternVL: no HF processor; SGLang's own tiling is the reference
        from sglang.srt.multimodal.processors.internvl import InternVLProcessor

        tiles = InternVLProcessor.dynamic_preprocess(
            torch.zeros(3, size[1], size[0]),
            image_size=448,
            max_num=InternVLProcessor.IMAGE_MAX_NUM,
            use_thumbnail=True,
        )
        assert cost.image(*size) == tiles.shape[0] * TOKENS_PER_TILE
        return
    processor = AutoProcessor.from_pretrained(model_dir)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}], add_generation_prompt=True
    )
    ids = processor(text=[prompt], images=[Image.new("RGB", size)], return_tensors="pt")["input_ids"][0]
    expected = int((ids == AutoConfig.from_pretrained(model_dir).image_token_id).sum())
    assert cost.image(*size) == expected


def test_internvl_has_its_image_tokens_and_sglangs_tokens_per_tile():
    """SGLang finds each image as `<img>` + `<IMG_CONTEXT>` x n + `</img>` by token id, and counts
    `(force_image_size / patch)^2 x downsample_ratio^2` tokens per tile (InternVLChatModel.num_image_token)."""
    import json

    from transformers import AutoTokenizer

    model_dir = ensure_family("internvl")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(tokenizer(IMG_START + IMG_CONTEXT + IMG_END)["input_ids"]) == 3
    config = json.loads((model_dir / "config.json").read_text())
    side = config["force_image_size"] // config["vision_config"]["patch_size"]
    assert (
        side**2 * config["downsample_ratio"] ** 2
        == TOKENS_PER_TILE
        == VisualTokenCost.from_model_dir(model_dir).tokens_per_tile
    )
    assert config["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
