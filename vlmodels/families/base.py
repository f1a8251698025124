"""What a family builder is: a name, the SGLang class that serves it, and `build(out_dir, spec)`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vlmodels.tiny_qwen2vl import spec_digest, text_sizes


@dataclass(frozen=True)
class FamilySpec:
    """The sizes every family shares (each builder maps them onto its own config classes)."""

    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_heads: int = 4
    context_length: int = 8192
    max_visual_tokens_per_image: int = 256
    min_visual_tokens_per_image: int = 4
    initializer_range: float = 0.1  # larger than 0.02 so random attention is not near-uniform
    attention_head_dim: int = 0  # 0: hidden_size / num_heads; else a real model's head size over a small width

    @property
    def head_dim(self) -> int:
        return self.attention_head_dim or self.hidden_size // self.num_heads

    def digest(self) -> str:
        return spec_digest(self)

    def text_sizes(self) -> dict:
        """The text model's config fields every family sets the same way (each adds its own)."""
        return text_sizes(self) | ({"head_dim": self.attention_head_dim} if self.attention_head_dim else {})

    def vit_sizes(self, num_layers: int) -> dict:
        """A ViT vision tower's size fields, as SigLIP and CLIP name them (Gemma 3, LLaVA)."""
        return dict(
            hidden_size=self.vision_hidden_size,
            intermediate_size=2 * self.vision_hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=self.vision_heads,
        )


@dataclass(frozen=True)
class Family:
    """One VLM family: `build(out_dir, spec)` writes a loadable model folder and returns it."""

    name: str  # the registry key and cache folder: "qwen2_5_vl"
    title: str  # "Qwen2.5-VL"
    sglang_class: str  # SGLang's entry class that serves the build
    hf_format: str  # what the folder is: "HF Qwen2_5_VLForConditionalGeneration"
    build: Callable[[Path, FamilySpec], Path]
    image_marker: str = "<|vision_start|><|image_pad|><|vision_end|>"  # what the chat template writes per image
    version: int = 1  # bumped when the builder's output changes for the same spec
    dtype: str = "float32"  # what SGLang serves it in (--dtype)

    def stamp(self, spec: FamilySpec) -> dict:
        return {"family": self.name, "version": self.version, "spec": asdict(spec)}


def patch_config(path: Path, **top_level) -> None:
    """Set top-level keys of a saved config.json that SGLang 0.5.23 reads where transformers 5 no longer
    writes them (it moved them under text_config)."""
    cfg = json.loads(path.read_text())
    cfg.update(top_level)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def rename_weights(path: Path, old_prefix: str, new_prefix: str) -> None:
    """Rename the keys of a saved single-file safetensors checkpoint that start with `old_prefix`: where
    transformers 5 saves its own module layout and SGLang 0.5.23 loads the released checkpoints' names."""
    from safetensors.torch import load_file, save_file

    weights = load_file(path)
    renamed = {(new_prefix + k[len(old_prefix) :] if k.startswith(old_prefix) else k): v for k, v in weights.items()}
    save_file(renamed, str(path), metadata={"format": "pt"})
