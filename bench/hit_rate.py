"""The paper's cache-hit-rate diagnostic (its Fig. 3) on the grid-VQA model, in the reference engine.

For each held-out question and each policy at each budget: the policy's kept prompt positions per
layer (`radix_ext.reference.generate`, one decoded token), and the full-cache attention of the first
decoded token over the prompt (eager attention, summed over heads). Hit rate of layer `l` = the share
of that token's top-`k[l]` prompt positions the policy kept, `k[l]` being the policy's own kept count
in that layer; also the attention mass the kept set covers. Writes one PNG per policy
(`bench/results/accuracy_hit_rate_<policy>.png`, hit rate by layer, one line per budget) and
`bench/results/accuracy_hit_rate.json`, and prints a table.

    .venv/bin/python -m bench.hit_rate [--per-setting 4] [--budgets 0.1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from bench.harness import RESULTS
from radix_ext.policy import available_policies
from radix_ext.reference import generate
from vlmodels.grid_vqa.eval_sets import SETTINGS, eval_samples
from vlmodels.grid_vqa.spec import committed_model_dir


def first_token_attention(model, processor, sample, first_token: int) -> list[torch.Tensor]:
    """Per layer, `[m]`: attention of the first decoded token over the prompt, full cache, summed over heads."""
    prompt = processor.apply_chat_template(sample.messages(), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=sample.images, return_tensors="pt")
    m = inputs["input_ids"].shape[1]
    for key, value in list(inputs.items()):  # per-token tensors grow by the decoded (text) token
        if key != "pixel_values" and value.dim() == 2 and value.shape == (1, m):
            extra = first_token if key == "input_ids" else int(key == "attention_mask")
            inputs[key] = torch.cat([value, torch.tensor([[extra]], dtype=value.dtype)], 1)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    return [a[0, :, -1, :m].sum(0) for a in out.attentions]


def hit_rates(attn: list[torch.Tensor], keep: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """(top-k hit rate, attention mass covered) per layer, `k` = the kept count of that layer."""
    hits, mass = [], []
    for a, kept in zip(attn, keep, strict=True):
        k = kept.numel()
        top = set(torch.topk(a, k).indices.tolist())
        hits.append(len(top & set(kept.tolist())) / k)
        mass.append(float(a[kept].sum() / a.sum()))
    return hits, mass


def run(model_dir: Path, per_setting: int, budgets, policies, progress=True) -> dict:
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    eager = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                            attn_implementation="eager").eval()  # fmt: skip
    processor = AutoProcessor.from_pretrained(model_dir)
    samples = eval_samples(per_setting, settings=SETTINGS[1:])  # 2 and 4 images: prompts worth compressing
    sums = {}
    for s in tqdm(samples, desc="hit rate", unit="question", disable=not progress):
        full = generate(model, processor, s.messages(), images=s.images, policy="full", budget=1.0, max_new_tokens=1)
        attn = first_token_attention(eager, processor, s, full.tokens[0])
        for policy in policies:
            for budget in budgets:
                res = generate(model, processor, s.messages(), images=s.images, policy=policy, budget=budget,
                               max_new_tokens=1)  # fmt: skip
                hits, mass = hit_rates(attn, res.selection.keep)
                acc = sums.setdefault((policy, budget), {"hit": [0.0] * len(hits), "mass": [0.0] * len(hits), "n": 0})
                acc["hit"] = [x + y for x, y in zip(acc["hit"], hits, strict=True)]
                acc["mass"] = [x + y for x, y in zip(acc["mass"], mass, strict=True)]
                acc["n"] += 1
    return {f"{p}@{b:g}": {"policy": p, "budget": b, "n": v["n"], "hit_rate": [x / v["n"] for x in v["hit"]],
                           "mass_covered": [x / v["n"] for x in v["mass"]]} for (p, b), v in sums.items()}  # fmt: skip


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for policy in dict.fromkeys(r["policy"] for r in results.values()):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for r in (r for r in results.values() if r["policy"] == policy):
            layers = range(len(r["hit_rate"]))
            ax.plot(layers, r["hit_rate"], marker="o", label=f"budget {r['budget']:g}")
        ax.set(xlabel="layer", ylabel="top-k hit rate of the 1st decoded token", ylim=(0, 1.02),
               title=f"{policy}: cache hit rate by layer", xticks=list(layers))  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"accuracy_hit_rate_{policy}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def table(results: dict) -> str:
    lines = [f"{'policy@budget':<22}{'hit rate per layer':>32}{'mean':>7}{'mass covered (mean)':>22}"]
    for key, r in results.items():
        per = " ".join(f"{h:.2f}" for h in r["hit_rate"])
        mean_hit = sum(r["hit_rate"]) / len(r["hit_rate"])
        lines.append(f"{key:<22}{per:>32}{mean_hit:>7.3f}{sum(r['mass_covered']) / len(r['mass_covered']):>22.3f}")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-setting", type=int, default=4)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1])
    parser.add_argument("--policies", nargs="+", default=[p for p in available_policies() if p != "full"])
    parser.add_argument("--model", type=Path, default=committed_model_dir())
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = run(args.model, args.per_setting, args.budgets, args.policies)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = table(results)
    (args.out_dir / "accuracy_hit_rate.json").write_text(
        json.dumps({"results": results, "table": text}, indent=1) + "\n"
    )
    for path in plot(results, args.out_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
