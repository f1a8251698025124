"""Follow-up accuracy per multi-turn design, on the grid-VQA model: what reusing a turn costs in answers.

Two-turn chats (`vlmodels.grid_vqa.eval_sets.follow_up_samples`): the images with a first question and
its answer, then a follow-up about the same images; the follow-up is scored. Designs, per budget:

    full                 the full cache (the reference point)
    lazy  (SGLang)       the served default: turn 1 is sent first, turn 2 gets a prefix hit on the
                         prompt KV turn 1 left in the radix tree, and is compressed anew for its own
                         question (`reuse: lazy`, docs/multiturn.md); cached tokens are recorded
    compressed (SGLang)  turn 1 is sent first and stays in the tree compressed; turn 2 prefills only
                         its new text over turn 1's kept tokens (`reuse: compressed`)
    fresh (reference)    the same compression in the transformers reference engine, over the whole
                         conversation: what `lazy` computes, in the engine the next row runs in
    compressed-ref (reference)  turn 2 continued over turn 1's compressed KV in the reference engine:
                         the follow-up's tokens fed over it (`forced_tokens`), what `compressed` computes

Prints a table (accuracy by design and budget, by follow-up type at 0.1) and writes
`bench/results/followup.{json,png}`.

    .venv/bin/python -m bench.followup [--per-setting 130] [--budgets 0.05 0.1 0.2] [--backend-url URL]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import httpx
import torch
from tqdm import tqdm

from bench.accuracy import MAX_NEW_TOKENS, Asker, reference_answer
from bench.harness import RESULTS, flush, sigterm_raises_exit
from bench.intervals import bootstrap_mean, error_bars, wilson
from radix_ext.reference.engine import generate, generate_from_inputs
from vlmodels.grid_vqa.eval_sets import follow_up_samples
from vlmodels.grid_vqa.scoring import exact_match, token_f1
from vlmodels.grid_vqa.spec import committed_model_dir

BUDGETS = (0.05, 0.1, 0.2)
DESIGNS = ("lazy", "compressed", "fresh", "compressed-ref")
POLICY = "vlcache"


def sglang_rows(url: str, processor, samples, budgets) -> dict:
    """`full`, `lazy@b` and `compressed@b` answers through the plugin; turn 1 is served first for the latter."""
    rows = {}
    with httpx.Client(base_url=url, timeout=300) as client:
        follow_ups = Asker(client, processor, samples)
        first_turns = Asker(client, processor, [s.first_turn() for s in samples])
        runs = [("full", "full", 1.0, {})]
        runs += [(f"{reuse}@{b:g}", POLICY, b, {"reuse": reuse}) for reuse in ("lazy", "compressed") for b in budgets]
        for label, policy, budget, options in tqdm(runs, desc="sglang", unit="design"):
            flush(url)  # each design starts from an empty tree: its hits are its own turn 1's
            outs = []
            for i in range(len(samples)):
                if label != "full":
                    first_turns.ask(i, policy, budget, options)
                out = follow_ups.ask(i, policy, budget, options)
                outs.append({"answer": out["text"], "cached_tokens": out["cached_tokens"]})
            rows[label] = outs
    return rows


def reference_rows(model, processor, samples, budgets) -> dict:
    """`fresh@b` (the whole conversation compressed) and `compressed-ref@b` (turn 2 over turn 1's kept KV)."""
    rows = defaultdict(list)
    for s in tqdm(samples, desc="reference", unit="chat"):
        first = processor.apply_chat_template(s.first_turn().messages(), add_generation_prompt=True)
        whole = processor.apply_chat_template(s.messages(), add_generation_prompt=True)
        assert whole.startswith(first), "the follow-up's prompt must extend the first turn's"
        follow = processor.tokenizer(whole[len(first) :], add_special_tokens=False)["input_ids"]
        inputs = processor(text=[first], images=s.images, return_tensors="pt")
        for b in budgets:
            res = generate(model, processor, s.messages(), images=s.images, policy=POLICY, budget=b,
                           max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
            rows[f"fresh@{b:g}"].append({"answer": reference_answer(processor, res.tokens)})
            res = generate_from_inputs(model, inputs, POLICY, b, len(follow) + MAX_NEW_TOKENS, forced_tokens=follow)
            rows[f"compressed-ref@{b:g}"].append({"answer": reference_answer(processor, res.tokens[len(follow) :])})
    return dict(rows)


def summarise(rows: dict, samples) -> dict:
    """Per design: F1 (bootstrap 95% interval) and exact match (Wilson) overall and per follow-up type."""
    out = {}
    for label, outs in rows.items():
        f1, exact = defaultdict(list), defaultdict(list)
        for s, o in zip(samples, outs, strict=True):
            for key in ("all", f"type:{s.qtype}"):
                f1[key].append(token_f1(o["answer"], s.answer, s.question))
                exact[key].append(exact_match(o["answer"], s.answer, s.question))
        out[label] = {"f1": {k: sum(v) / len(v) for k, v in sorted(f1.items())},
                      "f1_ci": {k: bootstrap_mean(v) for k, v in sorted(f1.items())},
                      "exact": {k: sum(v) / len(v) for k, v in sorted(exact.items())},
                      "exact_ci": {k: wilson(sum(v), len(v)) for k, v in sorted(exact.items())},
                      "n": len(f1["all"])}  # fmt: skip
        if "cached_tokens" in outs[0]:
            out[label]["mean_cached_tokens"] = sum(o["cached_tokens"] for o in outs) / len(outs)
    return out


def _cell(summary: dict, label: str, key: str = "all") -> str:
    row = summary.get(label)
    if row is None:
        return "-"
    lo, hi = row["f1_ci"][key]
    return f"{row['f1'][key]:.3f} [{lo:.2f},{hi:.2f}]"


def table(summary: dict, budgets) -> str:
    full = summary["full"]["f1"]["all"]
    lines = [f"follow-up F1 (policy {POLICY}, n={summary['full']['n']} chats, 95% interval); full cache: "
             f"{_cell(summary, 'full')}",
             f"{'design':<16}" + "".join(f"{'@' + format(b, 'g'):>20}" for b in budgets) + f"{'@0.1 / full':>13}"]  # fmt: skip
    for design in DESIGNS:
        if not any(f"{design}@{b:g}" in summary for b in budgets):
            continue
        at_10 = summary.get(f"{design}@0.1", {}).get("f1", {}).get("all")
        ratio = f"{at_10 / full:>13.3f}" if at_10 is not None and full else f"{'-':>13}"
        lines.append(f"{design:<16}" + "".join(f"{_cell(summary, f'{design}@{b:g}'):>20}" for b in budgets) + ratio)
    types = [k for k in summary["full"]["f1"] if k.startswith("type:")]
    lines += ["", f"{'F1 @0.1 by type':<20}" + "".join(f"{t[5:]:>20}" for t in types)]
    for label in ["full"] + [f"{d}@0.1" for d in DESIGNS]:
        if label in summary:
            lines.append(f"{label:<20}" + "".join(f"{_cell(summary, label, t):>20}" for t in types))
    cached = {k: v["mean_cached_tokens"] for k, v in summary.items() if "mean_cached_tokens" in v}
    if cached:
        lines += [
            "",
            "SGLang cached tokens per follow-up (mean): " + ", ".join(f"{k} {v:.0f}" for k, v in cached.items()),
        ]
    text = "\n".join(lines)
    print(text)
    return text


def plot(summary: dict, budgets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for design, style in zip(DESIGNS, ("-o", "-^", ":s", ":v"), strict=True):
        xs = [b for b in budgets if f"{design}@{b:g}" in summary]
        if xs:
            rows = [summary[f"{design}@{b:g}"] for b in xs]
            ys = [r["f1"]["all"] for r in rows]
            err = error_bars(ys, [r["f1_ci"]["all"] for r in rows])
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=2, label=design)
    ax.axhline(summary["full"]["f1"]["all"], color="k", lw=1, ls="--", label="full cache")
    ax.set(xscale="log", xlabel="KV budget", ylabel="follow-up F1 (95% interval)",
           title="Turn 2 (readout / caption after a one-region turn 1)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-setting", type=int, default=130, help="first questions per setting (1 and 2 images)")
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--model", type=Path, default=committed_model_dir())
    parser.add_argument("--backend-url", default=None, help="SGLang with the plugin selected (default: start one)")
    parser.add_argument("--no-sglang", action="store_true", help="reference engine rows only")
    parser.add_argument("--out", type=Path, default=RESULTS / "followup.json")
    args = parser.parse_args()

    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(args.model)
    model = Qwen2VLForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    samples = follow_up_samples(args.per_setting)
    rows = reference_rows(model, processor, samples, args.budgets)
    if not args.no_sglang:
        rows.update(_sglang(args, processor, samples))
    else:  # the full-cache reference point from the reference engine
        res = [generate(model, processor, s.messages(), images=s.images, policy="full", budget=1.0,
                        max_new_tokens=MAX_NEW_TOKENS) for s in samples]  # fmt: skip
        rows["full"] = [{"answer": reference_answer(processor, r.tokens)} for r in res]
    summary = summarise(rows, samples)
    text = table(summary, args.budgets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": args.model.name, "policy": POLICY, "budgets": args.budgets, "chats": len(samples),
               "summary": summary, "table": text}  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    plot(summary, args.budgets, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def _sglang(args, processor, samples) -> dict:
    if args.backend_url:
        return sglang_rows(args.backend_url, processor, samples, args.budgets)
    from service.sglang_process import SGLangServer, SGLangServerConfig, free_port

    RESULTS.mkdir(exist_ok=True)
    config = SGLangServerConfig(model_path=str(args.model), port=free_port())
    with sigterm_raises_exit(), open(RESULTS / "followup.sglang.log", "w") as log, SGLangServer(config, log=log):
        return sglang_rows(config.url, processor, samples, args.budgets)


if __name__ == "__main__":
    main()
