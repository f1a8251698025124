"""The grid-VQA model: a small Qwen2-VL (6 LM layers) trained on `vlmodels.grid_vqa.task`.

The architecture comes from `vlmodels.tiny_qwen2vl` (same config keys SGLang needs, same chat
template); only the sizes and the tokenizer's training text (the task's words) differ. The trained
files are committed in `models/grid-vqa/`; nothing is trained at serve time.
"""

from __future__ import annotations

from pathlib import Path

from vlmodels.grid_vqa.task import vocabulary_text
from vlmodels.tiny_qwen2vl import TinyQwen2VLSpec, new_qwen2vl

MODEL_NAME = "grid-vqa"
SPEC = TinyQwen2VLSpec(
    seed=0,
    vocab_size=512,
    hidden_size=128,
    num_layers=6,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=384,
    vision_depth=1,
    vision_embed_dim=64,
    vision_heads=4,
    context_length=8192,
    max_visual_tokens_per_image=256,
    min_visual_tokens_per_image=4,
    initializer_range=0.02,
)


def committed_model_dir() -> Path:
    """`models/grid-vqa/` in the repository: the trained weights, tokenizer, processor, model card."""
    return Path(__file__).resolve().parents[2] / "models" / MODEL_NAME


def embedded_model_dir() -> Path:
    """The model `vlcache-serve` serves when none is given: the committed folder, which must exist."""
    path = committed_model_dir()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} holds no model: it is committed; retrain it with `make train-model`")
    return path


def example_image_path() -> Path:
    return committed_model_dir() / "example.png"


def untrained_model(spec: TinyQwen2VLSpec = SPEC):
    """The seeded starting point of training: (model, processor) with the task-word tokenizer."""
    return new_qwen2vl(spec, training_text=vocabulary_text())


EXAMPLE_QUESTION = "List the red shapes."


def example_sample():
    """The README's and the banner's example: a held-out 10x10 grid with 3 red shapes, read out (the
    first such seed from 900000, far from training seeds)."""
    from vlmodels.grid_vqa.task import make_sample

    seed = 900_000
    while len((sample := make_sample(seed, "list", 1, (10, 10))).answer.split(",")) != 3:
        seed += 1
    assert sample.question == EXAMPLE_QUESTION
    return sample


def write_example(out_dir: Path) -> Path:
    """`example.png` of `example_sample()` for the README exchange."""
    path = Path(out_dir) / "example.png"
    example_sample().images[0].save(path)
    return path
