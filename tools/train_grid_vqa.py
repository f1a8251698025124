"""Train the grid-VQA Qwen2-VL on CPU, deterministically, and save it to `models/grid-vqa/`.

    .venv/bin/python tools/train_grid_vqa.py [--steps 1400] [--batch 16] [--seed 0] [--out models/grid-vqa]

Data: an endless seeded stream of grid-VQA samples (`vlmodels.grid_vqa.task`): `CURRICULUM` phases of
`--curriculum-steps` each on small grids, then 1-4 images of 4x4 to 10x10 cells; each image set is
asked its question and up to `--follow-ups` more as later chat turns; the loss is on the one-word
answers and their end tokens, plus (`--cell-aux`) a per-cell shape/colour loss on the vision merger's
output through a training-only probe (`CellProbe`). Every `--eval-every` steps a
fixed held-out set (another seed) is scored with the greedy first token, per question type, and a
blank-image control; the log (`training_log.jsonl`) and the final figures go next to the weights.
Same seed, same thread count -> the same weights (fixed data order, `torch.manual_seed`,
deterministic algorithms).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from radix_ext.reference import generate
from vlmodels.grid_vqa.batches import cell_labels, encode, first_answer_correct
from vlmodels.grid_vqa.scoring import exact_match, token_f1
from vlmodels.grid_vqa.spec import SPEC, committed_model_dir, untrained_model, write_example
from vlmodels.grid_vqa.task import COLOURS, FORM, FORMS, QUESTION_TYPES, SHAPES, follow_up_questions, sample_stream
from vlmodels.tiny_qwen2vl import save_qwen2vl

# The curriculum, `--curriculum-steps` per phase: first the named shape nearly alone on tiny grids, so
# that reading what the image holds pays before searching for it does; then few cells to search.
CURRICULUM = (
    (((2, 2), (3, 3), (2, 3), (3, 2)), (1, 2)),
    (((3, 3), (4, 4), (5, 5), (3, 5), (5, 3)), (3, 6)),
)
TRAIN_GRIDS = ((4, 4), (6, 6), (7, 7), (8, 8), (9, 9), (10, 10), (6, 10), (10, 6))
TRAIN_IMAGES = (1, 2, 3, 4)  # the study asks about up to 4 images
# readout and caption, the multi-token forms, drawn twice as often as each sentence question
TRAIN_QTYPES = ("colour", "shape", "count", "which", "list", "list", "caption", "caption")
HELD_OUT_SEED = 10_000


def evaluate(model, processor, samples, batch_size=32) -> dict:
    """Greedy exact match (teacher-forced, see `batches`) overall and per question type, and the
    answer tokens' accuracy per form."""
    model.eval()
    score, total = defaultdict(float), defaultdict(int)
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            exact, tokens = first_answer_correct(model, encode(processor, chunk))
            for s, hit, tok in zip(chunk, exact.tolist(), tokens.tolist(), strict=True):
                for key in ("all", s.qtype):
                    score[key] += hit
                    total[key] += 1
                score[f"tokens:{FORM[s.qtype]}"] += tok
                total[f"tokens:{FORM[s.qtype]}"] += 1
    model.train()
    return {k: score[k] / total[k] for k in total}


def generated_scores(model, processor, samples) -> dict:
    """Free greedy generation (full cache, the reference engine): exact match and answer-unit F1 per
    question type and per form. What the study measures, without SGLang."""
    model.eval()
    score = defaultdict(list)
    for s in tqdm(samples, desc="held-out generation", unit="q", leave=False):
        res = generate(model, processor, s.messages(), images=s.images, policy="full", budget=1.0, max_new_tokens=32)
        text = processor.tokenizer.decode(res.tokens, skip_special_tokens=True)
        for key in (s.qtype, FORM[s.qtype]):
            score[f"exact:{key}"].append(exact_match(text, s.answer, s.question))
            score[f"f1:{key}"].append(token_f1(text, s.answer, s.question))
    return {k: sum(v) / len(v) for k, v in sorted(score.items())}


class CellProbe(torch.nn.Module):
    """Training-only heads on the vision merger's output: each merged token's cell shape and colour.

    Not part of the saved model (SGLang serves a plain Qwen2-VL); it only shapes the vision tower."""

    def __init__(self, hidden: int):
        super().__init__()
        self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)
        self.colour = torch.nn.Linear(hidden, len(COLOURS) + 1)
        self.visual_tokens = None  # the merger's output of the current forward, set by the hook

    def capture(self, module, inputs, output) -> None:
        self.visual_tokens = output

    def loss(self, shapes: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        x, self.visual_tokens = self.visual_tokens, None
        ce = torch.nn.functional.cross_entropy
        return ce(self.shape(x), shapes) + ce(self.colour(x), colours)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def write_model_card(out: Path, summary: dict) -> Path:
    """`README.md` next to the weights: the task, the size, how it was trained, what it scores."""
    params = sum(p.numel() for p in untrained_model(SPEC)[0].parameters())
    gen, blank = summary["generated"], summary["generated_blank"]
    keys = list(dict.fromkeys(list(QUESTION_TYPES) + list(FORMS)))  # "caption" is a type and a form
    rows = "\n".join(f"| {k} | {gen[f'exact:{k}']:.3f} | {gen[f'f1:{k}']:.3f} | {blank[f'exact:{k}']:.3f} | "
                     f"{blank[f'f1:{k}']:.3f} |" for k in keys if f"exact:{k}" in gen and f"exact:{k}" in blank)  # fmt: skip
    card = f"""# grid-vqa: a tiny Qwen2-VL trained to read grids of shapes

The embedded default model of vlcache-serve (`make serve`). Architecture: Qwen2-VL (SGLang serves it
unchanged), {SPEC.num_layers} LM layers, hidden {SPEC.hidden_size}, {SPEC.num_heads} query / {SPEC.num_kv_heads} KV heads,
vision tower of depth {SPEC.vision_depth} (embed {SPEC.vision_embed_dim}), {params / 1e6:.2f} M parameters, float32.
One 28x28-pixel grid cell is one visual token.

Task (`vlmodels/grid_vqa/task.py`): images of grids of coloured shapes; every answer is a sentence whose
content comes after its first token (decoded over the compressed cache when the plugin compresses):
`What colour is the star?` -> `The star is orange.`, `Which shape is red?` (one region), `How many shapes
are red?` (several), `Which image has the star?` (across images); readout `List the red shapes.` -> every
red object's shape; caption `Describe the image.` -> every object of a sparse prompt as colour and shape.
Trained on 1-4 images of 4x4 to 10x10 cells.

Training: `python tools/train_grid_vqa.py --steps {summary["steps"]} --threads {summary["threads"]}` (`make train-model`),
seed {summary["seed"]}, batch {summary["batch"]}, {summary["train_minutes"]} min on a 2-core CPU; a curriculum (few objects on
tiny grids first) and an auxiliary per-cell shape/colour loss on the vision merger's output (training
only; not in these weights). Log: `training_log.jsonl`. Reproducible: two runs of the same command
(same seed and `--threads`; checked with `--steps 20 --threads 1`) wrote byte-identical weights and
identical losses and held-out figures; only the wall times differ.

Held-out, full cache, free greedy generation ({summary["generated_samples"]} questions, 1-4 images of 4x4 to 10x10 cells,
seeds apart from training), and half as many with every image blanked (the control: what the text alone
gives). Exact match compares the answer's units in order (colours, shapes, numbers, colour-shape pairs);
F1 is over those units (`vlmodels/grid_vqa/scoring.py`):

| question type / form | exact | F1 | blank: exact | blank: F1 |
|---|---|---|---|---|
{rows}

The study of accuracy vs KV budget per policy is `make accuracy` (`bench/README.md`).
"""
    path = out / "README.md"
    path.write_text(card)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--curriculum-steps", type=int, default=200, help="steps per curriculum phase")
    parser.add_argument("--follow-ups", type=int, default=3, help="further questions per image set, as later turns")
    parser.add_argument("--cell-aux", type=float, default=1.0, help="weight of the per-cell shape/colour loss")
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--eval-samples", type=int, default=128)
    parser.add_argument("--generate-samples", type=int, default=64, help="held-out questions per form, generated")
    parser.add_argument("--out", type=Path, default=committed_model_dir())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    model, processor = untrained_model(SPEC)
    model.train()
    probe = CellProbe(SPEC.hidden_size)
    hook = model.model.visual.merger.register_forward_hook(probe.capture)
    params = list(model.named_parameters()) + list(probe.named_parameters())
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))  # fmt: skip
    phases = [
        sample_stream(args.seed + 1 + i, TRAIN_QTYPES, grids=g, objects_per_image=o)
        for i, (g, o) in enumerate(CURRICULUM)
    ]
    train = sample_stream(args.seed, TRAIN_QTYPES, grids=TRAIN_GRIDS, num_images=TRAIN_IMAGES)
    held_out = list(itertools.islice(sample_stream(HELD_OUT_SEED, grids=TRAIN_GRIDS), args.eval_samples))
    blank = list(itertools.islice(sample_stream(HELD_OUT_SEED, grids=TRAIN_GRIDS, blank=True), args.eval_samples))
    generated, generated_blank = [], []  # per form, for the final free-generation figures
    for i, form in enumerate(FORMS):
        qtypes = [q for q in QUESTION_TYPES if FORM[q] == form]
        stream = dict(qtypes=qtypes, grids=TRAIN_GRIDS, num_images=TRAIN_IMAGES)
        generated += itertools.islice(sample_stream(HELD_OUT_SEED + 1 + i, **stream), args.generate_samples)
        generated_blank += itertools.islice(sample_stream(HELD_OUT_SEED + 1 + i, **stream, blank=True),
                                            args.generate_samples // 2)  # fmt: skip

    log_lines = []  # written next to the weights at the end (saving replaces the folder)
    start = time.monotonic()
    bar = tqdm(range(args.steps), desc="train", unit="step")
    ema = None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        phase = step // args.curriculum_steps
        samples = list(itertools.islice(phases[phase] if phase < len(phases) else train, args.batch))
        follow_ups = [follow_up_questions(s, step * args.batch + i, args.follow_ups) for i, s in enumerate(samples)]
        batch = encode(processor, samples, follow_ups)
        inputs = {k: v for k, v in batch.items() if k != "first_answer"}
        loss = model(**inputs).loss
        aux = probe.loss(*cell_labels(samples))
        (loss + args.cell_aux * aux).backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}", cells=f"{aux.item():.3f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc = evaluate(model, processor, held_out)
            control = evaluate(model, processor, blank)
            record = {"step": step + 1, "loss_ema": round(ema, 4), "cells": round(aux.item(), 4),
                      "minutes": round((time.monotonic() - start) / 60, 2),
                      "held_out": {k: round(v, 4) for k, v in sorted(acc.items())},
                      "blank_image": round(control["all"], 4)}  # fmt: skip
            log_lines.append(json.dumps(record))
            tqdm.write(log_lines[-1])
    hook.remove()
    minutes = (time.monotonic() - start) / 60
    final = evaluate(model, processor, held_out)
    control = evaluate(model, processor, blank)
    summary = {"steps": args.steps, "batch": args.batch, "seed": args.seed, "threads": args.threads,
               "train_minutes": round(minutes, 1), "held_out_samples": len(held_out),
               "held_out_accuracy": {k: round(v, 4) for k, v in sorted(final.items())},
               "blank_image_accuracy": {k: round(v, 4) for k, v in sorted(control.items())},
               "generated_samples": len(generated),
               "generated": {k: round(v, 4) for k, v in generated_scores(model, processor, generated).items()},
               "generated_blank": {k: round(v, 4) for k, v in
                                   generated_scores(model, processor, generated_blank).items()}}  # fmt: skip
    log_lines.append(json.dumps({"final": summary}))
    model.eval()
    save_qwen2vl(model, processor, args.out, SPEC, stamp={"spec": SPEC.__dict__, "training": summary})
    (args.out / "training_log.jsonl").write_text("\n".join(log_lines) + "\n")
    write_example(args.out)
    write_model_card(args.out, summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
