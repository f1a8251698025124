"""Gemma 3: an HF-format folder served by SGLang's `Gemma3ForConditionalGeneration`. A SigLIP tower
sees every image at one fixed size and the projector pools it to `mm_tokens_per_image` tokens, so an
image always costs the same; the LM interleaves sliding-window and global layers (Gemma 3's 5:1)."""

from __future__ import annotations

from pathlib import Path

from vlmodels.families.base import Family, FamilySpec, rename_weights
from vlmodels.tiny_qwen2vl import TRAINING_TEXT, train_tokenizer, write_model_folder

BOI, EOI, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", BOI, EOI, IMAGE_TOKEN)
IMAGE_SIZE, PATCH = 224, 14  # 16 x 16 patches ...
TOKENS_PER_IMAGE = 64  # ... average-pooled 2 x 2 to 8 x 8 tokens

# Gemma 3's chat form: a leading system message joins the first user turn; the assistant is "model";
# each image is one <start_of_image> (the processor expands it to the image's soft tokens).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set first = namespace(prefix='') %}"
    "{% if messages[0]['role'] == 'system' %}{% set first.prefix = messages[0]['content'] + '\n\n' %}"
    "{% set messages = messages[1:] %}{% endif %}"
    "{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{% if loop.first %}{{ first.prefix }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}<start_of_image>"
    "{% elif 'text' in item %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_gemma3(out_dir: Path, spec: FamilySpec) -> Path:
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    tokenizer = train_tokenizer(
        spec.vocab_size, spec.context_length, TRAINING_TEXT, SPECIAL_TOKENS, CHAT_TEMPLATE,
        eos_token="<end_of_turn>", pad_token="<pad>", bos_token="<bos>",
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN},
    )  # fmt: skip
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = spec.text_sizes() | dict(
        head_dim=spec.head_dim,
        query_pre_attn_scalar=spec.head_dim,
        # shorter than the test prompts (~90 and ~160 tokens), so the local layers' windows cut them
        sliding_window=48,
        layer_types=["sliding_attention"] * (spec.num_layers - 1) + ["full_attention"],
        pad_token_id=ids["<pad>"],
        eos_token_id=ids["<end_of_turn>"],
        bos_token_id=ids["<bos>"],
    )
    vision = spec.vit_sizes(spec.vision_depth) | dict(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids[BOI], eoi_token_index=ids[EOI], image_token_index=ids[IMAGE_TOKEN],
        initializer_range=spec.initializer_range,
    )  # fmt: skip
    torch.manual_seed(spec.seed)
    model = Gemma3ForConditionalGeneration(config).to(torch.float32).eval()
    image_processor = Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
        image_seq_length=TOKENS_PER_IMAGE,
    )  # fmt: skip

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        # Google's checkpoints (and SGLang's SiglipVisionModel) keep the tower under `vision_model`
        rename_weights(folder / "model.safetensors", "vision_tower.", "vision_tower.vision_model.")

    return write_model_folder(out_dir, write, GEMMA3.stamp(spec))


GEMMA3 = Family(
    "gemma3", "Gemma 3", "Gemma3ForConditionalGeneration", "HF", lambda o, s: build_gemma3(o, s),
    image_marker=BOI, version=3,
)  # fmt: skip
