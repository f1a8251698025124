"""Held-out accuracy of the grid-VQA model vs KV budget, per policy, through the real SGLang plugin.

Starts SGLang (CPU engine, `models/grid-vqa`, `--radix-cache-backend vlcache`) or attaches to one
(`--backend-url`), and asks every held-out question (`vlmodels.grid_vqa.eval_sets`: 1, 2 and 4 images)
under every policy of the registry (ablations included), a few VL-Cache layer-budget blends, and every
budget, each request carrying its policy in `sampling_params.custom_params.vl_cache`, several at once.
Budget 1.0 keeps every token for every policy (the plugin leaves such requests whole), so it is run
once, as `full`, and shared by all rows. Also: a blank-image control (full cache) and a cross-check
of answers against the transformers reference engine on a small subset.

Prints accuracy tables (overall, by question type and by prompt length at 5% and 10%) and writes
`bench/results/accuracy.json` and `bench/results/accuracy.png` (one line per policy).

    .venv/bin/python -m bench.accuracy [--per-setting 32] [--concurrency 8] [--budgets ...] [--backend-url URL]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
from tqdm import tqdm

from bench.harness import RESULTS, png_data_url, sigterm_raises_exit
from radix_ext.policy import available_policies
from vlmodels.grid_vqa.eval_sets import SETTINGS, eval_samples
from vlmodels.grid_vqa.spec import committed_model_dir

BUDGETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0)
BLENDS = (0.25, 0.5, 0.75)  # 0 is vlcache_uniform, 1 is vlcache


def study_configs(blends=BLENDS) -> list[tuple[str, str, dict]]:
    """(label, policy, options): every registered policy but `full`, then VL-Cache blends."""
    configs = [(name, name, {}) for name in available_policies() if name != "full"]
    return configs + [(f"vlcache_blend{b:g}", "vlcache", {"layer_budget_blend": b}) for b in blends]


def _first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].strip(".,!?").lower() if words else ""


def reference_answer(processor, tokens) -> str:
    """The scored answer of generated token ids (the reference engine's output), as `_first_word`."""
    return _first_word(processor.tokenizer.decode(tokens, skip_special_tokens=True))


class Asker:
    """Sends one question under one policy; prompts and data URLs are built once per sample."""

    def __init__(self, client: httpx.Client, processor, samples):
        self.client = client
        self.prompts = [processor.apply_chat_template(s.messages(), add_generation_prompt=True) for s in samples]
        self.images = [[png_data_url(img) for img in s.images] for s in samples]

    def ask(self, i: int, policy: str, budget: float, options: dict) -> dict:
        vl = {"policy": policy, "budget": budget, **options}
        params = {"temperature": 0, "max_new_tokens": 2, "custom_params": {"vl_cache": vl}}
        body = {"text": self.prompts[i], "image_data": self.images[i], "sampling_params": params}
        resp = self.client.post("/generate", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"SGLang refused {policy}@{budget}: {resp.status_code} {resp.text[:300]}")
        out = resp.json()
        (report,) = out["meta_info"]["vl_cache"]
        return {"text": out["text"], "realized_budget": report["realized_budget"], "compressed": report["compressed"],
                "cached_tokens": out["meta_info"].get("cached_tokens", 0)}  # fmt: skip


def run_study(client, processor, samples, configs, budgets, concurrency=8, blank_samples=None, progress=True):
    """Every (config, budget < 1) plus `full`; returns the per-run records (answers and accuracies)."""
    runs = [("full", "full", {}, 1.0)] + [(lbl, p, o, b) for lbl, p, o in configs for b in budgets if b < 1.0]
    asker = Asker(client, processor, samples)
    bar = tqdm(total=len(runs) * len(samples), desc="accuracy", unit="req", disable=not progress)
    records = []
    with ThreadPoolExecutor(concurrency) as pool:
        for label, policy, options, budget in runs:
            ask = functools.partial(asker.ask, policy=policy, budget=budget, options=options)
            outs = list(pool.map(ask, range(len(samples))))
            bar.update(len(samples))
            records.append(_record(label, policy, options, budget, samples, outs))
        if blank_samples is not None:
            blank = Asker(client, processor, blank_samples)
            ask = functools.partial(blank.ask, policy="full", budget=1.0, options={})
            outs = list(pool.map(ask, range(len(blank_samples))))
            records.append(_record("blank_images", "full", {}, 1.0, blank_samples, outs))
    bar.close()
    return records


def _record(label, policy, options, budget, samples, outs) -> dict:
    right, total = defaultdict(int), defaultdict(int)
    for s, o in zip(samples, outs, strict=True):
        hit = _first_word(o["text"]) == s.answer
        for key in ("all", f"type:{s.qtype}", f"len:{s.setting}"):
            right[key] += hit
            total[key] += 1
    return {"label": label, "policy": policy, "options": options, "budget": budget,
            "accuracy": {k: right[k] / total[k] for k in sorted(total)}, "n": {k: total[k] for k in sorted(total)},
            "realized_budget": sum(o["realized_budget"] for o in outs) / len(outs),
            "compressed_share": sum(o["compressed"] for o in outs) / len(outs),
            "answers": [_first_word(o["text"]) for o in outs]}  # fmt: skip


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
        agree = right = 0
        for i, s in enumerate(samples):
            res = generate(model, processor, s.messages(), images=s.images, policy=policy, budget=budget,
                           max_new_tokens=2, **options)  # fmt: skip
            answer = reference_answer(processor, res.tokens)
            agree += answer == sg[i]
            right += answer == s.answer
        out[f"{label}@{budget:g}"] = {"agreement": agree / len(samples), "reference_accuracy": right / len(samples),
                                      "n": len(samples)}  # fmt: skip
    return out


def print_tables(records, budgets) -> str:
    lines = []
    full = next(r for r in records if r["label"] == "full")
    cols = [b for b in budgets if b < 1.0]
    header = f"{'policy':<22}" + "".join(f"{b:>7g}" for b in cols) + f"{'1.0':>7}" + f"{'10%/full':>10}"
    lines += ["accuracy (all questions) vs budget", header, "-" * len(header)]
    labels = list(dict.fromkeys(r["label"] for r in records if r["label"] not in ("full", "blank_images")))
    grid = {(r["label"], r["budget"]): r for r in records}
    for label in labels:
        accs = [grid[(label, b)]["accuracy"]["all"] for b in cols]
        ratio = float("nan")
        if 0.1 in cols and full["accuracy"]["all"] > 0:
            ratio = grid[(label, 0.1)]["accuracy"]["all"] / full["accuracy"]["all"]
        lines.append(f"{label:<22}" + "".join(f"{a:>7.3f}" for a in accs) + f"{full['accuracy']['all']:>7.3f}"
                     + f"{ratio:>10.3f}")  # fmt: skip
    keys = [k for k in full["accuracy"] if k != "all"]
    for b in (0.05, 0.1):
        if b not in cols:
            continue
        head = f"{'policy @ ' + format(b, 'g'):<22}" + "".join(f"{k.split(':')[1]:>11}" for k in keys)
        lines += ["", f"accuracy by question type and prompt length at budget {b:g}", head, "-" * len(head)]
        for label in ["full"] + labels:
            r = full if label == "full" else grid[(label, b)]
            lines.append(f"{label:<22}" + "".join(f"{r['accuracy'][k]:>11.3f}" for k in keys))
    blank = next((r for r in records if r["label"] == "blank_images"), None)
    if blank:
        lines += [
            "",
            "blank-image control (full cache): " + ", ".join(f"{k} {v:.3f}" for k, v in blank["accuracy"].items()),
        ]
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
    keys = ["all"] + [k for k in full["accuracy"] if k.startswith("type:")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.2), sharey=True)
    for ax, key in zip(axes, keys, strict=True):
        for label in labels:
            xs = [b for b in budgets if b < 1.0] + [1.0]
            ys = [grid[(label, b)]["accuracy"][key] for b in xs[:-1]] + [full["accuracy"][key]]
            style = "-" if not label.startswith("vlcache_blend") else ":"
            width = 2.5 if label == "vlcache" else 1.2
            ax.plot(xs, ys, style, marker="o", ms=3, lw=width, label=label)
        ax.set(xscale="log", xlabel="KV budget (fraction of prompt KV kept)", title=key.replace("type:", "question: "))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("grid-VQA accuracy vs KV budget (SGLang + vlcache plugin, budget 1.0 = full cache)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-setting", type=int, default=32, help="questions per prompt-length setting")
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
    samples = eval_samples(args.per_setting)
    blank = eval_samples(args.per_setting, blank=True)
    configs = [c for c in study_configs(args.blends) if args.policies is None or c[0] in args.policies]
    start = time.monotonic()
    with _server(args) as url, httpx.Client(base_url=url, timeout=httpx.Timeout(600.0)) as client:
        records = run_study(client, processor, samples, configs, args.budgets, args.concurrency, blank)
    sglang_minutes = (time.monotonic() - start) / 60
    cross = {}
    if args.reference_samples:
        subset = [s for k, s in enumerate(samples) if k % max(1, len(samples) // args.reference_samples) == 0]
        subset = subset[: args.reference_samples]
        idx = [samples.index(s) for s in subset]
        sub_records = [dict(r, answers=[r["answers"][i] for i in idx]) for r in records]
        checks = [(c[0], c[1], c[2], b) for c in configs if c[0] in ("vlcache", "h2o", "snapkv") for b in (0.1,)]
        cross = reference_cross_check(args.model, subset, sub_records, [("full", "full", {}, 1.0)] + checks)
    table = print_tables(records, args.budgets)
    if cross:
        print("\nreference-engine cross-check (same questions, same policy): "
              + ", ".join(f"{k}: agreement {v['agreement']:.2f} (n={v['n']})" for k, v in cross.items()))  # fmt: skip
    print(f"\nSGLang part: {len(records)} runs x {len(samples)} questions in {sglang_minutes:.1f} min")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": str(args.model.name), "settings": [s.__dict__ for s in SETTINGS], "budgets": args.budgets,
               "questions": len(samples), "sglang_minutes": round(sglang_minutes, 2), "runs": records,
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
    config = SGLangServerConfig(model_path=str(args.model), port=free_port(),
                                max_running_requests=max(8, args.concurrency))  # fmt: skip
    with sigterm_raises_exit(), open(RESULTS / "accuracy.sglang.log", "w") as log, SGLangServer(config, log=log):
        yield config.url


if __name__ == "__main__":
    main()
