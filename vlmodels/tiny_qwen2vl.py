"""A tiny Qwen2-VL built offline and deterministically: the random-weight model of the tests and of some
benchmarks (the served default is the trained grid-VQA model, `models/grid-vqa/`).

Nothing is downloaded. The weights are random (seeded), the tokenizer is a byte-level BPE trained on a
few sentences, and the processor is sized so that compression has real work: one image gives up to
256 visual tokens, and the context holds 8192 tokens (several images or a video fit).
Same seed -> byte-identical files. `ensure_tiny_qwen2vl()` builds into the cache folder on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_pad|>",
)

# Qwen2-VL's own chat template (the form its processors and SGLang expect): each image becomes
# <|vision_start|><|image_pad|><|vision_end|>, each video the same with <|video_pad|>.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the BPE tokenizer is trained on: enough to learn common English merges, nothing more.
TRAINING_TEXT = (
    "Describe the image in one sentence.",
    "What is in this picture? There is a red square on a white background.",
    "The video shows a ball moving from the left to the right of the frame.",
    "Answer the question about the document: what is the total amount?",
    "A cat sits on a mat next to a dog. The sky is blue and the grass is green.",
    "How many objects are there? Count them and give the number.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "Compare the two images and say what changed between them.",
    "You are a helpful assistant. Please answer briefly and precisely.",
)

PATCH = 14
MERGE = 2
TOKEN_PIXELS = (PATCH * MERGE) ** 2  # one visual token covers a 28x28 pixel area


@dataclass(frozen=True)
class TinyQwen2VLSpec:
    """Everything that determines the built files; its hash names the cache folder's stamp."""

    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_embed_dim: int = 64
    vision_heads: int = 4
    context_length: int = 8192
    max_visual_tokens_per_image: int = 256
    min_visual_tokens_per_image: int = 4
    initializer_range: float = 0.1  # larger than 0.02 so random attention is not near-uniform

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def digest(self) -> str:
        return spec_digest(self)


def spec_digest(spec) -> str:
    """A spec dataclass's hash (it names the build's cache stamp): every field, sorted."""
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:16]


def text_sizes(spec) -> dict:
    """The text model's size fields, from a spec with this module's field names (the families' too)."""
    return dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.context_length,
        initializer_range=spec.initializer_range,
    )


def default_cache_dir() -> Path:
    root = os.environ.get("VLCACHE_CACHE_DIR") or Path(__file__).resolve().parents[1] / ".cache"
    return Path(root) / "models" / "tiny-qwen2vl"


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (temporal, height, width) like Qwen2-VL's 16/24/24."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def train_tokenizer(
    vocab_size: int,
    context_length: int,
    training_text=TRAINING_TEXT,
    special_tokens=SPECIAL_TOKENS,
    chat_template: str = CHAT_TEMPLATE,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    **named_tokens,
):
    """A byte-level BPE of `vocab_size` ids trained on `training_text`, `special_tokens` appended last
    (the one tokenizer recipe of every tiny model: vlmodels/families/ passes each family's tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text, trainer=trainer)
    tok.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        chat_template=chat_template,
        model_max_length=context_length,
        **named_tokens,
    )


def _config(spec: TinyQwen2VLSpec, tokenizer):
    from transformers import Qwen2VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _mrope_section(spec.head_dim)}
    text = text_sizes(spec) | dict(
        rms_norm_eps=1e-6,
        rope_parameters=rope,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=spec.vision_depth,
        embed_dim=spec.vision_embed_dim,
        hidden_size=spec.hidden_size,
        num_heads=spec.vision_heads,
        mlp_ratio=2,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        temporal_patch_size=2,
        initializer_range=spec.initializer_range,
    )
    return (
        Qwen2VLConfig(
            text_config=text,
            vision_config=vision,
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        ),
        text,
        rope,
    )


def _patch_config_for_sglang(path: Path, text: dict, rope: dict) -> None:
    """SGLang 0.5.23 reads a few keys transformers 5 no longer writes at the top level."""
    cfg = json.loads(path.read_text())
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "max_position_embeddings",
        "rms_norm_eps",
    ):
        cfg[key] = text[key]
    cfg["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["vision_config"]["in_chans"] = 3
    cfg["vision_config"]["spatial_patch_size"] = PATCH
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build_tiny_qwen2vl(out_dir: str | Path, spec: TinyQwen2VLSpec = TinyQwen2VLSpec()) -> Path:
    """Write model, tokenizer, processor and chat template to `out_dir` (replaced if present)."""
    model, processor = new_qwen2vl(spec)
    return save_qwen2vl(model, processor, out_dir, spec)


def new_qwen2vl(spec: TinyQwen2VLSpec, training_text=TRAINING_TEXT):
    """A seeded, untrained Qwen2-VL of `spec` and its processor (tokenizer trained on `training_text`)."""
    import torch
    from transformers import (
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = train_tokenizer(spec.vocab_size, spec.context_length, training_text)
    config, _, _ = _config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32).eval()

    pixels = dict(
        min_pixels=spec.min_visual_tokens_per_image * TOKEN_PIXELS,
        max_pixels=spec.max_visual_tokens_per_image * TOKEN_PIXELS,
    )
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def save_qwen2vl(model, processor, out_dir: str | Path, spec: TinyQwen2VLSpec, stamp: dict | None = None) -> Path:
    """Save `model` + `processor` with SGLang's config keys into `out_dir` (atomically replaced);
    `stamp` (default: the spec) goes to vlcache_spec.json."""
    _, text, rope = _config(spec, processor.tokenizer)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        _patch_config_for_sglang(folder / "config.json", text, rope)

    return write_model_folder(out_dir, write, stamp or asdict(spec))


def write_model_folder(out_dir: str | Path, write, stamp: dict) -> Path:
    """`write(folder)` into a temporary folder, `stamp` to its vlcache_spec.json, then the folder replaces
    `out_dir` at once (a half-written model is never seen under `out_dir`)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        write(tmp)
        (tmp / "vlcache_spec.json").write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def is_built(out_dir: Path, stamp: dict) -> bool:
    """True when `out_dir` holds a model built from `stamp`."""
    file = out_dir / "vlcache_spec.json"
    return file.exists() and json.loads(file.read_text()) == stamp and (out_dir / "config.json").exists()


def ensure_tiny_qwen2vl(out_dir: str | Path | None = None, spec: TinyQwen2VLSpec = TinyQwen2VLSpec()) -> Path:
    """Return the model folder, building it first if it is missing or was built from another spec."""
    out_dir = Path(out_dir) if out_dir else default_cache_dir()
    if is_built(out_dir, asdict(spec)):
        return out_dir
    print(f"[vlcache] building the tiny Qwen2-VL (seed {spec.seed}) into {out_dir} ...", flush=True)
    return build_tiny_qwen2vl(out_dir, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="target folder (default: the project cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    args = parser.parse_args()
    spec = TinyQwen2VLSpec(seed=args.seed)
    out = Path(args.out) if args.out else default_cache_dir()
    path = build_tiny_qwen2vl(out, spec) if args.force else ensure_tiny_qwen2vl(out, spec)
    print(path)


if __name__ == "__main__":
    main()
