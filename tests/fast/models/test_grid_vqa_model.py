"""The committed grid-VQA model (`models/grid-vqa/`): it loads in transformers, answers held-out
one-region questions from the image (and falls to chance when the image is blanked), and its example
image is the README's example, answered right."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlmodels.grid_vqa.batches import answer_predictions, cell_labels, encode
from vlmodels.grid_vqa.eval_sets import SETTINGS, eval_samples
from vlmodels.grid_vqa.spec import committed_model_dir, example_image_path, example_sample
from vlmodels.grid_vqa.task import ONE_REGION, make_sample


@pytest.fixture(scope="module")
def model_and_processor():
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    path = committed_model_dir()
    return Qwen2VLForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def _accuracy(model, processor, samples) -> float:
    with torch.no_grad():
        batch = encode(processor, samples)
        return (answer_predictions(model, batch) == batch["answer_ids"]).float().mean().item()


def _one_region(blank=False):
    # Held-out seeds (eval_sets), 1 and 2 images of 10x10 cells.
    return [s for s in eval_samples(16, SETTINGS[:2], blank=blank) if s.qtype in ONE_REGION]


def test_one_region_questions_are_answered_from_the_image(model_and_processor):
    model, processor = model_and_processor
    assert _accuracy(model, processor, _one_region()) >= 0.9
    # The same questions over blank images: the text alone does not give the answer.
    assert _accuracy(model, processor, _one_region(blank=True)) <= 0.5


def test_the_example_image_is_the_readme_example_and_is_answered(model_and_processor):
    model, processor = model_and_processor
    sample = example_sample()
    shipped = np.asarray(Image.open(example_image_path()).convert("RGB"))
    assert np.array_equal(shipped, np.asarray(sample.images[0]))
    batch = encode(processor, [sample])
    answer = processor.tokenizer.decode(answer_predictions(model, batch))
    assert answer == sample.answer


def test_cell_labels_follow_the_processors_visual_token_order(model_and_processor):
    """The trainer's per-cell target lines up with the merged visual tokens: one label per image token,
    and a token's 2x2 patches hold drawn pixels exactly where its label says a shape is."""
    _, processor = model_and_processor
    sample = make_sample(3, "colour", 2, (4, 6))
    shapes, colours = cell_labels([sample])
    batch = encode(processor, [sample])
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert shapes.numel() == colours.numel() == int((batch["input_ids"] == image_token).sum()) == 48
    assert int((shapes > 0).sum()) == len(sample.objects) == int((colours > 0).sum())
    # merged token -> its 4 patches (the 2x2 merge) -> RGB planes; an empty cell is flat in every plane
    patches = batch["pixel_values"].view(48, 4, 3, -1)
    drawn = patches.std(dim=3).amax(dim=(1, 2)) > 1e-3
    assert torch.equal(drawn, shapes > 0)
