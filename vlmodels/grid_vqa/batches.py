"""Samples -> model inputs: the chat prompt with the one-word answer appended, labels on the answer.

Used by training (teacher-forced loss) and by the in-process evaluation: because every answer is one
token, the argmax at the answer position is exactly the first greedy token.
"""

from __future__ import annotations

import torch

from vlmodels.grid_vqa.task import COLOURS, SHAPES, Sample


def prompt_text(processor, sample: Sample) -> str:
    return processor.apply_chat_template(sample.messages(), add_generation_prompt=True)


def encode(processor, samples: list[Sample], follow_ups: list[list[tuple[str, str, str]]] | None = None) -> dict:
    """Right-padded batch of `prompt + answer + <|im_end|>` (then, in training, `follow_ups[i]` as later
    chat turns about the same images). `labels` are -100 but for each answer and its end token;
    `answer_pos` is the position whose logits predict the first (evaluated) answer."""
    tok = processor.tokenizer
    texts = []
    for i, s in enumerate(samples):
        text = prompt_text(processor, s) + s.answer + "<|im_end|>"
        for _, question, answer in follow_ups[i] if follow_ups else ():
            text += f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>"
        texts.append(text)
    images = [img for s in samples for img in s.images]
    tok.padding_side = "right"
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    ids = batch["input_ids"]
    # every answer follows "<|im_start|>assistant\n": find that marker's last token, label the next two
    marker = tok("<|im_start|>assistant\n")["input_ids"]
    n = len(marker)
    windows = ids.unfold(1, n, 1)  # [B, T-n+1, n]
    is_marker = (windows == torch.tensor(marker)).all(-1)
    ends = torch.zeros_like(ids, dtype=torch.bool)
    ends[:, n - 1 :] = is_marker
    labels = torch.full_like(ids, -100)
    answer_at = torch.zeros_like(ends)
    answer_at[:, 1:] = ends[:, :-1]
    end_at = torch.zeros_like(ends)
    end_at[:, 1:] = answer_at[:, :-1]
    labels[answer_at | end_at] = ids[answer_at | end_at]
    batch["labels"] = labels
    first = ends.float().argmax(1)  # the first marker's end: its logits predict the first answer
    batch["answer_pos"] = first
    batch["answer_ids"] = ids[torch.arange(len(samples)), first + 1]
    return batch


def answer_predictions(model, batch: dict) -> torch.Tensor:
    """Greedy first answer token per sample (no labels passed: no loss computed)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "answer_pos", "answer_ids")}
    logits = model(**inputs).logits
    return logits[torch.arange(logits.shape[0]), batch["answer_pos"]].argmax(-1)


def cell_labels(samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per merged visual token of the batch (every image in order, cells row-major, which is the order
    Qwen2-VL's processor emits merged tokens for an image sized to whole cells): the shape index
    (0 = empty, 1.. = `SHAPES`) and colour index (0 = empty, 1.. = `COLOURS`) drawn in that cell.

    Training's auxiliary target: it teaches the vision tower to see each cell before the LM has learned
    where to look, which question-answer loss alone did not (the answers' gradient to pixels is ~1e-5)."""
    shapes, colours = [], []
    for s in samples:
        for image, (rows, cols) in enumerate(s.grids):
            shape = torch.zeros(rows * cols, dtype=torch.long)
            colour = torch.zeros(rows * cols, dtype=torch.long)
            for o in s.objects:
                if o.image == image:
                    shape[o.row * cols + o.col] = SHAPES.index(o.shape) + 1
                    colour[o.row * cols + o.col] = list(COLOURS).index(o.colour) + 1
            shapes.append(shape)
            colours.append(colour)
    return torch.cat(shapes), torch.cat(colours)
