"""Held-out accuracy of the grid-VQA model vs KV budget, per policy and per task form, through the real
SGLang plugin.

Starts SGLang (CPU engine, `models/grid-vqa`, `--radix-cache-backend vlcache`) or attaches to one
(`--backend-url`), and asks every held-out question (`vlmodels.grid_vqa.eval_sets`: three forms --
sentence, readout, caption -- by default over 1 and 2 images of 10x10 cells, `--settings` adds 4 images of up
to 1,024 visual tokens) under every policy of
the registry (ablations included), the VL-Cache layer-budget blends, and every budget, each request
carrying its policy in `sampling_params.custom_params.vl_cache`, several at once. Every answer is
decoded over the compressed cache: its content comes after the first token. Budget 1.0 keeps every
token for every policy (the plugin leaves such requests whole), so it is run once, as `full`, and
shared by all rows. Also: a blank-image control (full cache) and a cross-check of answers against the
transformers reference engine on a small subset.

Questions are asked block by block (every run of a block of samples before the next block), so the
prompt KV the first run leaves in the radix tree (`reuse: lazy`) serves the others' image prefix.

Figures per form: exact match (Wilson 95% interval) and answer-unit F1 (bootstrap 95% interval),
`vlmodels/grid_vqa/scoring.py`. Prints tables, writes `bench/results/accuracy.json` and
`bench/results/accuracy.png` (one panel per form, error bars).

    .venv/bin/python -m bench.accuracy [--settings 1x10x10 2x10x10] [--per-setting 75] [--concurrency 8] [--budgets ...] [--backend-url URL]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from tqdm import tqdm

from bench.harness import RESULTS, png_data_url, sigterm_raises_exit
from bench.intervals import bootstrap_mean, error_bars, wilson
from radix_ext.policy import available_policies
from vlmodels.grid_vqa.eval_sets import SETTINGS, eval_samples
from vlmodels.grid_vqa.scoring import HEADLINE_METRIC, exact_match, token_f1
from vlmodels.grid_vqa.spec import committed_model_dir
from vlmodels.grid_vqa.task import FORM, FORMS

BUDGETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0)
BLENDS = (0.25, 0.5, 0.75)  # 0 is vlcache_uniform, 1 is vlcache
MAX_NEW_TOKENS = 32  # the longest answer (a caption of 6 objects) is 21 tokens
CONTROL_POLICY, CONTROL_BUDGET, CONTROL_MAX_RATIO = "random", 0.05, 0.7


def study_configs(blends=BLENDS) -> list[tuple[str, str, dict]]:
    """(label, policy, options): every registered policy but `full`, then VL-Cache blends."""
    configs = [(name, name, {}) for name in available_policies() if name != "full"]
    return configs + [(f"vlcache_blend{b:g}", "vlcache", {"layer_budget_blend": b}) for b in blends]


def reference_answer(processor, tokens) -> str:
    """The answer text of generated token ids (the reference engine's output)."""
    return processor.tokenizer.decode(tokens, skip_special_tokens=True).strip()


class Asker:
    """Sends one question under one policy; prompts and data URLs are built once per sample."""

    def __init__(self, client: httpx.Client, processor, samples, max_new_tokens: int = MAX_NEW_TOKENS):
        self.client = client
        self.max_new_tokens = max_new_tokens
        self.prompts = [processor.apply_chat_template(s.messages(), add_generation_prompt=True) for s in samples]
        self.images = [[png_data_url(img) for img in s.images] for s in samples]

    def ask(self, i: int, policy: str, budget: float, options: dict) -> dict:
        vl = {"policy": policy, "budget": budget, **options}
        params = {"temperature": 0, "max_new_tokens": self.max_new_tokens, "custom_params": {"vl_cache": vl}}
        body = {"text": self.prompts[i], "image_data": self.images[i], "sampling_params": params}
        resp = self.client.post("/generate", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"SGLang refused {policy}@{budget}: {resp.status_code} {resp.text[:300]}")
        out = resp.json()
        (report,) = out["meta_info"]["vl_cache"]
        return {"text": out["text"].strip(), "realized_budget": report["realized_budget"],
                "compressed": report["compressed"], "cached_tokens": out["meta_info"].get("cached_tokens", 0)}  # fmt: skip


def study_runs(configs, budgets) -> list[tuple[str, str, dict, float]]:
    """(label, policy, options, budget): `full` once, then every config at every budget below 1."""
    return [("full", "full", {}, 1.0)] + [(lbl, p, o, b) for lbl, p, o in configs for b in budgets if b < 1.0]


def run_study(client, processor, samples, runs, concurrency=8, block=16, progress=True) -> list[dict]:
    """Every run over every sample, block by block; returns one record per run (outputs and scores)."""
    asker = Asker(client, processor, samples)
    jobs = [(r, i) for start in range(0, len(samples), block) for r in range(len(runs))
            for i in range(start, min(start + block, len(samples)))]  # fmt: skip
    outs: dict[tuple[int, int], dict] = {}
    bar = tqdm(total=len(jobs), desc="accuracy", unit="req", disable=not progress)

    def ask(job):
        r, i = job
        _, policy, options, budget = runs[r]
        out = asker.ask(i, policy, budget, options)
        bar.update(1)
        return job, out

    with ThreadPoolExecutor(concurrency) as pool:
        for job, out in pool.map(ask, jobs):
            outs[job] = out
    bar.close()
    return [score_run(label, policy, options, budget, samples, [outs[(r, i)] for i in range(len(samples))])
            for r, (label, policy, options, budget) in enumerate(runs)]  # fmt: skip


def _summary(exact: list[bool], f1: list[float]) -> dict:
    return {"n": len(exact), "exact": sum(exact) / len(exact), "exact_ci": wilson(sum(exact), len(exact)),
            "f1": sum(f1) / len(f1), "f1_ci": bootstrap_mean(f1)}  # fmt: skip


def score_run(label, policy, options, budget, samples, outs) -> dict:
    """Exact match and F1 with intervals per key: `form:*`, `type:*`, `len:*` (per form) and `all`."""
    exact, f1 = defaultdict(list), defaultdict(list)
    for s, o in zip(samples, outs, strict=True):
        form = FORM[s.qtype]
        for key in ("all", f"form:{form}", f"type:{s.qtype}", f"len:{form}:{s.setting}"):
            exact[key].append(exact_match(o["text"], s.answer, s.question))
            f1[key].append(token_f1(o["text"], s.answer, s.question))
    return {"label": label, "policy": policy, "options": options, "budget": budget,
            "metrics": {k: _summary(exact[k], f1[k]) for k in sorted(exact)},
            "realized_budget": sum(o["realized_budget"] for o in outs) / len(outs),
            "compressed_share": sum(o["compressed"] for o in outs) / len(outs),
            "mean_cached_tokens": sum(o["cached_tokens"] for o in outs) / len(outs),
            "answers": [o["text"] for o in outs]}  # fmt: skip


def reference_cross_check(model_dir, samples, sglang_records, runs) -> dict:
    """Answers of the transformers reference engine vs SGLang's, same policy and budget, per run."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from radix_ext.reference import generate

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    by_run = {(r["label"], r["budget"]): r for r in sglang_records}
    out = {}
    for label, policy, options, budget in tqdm(runs, desc="reference", unit="run"):
        sg = by_run[(label, budget)]["answers"]
        agree = 0
        for i, s in enumerate(samples):
            res = generate(model, processor, s.messages(), images=s.images, policy=policy, budget=budget,
                           max_new_tokens=MAX_NEW_TOKENS, **options)  # fmt: skip
            agree += reference_answer(processor, res.tokens) == sg[i]
        out[f"{label}@{budget:g}"] = {"agreement": agree / len(samples), "n": len(samples)}
    return out


def _cell(m: dict, metric: str) -> str:
    lo, hi = m[f"{metric}_ci"]
    return f"{m[metric]:.3f} [{lo:.2f},{hi:.2f}]"


def control_verdict(records) -> dict:
    """The control that can fail: `random` at 5% against full, per multi-token form (F1 ratio). The
    setting travels with the verdict, so whoever reads the results needs no copy of these constants."""
    grid = {(r["label"], r["budget"]): r for r in records}
    full, ctrl = grid.get(("full", 1.0)), grid.get((CONTROL_POLICY, CONTROL_BUDGET))
    forms = {}
    for form in ("readout", "caption") if full and ctrl else ():
        key = f"form:{form}"
        if key in full["metrics"]:
            ratio = ctrl["metrics"][key]["f1"] / max(full["metrics"][key]["f1"], 1e-9)
            forms[form] = {"ratio": ratio, "fell": ratio <= CONTROL_MAX_RATIO}
    return {"policy": CONTROL_POLICY, "budget": CONTROL_BUDGET, "max_ratio": CONTROL_MAX_RATIO, "forms": forms}


def print_tables(records, budgets) -> str:
    full = next(r for r in records if r["label"] == "full")
    grid = {(r["label"], r["budget"]): r for r in records}
    labels = list(dict.fromkeys(r["label"] for r in records if r["label"] not in ("full", "blank_images")))
    cols = [b for b in budgets if b < 1.0]
    lines = []
    for form in FORMS:
        key, metric = f"form:{form}", HEADLINE_METRIC[form]
        if key not in full["metrics"]:
            continue
        n = full["metrics"][key]["n"]
        lines += [
            f"{form}: {metric} vs budget (n={n} per cell, 95% interval), full cache = {_cell(full['metrics'][key], metric)}"
        ]
        header = f"{'policy':<20}" + "".join(f"{b:>20g}" for b in cols)
        lines += [header, "-" * len(header)]
        for label in labels:
            lines.append(
                f"{label:<20}" + "".join(f"{_cell(grid[(label, b)]['metrics'][key], metric):>20}" for b in cols)
            )
        lines.append("")
    for b in (0.02, 0.05, 0.1):
        if b not in cols:
            continue
        lines += [f"at budget {b:g}: per form, headline metric / full"]
        head = f"{'policy':<20}" + "".join(f"{f:>12}" for f in FORMS if f"form:{f}" in full["metrics"])
        lines += [head, "-" * len(head)]
        for label in labels:
            r = grid[(label, b)]
            cells = [r["metrics"][f"form:{f}"][HEADLINE_METRIC[f]] / max(full["metrics"][f"form:{f}"][HEADLINE_METRIC[f]], 1e-9)
                     for f in FORMS if f"form:{f}" in full["metrics"]]  # fmt: skip
            lines.append(f"{label:<20}" + "".join(f"{c:>12.3f}" for c in cells))
        lines.append("")
    lens = [k for k in full["metrics"] if k.startswith("len:")]
    if 0.1 in cols and lens:
        lines += [
            "at budget 0.1 by prompt length (headline metric)",
            f"{'policy':<20}" + "".join(f"{k[4:]:>22}" for k in lens),
        ]
        for label in ["full"] + labels:
            r = full if label == "full" else grid[(label, 0.1)]
            lines.append(
                f"{label:<20}" + "".join(f"{r['metrics'][k][HEADLINE_METRIC[k.split(':')[1]]]:>22.3f}" for k in lens)
            )
        lines.append("")
    blank = next((r for r in records if r["label"] == "blank_images"), None)
    if blank:
        lines.append("blank-image control (full cache): " + ", ".join(
            f"{f} {HEADLINE_METRIC[f]} {_cell(blank['metrics'][f'form:{f}'], HEADLINE_METRIC[f])}" for f in FORMS
            if f"form:{f}" in blank["metrics"]))  # fmt: skip
    for form, v in control_verdict(records)["forms"].items():
        lines.append(f"{CONTROL_POLICY} control @ {CONTROL_BUDGET:g}, {form}: F1 {v['ratio']:.3f} of full -> "
                     + ("fell (the task tests the kept set)" if v["fell"] else "DID NOT FALL: the task does not test the kept set"))  # fmt: skip
    text = "\n".join(lines)
    print(text)
    return text


def plot(records, budgets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = next(r for r in records if r["label"] == "full")
    grid = {(r["label"], r["budget"]): r for r in records}
    labels = list(dict.fromkeys(r["label"] for r in records if r["label"] not in ("full", "blank_images")))
    forms = [f for f in FORMS if f"form:{f}" in full["metrics"]]
    fig, axes = plt.subplots(1, len(forms), figsize=(5 * len(forms), 4.4), sharey=True)
    for ax, form in zip(axes, forms, strict=True):
        key, metric = f"form:{form}", HEADLINE_METRIC[form]
        for j, label in enumerate(labels):
            xs = [b for b in budgets if b < 1.0] + [1.0]
            ms = [grid[(label, b)]["metrics"][key] for b in xs[:-1]] + [full["metrics"][key]]
            ys = [m[metric] for m in ms]
            err = error_bars(ys, [m[f"{metric}_ci"] for m in ms])
            shift = [x * (1 + 0.015 * (j - len(labels) / 2)) for x in xs]  # spread the bars apart
            style = ":" if label.startswith("vlcache_blend") else "-"
            width = 2.5 if label == "vlcache" else 1.1
            ax.errorbar(shift, ys, yerr=err, fmt=style, marker="o", ms=3, lw=width, capsize=2, label=label)
        ax.set(xscale="log", xlabel="KV budget (fraction of prompt KV kept)", title=f"{form} ({metric})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out score (95% interval)")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("grid-VQA answers decoded over the compressed cache (SGLang + vlcache plugin; 1.0 = full cache)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-setting", type=int, default=75, help="questions per form and prompt-length setting")
    # 1 and 2 images by default: every request prefills from its first image (the plugin scores the
    # post-vision rows), and 4 images of 16x16 cells cost about 2 s a request on the measuring
    # machine (bench/README.md).
    parser.add_argument("--settings", nargs="+", default=[s.name for s in SETTINGS[:2]],
                        help=f"prompt-length settings, of {[s.name for s in SETTINGS]}")  # fmt: skip
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--blends", type=float, nargs="*", default=list(BLENDS))
    parser.add_argument("--policies", nargs="*", default=None, help="labels to run (default: all)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--reference-samples", type=int, default=12, help="0 skips the cross-check")
    parser.add_argument("--model", type=Path, default=committed_model_dir())
    parser.add_argument("--backend-url", default=None, help="attach to this SGLang (plugin selected) instead")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    args = parser.parse_args()

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(args.model)
    settings = [s for s in SETTINGS if s.name in args.settings]
    samples = eval_samples(args.per_setting, settings)
    blank = eval_samples(max(1, args.per_setting // 4), settings, blank=True)
    configs = [c for c in study_configs(args.blends) if args.policies is None or c[0] in args.policies]
    runs = study_runs(configs, args.budgets)
    start = time.monotonic()
    with _server(args) as url, httpx.Client(base_url=url, timeout=httpx.Timeout(600.0)) as client:
        records = run_study(client, processor, samples, runs, args.concurrency)
        (blank_record,) = run_study(client, processor, blank, [("blank_images", "full", {}, 1.0)], args.concurrency)
    records.append(blank_record)
    sglang_minutes = (time.monotonic() - start) / 60
    cross = {}
    if args.reference_samples:
        step = max(1, len(samples) // args.reference_samples)
        idx = list(range(0, len(samples), step))[: args.reference_samples]
        sub_records = [dict(r, answers=[r["answers"][i] for i in idx]) for r in records if r["label"] != "blank_images"]
        checks = [(c[0], c[1], c[2], 0.1) for c in configs if c[0] in ("vlcache", "h2o", "snapkv")]
        cross = reference_cross_check(args.model, [samples[i] for i in idx], sub_records,
                                      [("full", "full", {}, 1.0)] + checks)  # fmt: skip
    table = print_tables(records, args.budgets)
    if cross:
        print("\nreference-engine cross-check (same questions, same policy; answer text identical): "
              + ", ".join(f"{k}: {v['agreement']:.2f} (n={v['n']})" for k, v in cross.items()))  # fmt: skip
    print(f"\nSGLang part: {len(runs)} runs x {len(samples)} questions in {sglang_minutes:.1f} min")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": str(args.model.name), "settings": [s.__dict__ for s in settings], "budgets": args.budgets,
               "questions": len(samples), "questions_per_form": len(samples) // len(FORMS),
               "sglang_minutes": round(sglang_minutes, 2), "runs": records, "control": control_verdict(records),
               "reference_cross_check": cross, "table": table}  # fmt: skip
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    plot(records, args.budgets, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


@contextmanager
def _server(args):
    """The given backend's URL, or that of a started SGLang with the plugin (stopped on exit and SIGTERM)."""
    if args.backend_url:
        yield args.backend_url
        return
    from service.sglang_process import SGLangServer, SGLangServerConfig, free_port

    RESULTS.mkdir(exist_ok=True)
    # room in the tree for a block's prompts under every run, so the image prefix is computed once
    config = SGLangServerConfig(model_path=str(args.model), port=free_port(), max_total_tokens=131072,
                                max_running_requests=max(8, args.concurrency))  # fmt: skip
    with sigterm_raises_exit(), open(RESULTS / "accuracy.sglang.log", "w") as log, SGLangServer(config, log=log):
        yield config.url


if __name__ == "__main__":
    main()
