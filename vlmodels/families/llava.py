"""LLaVA in the original LLaVA checkpoint format, the format SGLang 0.5.23 serves it in (the HF-format
`LlavaNextForConditionalGeneration` / `LlavaOnevisionForConditionalGeneration` are no SGLang entry class):

- LLaVA-NeXT (LLaVA-1.6, the VL-Cache paper's family; liuhaotian's `llava-v1.6-mistral-7b`): a Mistral LM
  and a CLIP tower, `anyres` tiles, served by `LlavaMistralForCausalLM`;
- LLaVA-OneVision (lmms-lab's `llava-onevision-qwen2-*`): a Qwen2 LM and a SigLIP tower, `anyres_max_9`,
  served by `LlavaQwenForCausalLM`.

One folder holds the LM with the projector (`model.mm_projector.*`) and `image_newline`, the LM's fields at
the top level of the config, and the tower in a sub-folder that `mm_vision_tower` names by absolute path
(SGLang loads it by path and picks CLIP or SigLIP from the name). SGLang casts pixels and the tower to
float16 whatever --dtype says (llava.py load_weights), and its projector then fails on a float32 LM
("expected m1 and m2 to have the same dtype"): these families are served in float16. With more than one
image SGLang pads each to one tile (`pad`, 64 tokens here); one image alone gets its anyres tiles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vlmodels.families.base import Family, FamilySpec
from vlmodels.tiny_qwen2vl import TRAINING_TEXT, train_tokenizer, write_model_folder

IMAGE_TOKEN = "<image>"
IMAGE_SIZE, PATCH = 112, 14  # one tile = 8 x 8 = 64 tokens
TOWER_DTYPE = "float16"
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}<image>\n"
    "{% elif 'text' in item %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
)
# Qwen's chat form with LLaVA's one <image> per image (SGLang pads it to the image's tokens).
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n" + _CONTENT + "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# LLaVA-1.6 Mistral's form ("mistral_instruct"): [INST] ... [/INST], the answer closed by </s>.
MISTRAL_TEMPLATE = (
    "<s>{% for message in messages %}{% if message['role'] == 'assistant' %}" + _CONTENT + "</s>"
    "{% else %}[INST] " + _CONTENT + " [/INST]{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class _Variant:
    arch: str
    lm: str  # transformers' config / causal-LM class prefix: "Qwen2", "Mistral"
    tower: str  # "siglip" or "clip": SGLang picks the tower class from the folder name
    special_tokens: tuple[str, ...]
    chat_template: str
    bos: str
    eos: str
    pad: str
    aspect_ratio: str
    pinpoints: tuple[tuple[int, int], ...]
    select_feature: str  # "patch": CLIP's class token dropped (SGLang forces SigLIP to "full")
    lm_fields: tuple[tuple[str, object], ...] = ()


def _pinpoints(shapes) -> tuple[tuple[int, int], ...]:
    return tuple((IMAGE_SIZE * a, IMAGE_SIZE * b) for a, b in shapes)


ONEVISION = _Variant(
    "LlavaQwenForCausalLM", "Qwen2", "siglip", ("<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN),
    QWEN_TEMPLATE, "<|endoftext|>", "<|im_end|>", "<|endoftext|>", "anyres_max_9",
    _pinpoints((a, b) for a in (1, 2, 3) for b in (1, 2, 3)), "patch",
    (("attention_dropout", 0.0), ("use_sliding_window", False), ("rope_theta", 10000.0)),
)  # fmt: skip
NEXT = _Variant(
    "LlavaMistralForCausalLM", "Mistral", "clip", ("<unk>", "<s>", "</s>", IMAGE_TOKEN),
    MISTRAL_TEMPLATE, "<s>", "</s>", "<unk>", "anyres",
    _pinpoints(((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))), "patch",  # llava-v1.6's grid at a third the size
    (("sliding_window", None), ("rope_theta", 1000000.0)),
)  # fmt: skip


def _build(out_dir: Path, spec: FamilySpec, v: _Variant, family: Family) -> Path:
    import torch
    import transformers
    from safetensors.torch import save_file

    tower_cls = {"siglip": "Siglip", "clip": "CLIP"}[v.tower]
    tower_config = getattr(transformers, f"{tower_cls}VisionConfig")
    out_dir = Path(out_dir).resolve()
    tokenizer = train_tokenizer(
        spec.vocab_size, spec.context_length, TRAINING_TEXT, v.special_tokens, v.chat_template,
        eos_token=v.eos, pad_token=v.pad, bos_token=v.bos,
    )  # fmt: skip
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in v.special_tokens}
    text = spec.text_sizes() | dict(
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=ids[v.bos],
        eos_token_id=ids[v.eos],
        pad_token_id=ids[v.pad],
    )
    vision = tower_config(
        **spec.vit_sizes(spec.vision_depth + 1),  # LLaVA reads the second-to-last layer
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        **({"vision_use_head": False} if v.tower == "siglip" else {}),
    )
    torch.manual_seed(spec.seed)
    lm_config = getattr(transformers, f"{v.lm}Config")(**text)
    lm = getattr(transformers, f"{v.lm}ForCausalLM")(lm_config).to(torch.float32).eval()
    tower = getattr(transformers, f"{tower_cls}VisionModel")(vision).to(torch.float32).eval()
    weights = {k: w.contiguous() for k, w in lm.state_dict().items()}
    projector = [
        torch.nn.Linear(vision.hidden_size, spec.hidden_size),
        torch.nn.Linear(spec.hidden_size, spec.hidden_size),
    ]
    for i, layer in zip((0, 2), projector, strict=True):  # mlp2x_gelu: Linear, GELU, Linear
        weights[f"model.mm_projector.{i}.weight"] = layer.weight.detach().contiguous()
        weights[f"model.mm_projector.{i}.bias"] = layer.bias.detach().contiguous()
    weights["model.image_newline"] = torch.randn(spec.hidden_size) * spec.initializer_range
    tower_dir = out_dir / f"{v.tower}-vision-tower"
    config = (
        text
        | dict(v.lm_fields)
        | {
            "hidden_act": "silu",  # written out as the released configs do: SGLang reads them from the top level
            "architectures": [v.arch],
            "model_type": "llava",  # the released "llava_mistral" / "llava_qwen" are no transformers config type
            "torch_dtype": TOWER_DTYPE,
            "image_token_index": ids[IMAGE_TOKEN],
            "image_aspect_ratio": v.aspect_ratio,
            "image_grid_pinpoints": [list(p) for p in v.pinpoints],
            "mm_hidden_size": vision.hidden_size,
            "mm_patch_merge_type": "spatial_unpad",
            "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_feature": v.select_feature,
            "mm_vision_select_layer": -2,
            "mm_vision_tower": str(tower_dir),
        }
    )
    if v.tower == "siglip":
        image_processor = transformers.SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    else:
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )

    def write(folder: Path) -> None:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tower.save_pretrained(folder / tower_dir.name, safe_serialization=True)
        image_processor.save_pretrained(folder / tower_dir.name)
        transformers.LlavaProcessor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=v.chat_template,
            patch_size=PATCH, image_token=IMAGE_TOKEN,
        ).save_pretrained(folder)  # fmt: skip

    return write_model_folder(out_dir, write, family.stamp(spec))  # built in place: the tower path holds


LLAVA_ONEVISION = Family(
    "llava_onevision", "LLaVA-OneVision", ONEVISION.arch, "original LLaVA (Qwen2 LM, SigLIP tower by path)",
    lambda o, s: _build(o, s, ONEVISION, LLAVA_ONEVISION), image_marker=IMAGE_TOKEN, version=3, dtype=TOWER_DTYPE,
)  # fmt: skip
LLAVA_NEXT = Family(
    "llava_next", "LLaVA-NeXT", NEXT.arch, "original LLaVA (Mistral LM, CLIP tower by path)",
    lambda o, s: _build(o, s, NEXT, LLAVA_NEXT), image_marker=IMAGE_TOKEN, dtype=TOWER_DTYPE,
)  # fmt: skip
