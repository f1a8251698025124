"""LLaVA-OneVision in the original LLaVA checkpoint format (lmms-lab's `llava-onevision-qwen2-*`), the
format SGLang 0.5.23 serves it in: `LlavaQwenForCausalLM` (HF-format `LlavaOnevisionForConditionalGeneration`
is no SGLang entry class). One folder holds a Qwen2 LM with the projector (`model.mm_projector.*`) and
`image_newline` at the top level of the config, and a SigLIP tower in a sub-folder that `mm_vision_tower`
names by absolute path (SGLang loads it by path; the name must contain "siglip")."""

from __future__ import annotations

import json
from pathlib import Path

from vlmodels.families.base import Family, FamilySpec
from vlmodels.tiny_qwen2vl import TRAINING_TEXT, train_tokenizer, write_model_folder

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN)
IMAGE_SIZE, PATCH = 112, 14  # one tile = 8 x 8 = 64 tokens
TOWER = "siglip-vision-tower"
# SGLang 0.5.23 loads a tower named by path in float16 whatever --dtype says (llava.py load_weights), and
# its projector then fails on a float32 LM ("expected m1 and m2 to have the same dtype"): serve in float16.
TOWER_DTYPE = "float16"

# Qwen's chat form with LLaVA's one <image> per image (SGLang pads it to the image's tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}<image>\n"
    "{% elif 'text' in item %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_llava_onevision(out_dir: Path, spec: FamilySpec) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import (
        LlavaProcessor,
        Qwen2Config,
        Qwen2ForCausalLM,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    out_dir = Path(out_dir).resolve()
    tokenizer = train_tokenizer(spec.vocab_size, spec.context_length, TRAINING_TEXT, SPECIAL_TOKENS, CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = spec.text_sizes() | dict(
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = SiglipVisionConfig(
        **spec.siglip_sizes(spec.vision_depth + 1),  # LLaVA reads the second-to-last layer
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        vision_use_head=False,
    )
    torch.manual_seed(spec.seed)
    lm = Qwen2ForCausalLM(Qwen2Config(**text)).to(torch.float32).eval()
    tower = SiglipVisionModel(vision).to(torch.float32).eval()
    weights = {k: v.contiguous() for k, v in lm.state_dict().items()}
    projector = [
        torch.nn.Linear(vision.hidden_size, spec.hidden_size),
        torch.nn.Linear(spec.hidden_size, spec.hidden_size),
    ]
    for i, layer in zip((0, 2), projector, strict=True):  # mlp2x_gelu: Linear, GELU, Linear
        weights[f"model.mm_projector.{i}.weight"] = layer.weight.detach().contiguous()
        weights[f"model.mm_projector.{i}.bias"] = layer.bias.detach().contiguous()
    weights["model.image_newline"] = torch.randn(spec.hidden_size) * spec.initializer_range
    pinpoints = [[IMAGE_SIZE * a, IMAGE_SIZE * b] for a in (1, 2, 3) for b in (1, 2, 3)]
    config = text | {
        "hidden_act": "silu",  # written out as lmms-lab's configs do: SGLang reads them from the top level
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava",
        "torch_dtype": "float32",
        "image_token_index": ids[IMAGE_TOKEN],
        "image_aspect_ratio": "anyres_max_9",
        "image_grid_pinpoints": pinpoints,
        "mm_hidden_size": vision.hidden_size,
        "mm_patch_merge_type": "spatial_unpad",
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": str(out_dir / TOWER),
    }
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})

    def write(folder: Path) -> None:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tower.save_pretrained(folder / TOWER, safe_serialization=True)
        image_processor.save_pretrained(folder / TOWER)
        LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                       patch_size=PATCH, image_token=IMAGE_TOKEN).save_pretrained(folder)  # fmt: skip

    return write_model_folder(out_dir, write, LLAVA_ONEVISION.stamp(spec))  # built in place: the tower path holds


LLAVA_ONEVISION = Family(
    "llava_onevision", "LLaVA-OneVision", "LlavaQwenForCausalLM", "original LLaVA (Qwen2 LM, SigLIP tower by path)",
    lambda o, s: build_llava_onevision(o, s), image_marker=IMAGE_TOKEN, version=2,
    dtype=TOWER_DTYPE,
)  # fmt: skip
