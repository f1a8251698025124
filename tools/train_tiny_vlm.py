"""Train the grid-VQA Qwen2-VL on CPU, deterministically, and save it to `models/grid-vqa/`.

    .venv/bin/python tools/train_tiny_vlm.py [--steps 2000] [--batch 16] [--seed 0] [--out models/grid-vqa]

Data: an endless seeded stream of grid-VQA samples (`vlmodels.grid_vqa.task`), 1-2 images, 3x3 to 5x5
cells for the first `--curriculum-steps`, then 4x4 to 10x10; each image set is asked its question and up
to `--follow-ups` more as later chat turns; the loss is on the one-word answers and their end tokens. Every `--eval-every` steps a
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

from vlmodels.grid_vqa.batches import answer_predictions, encode
from vlmodels.grid_vqa.spec import SPEC, committed_model_dir, untrained_model, write_example
from vlmodels.grid_vqa.task import follow_up_questions, sample_stream
from vlmodels.tiny_qwen2vl import save_qwen2vl

WARMUP_GRIDS = ((3, 3), (4, 4), (5, 5), (3, 5), (5, 3))  # the curriculum's first phase: few cells to search
TRAIN_GRIDS = ((4, 4), (6, 6), (7, 7), (8, 8), (9, 9), (10, 10), (6, 10), (10, 6))
HELD_OUT_SEED = 10_000


def evaluate(model, processor, samples, batch_size=32) -> dict:
    """Greedy first-token accuracy overall and per question type."""
    model.eval()
    right, total = defaultdict(int), defaultdict(int)
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            batch = encode(processor, chunk)
            hits = (answer_predictions(model, batch) == batch["answer_ids"]).tolist()
            for s, hit in zip(chunk, hits, strict=True):
                for key in ("all", s.qtype):
                    right[key] += hit
                    total[key] += 1
    model.train()
    return {k: right[k] / total[k] for k in total}


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--curriculum-steps", type=int, default=200, help="first steps on 3x3-5x5 grids")
    parser.add_argument("--follow-ups", type=int, default=3, help="further questions per image set, as later turns")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-samples", type=int, default=128)
    parser.add_argument("--out", type=Path, default=committed_model_dir())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    model, processor = untrained_model(SPEC)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))  # fmt: skip
    warmup_stream = sample_stream(args.seed + 1, grids=WARMUP_GRIDS)
    train = sample_stream(args.seed, grids=TRAIN_GRIDS)
    held_out = list(itertools.islice(sample_stream(HELD_OUT_SEED, grids=TRAIN_GRIDS), args.eval_samples))
    blank = list(itertools.islice(sample_stream(HELD_OUT_SEED, grids=TRAIN_GRIDS, blank=True), args.eval_samples))

    log_lines = []  # written next to the weights at the end (saving replaces the folder)
    start = time.monotonic()
    bar = tqdm(range(args.steps), desc="train", unit="step")
    ema = None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        samples = list(itertools.islice(warmup_stream if step < args.curriculum_steps else train, args.batch))
        follow_ups = [follow_up_questions(s, step * args.batch + i, args.follow_ups) for i, s in enumerate(samples)]
        batch = encode(processor, samples, follow_ups)
        inputs = {k: v for k, v in batch.items() if k not in ("answer_pos", "answer_ids")}
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc = evaluate(model, processor, held_out)
            record = {"step": step + 1, "loss_ema": round(ema, 4), "minutes": round((time.monotonic() - start) / 60, 2),
                      "held_out": {k: round(v, 4) for k, v in sorted(acc.items())}}  # fmt: skip
            log_lines.append(json.dumps(record))
            tqdm.write(log_lines[-1])
    minutes = (time.monotonic() - start) / 60
    final = evaluate(model, processor, held_out)
    control = evaluate(model, processor, blank)
    summary = {"steps": args.steps, "batch": args.batch, "seed": args.seed, "threads": args.threads,
               "train_minutes": round(minutes, 1), "held_out_samples": len(held_out),
               "held_out_accuracy": {k: round(v, 4) for k, v in sorted(final.items())},
               "blank_image_accuracy": {k: round(v, 4) for k, v in sorted(control.items())}}  # fmt: skip
    log_lines.append(json.dumps({"final": summary}))
    model.eval()
    save_qwen2vl(model, processor, args.out, SPEC, stamp={"spec": SPEC.__dict__, "training": summary})
    (args.out / "training_log.jsonl").write_text("\n".join(log_lines) + "\n")
    write_example(args.out)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
