"""InternVL in its original `internvl_chat` layout, served by SGLang's `InternVLChatModel` (no transformers
class writes this layout, so the files are written here by hand, under the names SGLang's loader maps):

- `vision_model.*`: an InternViT (class token, learned positions, fused `attn.qkv`, layer scales
  `ls1`/`ls2`), which SGLang renames to its `VisionAttention` (`attn.attn.qkv_proj`);
- `mlp1.*`: the pixel-shuffle projector (LayerNorm, Linear, GELU, Linear) over 2 x 2 merged patches;
- `language_model.*`: a Qwen2 LM (InternVL2.5 / 3's small sizes), whose config is `llm_config`.

SGLang 0.5.23's processor cuts every image into 448-px tiles whatever the config says (its `image_size=448`
is hard-coded), up to 12 tiles plus a thumbnail when there is more than one (sglang/srt/multimodal/
processors/internvl.py), and counts `(force_image_size / patch)^2 * downsample_ratio^2` tokens per tile.
The tiny build keeps the 448 px and takes a 28-px patch (InternViT's is 14): 16 x 16 patches, shuffled
to 8 x 8 = 64 tokens per tile. SGLang breaks aspect ties toward more tiles, so any square image is 3 x 3
tiles + thumbnail (640 tokens) and a 2:3 one 2 x 3 + thumbnail (448; service/media/internvl_tiles.py).
Each image is `<image>` in the prompt; SGLang expands it to `<img>` + `<IMG_CONTEXT>` x n + `</img>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmodels.families.base import Family, FamilySpec
from vlmodels.families.llava import QWEN_TEMPLATE
from vlmodels.tiny_qwen2vl import TRAINING_TEXT, train_tokenizer, write_model_folder

IMAGE_TOKEN, IMG_START, IMG_END, IMG_CONTEXT = "<image>", "<img>", "</img>", "<IMG_CONTEXT>"
# <|video_pad|>: what SGLang's processor takes for a video frame's tokens on a Qwen2 LM
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", IMG_START, IMG_END, IMG_CONTEXT, "<|video_pad|>")
TILE, PATCH, DOWNSAMPLE = 448, 28, 0.5
TOKENS_PER_TILE = int((TILE // PATCH) ** 2 * DOWNSAMPLE**2)  # 64


def _vision_weights(spec: FamilySpec, torch) -> dict:
    """InternViT's checkpoint tensors: random matrices and embeddings, LayerNorms at 1 / 0, layer scales at
    1 (InternViT starts them at 0.1; at 1 the random blocks are not damped away)."""
    d, inner, r = spec.vision_hidden_size, 2 * spec.vision_hidden_size, spec.initializer_range
    positions = (TILE // PATCH) ** 2 + 1  # the class token's first
    w = {
        "embeddings.class_embedding": torch.randn(1, 1, d) * r,
        "embeddings.position_embedding": torch.randn(1, positions, d) * r,
        "embeddings.patch_embedding.weight": torch.randn(d, 3, PATCH, PATCH) * r,
        "embeddings.patch_embedding.bias": torch.zeros(d),
    }
    for i in range(spec.vision_depth):
        p = f"encoder.layers.{i}."
        shapes = {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (inner, d), "mlp.fc2": (d, inner)}
        for name, shape in shapes.items():
            w[p + name + ".weight"] = torch.randn(*shape) * r
            w[p + name + ".bias"] = torch.zeros(shape[0])
        for norm in ("norm1", "norm2"):
            w[p + norm + ".weight"], w[p + norm + ".bias"] = torch.ones(d), torch.zeros(d)
        w[p + "ls1"], w[p + "ls2"] = torch.ones(d), torch.ones(d)
    return {"vision_model." + k: v for k, v in w.items()}


def _projector_weights(spec: FamilySpec, torch) -> dict:
    merged = spec.vision_hidden_size * int(1 / DOWNSAMPLE) ** 2  # a 2 x 2 patch block, channels stacked
    h, r = spec.hidden_size, spec.initializer_range
    return {
        "mlp1.0.weight": torch.ones(merged),
        "mlp1.0.bias": torch.zeros(merged),
        "mlp1.1.weight": torch.randn(h, merged) * r,
        "mlp1.1.bias": torch.zeros(h),
        "mlp1.3.weight": torch.randn(h, h) * r,
        "mlp1.3.bias": torch.zeros(h),
    }


def _vision_config(spec: FamilySpec) -> dict:
    """InternViT-300M's config fields (InternVL2.5-1B's), at the spec's sizes."""
    return dict(
        architectures=["InternVisionModel"],
        model_type="intern_vit_6b",
        hidden_size=spec.vision_hidden_size,
        intermediate_size=2 * spec.vision_hidden_size,
        num_hidden_layers=spec.vision_depth,
        num_attention_heads=spec.vision_heads,
        num_channels=3,
        image_size=TILE,
        patch_size=PATCH,
        hidden_act="gelu",
        norm_type="layer_norm",
        layer_norm_eps=1e-6,
        qkv_bias=True,
        qk_normalization=False,
        dropout=0.0,
        attention_dropout=0.0,
        drop_path_rate=0.0,
        initializer_range=spec.initializer_range,
        initializer_factor=1.0,
        use_flash_attn=False,
    )


def build_internvl(out_dir: Path, spec: FamilySpec) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_tokenizer(
        spec.vocab_size, spec.context_length, TRAINING_TEXT, SPECIAL_TOKENS, QWEN_TEMPLATE,
        eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>",
    )  # fmt: skip
    pad, eos = tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = spec.text_sizes() | dict(
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_act="silu",
        use_sliding_window=False,
        tie_word_embeddings=False,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    lm_config = Qwen2Config(**text)
    torch.manual_seed(spec.seed)
    lm = Qwen2ForCausalLM(lm_config).to(torch.float32).eval()
    weights = {"language_model." + k: v.detach().contiguous() for k, v in lm.state_dict().items()}
    weights |= _vision_weights(spec, torch) | _projector_weights(spec, torch)
    config = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "torch_dtype": "float32",
        "vision_config": _vision_config(spec),
        # the LM's fields as transformers writes them, plus what SGLang reads (architectures, rope_theta)
        "llm_config": lm_config.to_dict() | {"architectures": ["Qwen2ForCausalLM"], "rope_theta": 10000.0},
        "force_image_size": TILE,
        "downsample_ratio": DOWNSAMPLE,
        "ps_version": "v2",  # v1 leaves the shuffled grid transposed
        "select_layer": -1,
        "template": "internvl2_5",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,  # what SGLang uses anyway (its processor's IMAGE_MAX_NUM)
        "pad2square": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
    }

    def write(folder: Path) -> None:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(folder)  # no processor: SGLang's tiles the images itself

    return write_model_folder(out_dir, write, INTERNVL.stamp(spec))


INTERNVL = Family(
    "internvl", "InternVL", "InternVLChatModel", "original internvl_chat (Qwen2 LM, InternViT)",
    lambda o, s: build_internvl(o, s), image_marker=IMAGE_TOKEN,
)  # fmt: skip
