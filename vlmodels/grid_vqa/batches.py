"""Samples -> model inputs: the chat prompt with its answer sentence appended, labels on every answer.

Used by training (teacher-forced loss) and by the in-process evaluation. Greedy decoding reproduces
an answer exactly iff the argmax is right at every one of its positions under teacher forcing, so
`first_answer_correct` is the greedy exact match without generating.
"""

from __future__ import annotations

import torch

from vlmodels.grid_vqa.task import COLOURS, SHAPES, Sample


def prompt_text(processor, sample: Sample) -> str:
    return processor.apply_chat_template(sample.messages(), add_generation_prompt=True)


def encode(processor, samples: list[Sample], follow_ups: list[list[tuple[str, str, str]]] | None = None) -> dict:
    """Right-padded batch of `prompt + answer + <|im_end|>` (then, in training, `follow_ups[i]` as later
    chat turns about the same images). `labels` are -100 but on each assistant turn's answer and its
    end token; `first_answer` marks the positions whose logits predict the first answer's tokens."""
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
    # every answer follows "<|im_start|>assistant\n" and ends with <|im_end|>: label what lies between
    marker = tok("<|im_start|>assistant\n")["input_ids"]
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    n = len(marker)
    is_marker = (ids.unfold(1, n, 1) == torch.tensor(marker)).all(-1)  # [B, T-n+1]: a marker starts here
    starts = torch.zeros_like(ids, dtype=torch.bool)
    starts[:, n:] = is_marker[:, :-1]  # the first answer token of each turn
    in_answer = torch.zeros_like(starts)
    turn = torch.zeros(ids.shape[0], dtype=torch.long)
    first = torch.zeros_like(starts)
    inside = torch.zeros(ids.shape[0], dtype=torch.bool)
    for t in range(ids.shape[1]):  # short sequences; a scan is clearer than cumulative masks
        opened = starts[:, t]
        turn += opened.long()
        inside |= opened
        in_answer[:, t] = inside
        first[:, t] = inside & (turn == 1)
        inside &= ids[:, t] != end_id
    labels = torch.where(in_answer, ids, torch.full_like(ids, -100))
    batch["labels"] = labels
    # logits at t predict token t+1: shift the first answer's mask one to the left
    batch["first_answer"] = torch.zeros_like(first)
    batch["first_answer"][:, :-1] = first[:, 1:]
    return batch


MODEL_INPUTS_EXCLUDE = ("labels", "first_answer")


def first_answer_correct(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact, token accuracy) per sample of the first answer under teacher forcing; `exact` is the
    greedy exact match (see the module docstring). No labels passed: no loss computed."""
    inputs = {k: v for k, v in batch.items() if k not in MODEL_INPUTS_EXCLUDE}
    logits = model(**inputs).logits
    mask = batch["first_answer"]
    target = torch.zeros_like(batch["input_ids"])
    target[:, :-1] = batch["input_ids"][:, 1:]
    hit = (logits.argmax(-1) == target) & mask
    per = mask.sum(1).clamp(min=1)
    return hit.sum(1) == mask.sum(1), hit.sum(1) / per


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
