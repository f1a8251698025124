"""The paper's cache-hit-rate diagnostic (its Fig. 3) on the grid-VQA model, at every decoded token of
readout answers, in the reference engine.

For each held-out readout question (`List the red shapes.`, 2 and 4 images) the full-cache answer is
generated, then one eager forward over prompt + answer gives, per layer, the full-cache attention of
every decoded token over the prompt (summed over heads). For each policy at each budget the policy's
kept prompt positions per layer (`radix_ext.reference.generate`; the kept set is fixed at prefill).
Hit rate of layer `l` at decoded token `t` = the share of token `t`'s top-`k[l]` prompt positions the
policy kept, `k[l]` being the policy's kept count in that layer; also the attention mass covered.
A readout's content words come at tokens 6 and later, each from another cell: a kept set chosen
before decoding must serve all of them. Writes one PNG per policy
(`bench/results/accuracy_hit_rate_<policy>.png`: hit rate by layer, one line per decoded token) and
`bench/results/accuracy_hit_rate.json`, and prints a table (mean over decoded tokens, and the content
tokens alone).

    .venv/bin/python -m bench.hit_rate [--per-setting 8] [--budgets 0.1]
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
from vlmodels.grid_vqa.task import CONTENT_WORDS

MAX_TOKENS = 16  # a readout of 5 shapes is 15 tokens with its end


def decoded_attention(model, processor, sample, tokens: list[int]) -> list[torch.Tensor]:
    """Per layer, `[T, m]`: full-cache attention of each decoded token (fed one per position, as in
    decode) over the `m` prompt positions, summed over heads. `tokens` is the greedy answer."""
    prompt = processor.apply_chat_template(sample.messages(), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=sample.images, return_tensors="pt")
    m = inputs["input_ids"].shape[1]
    # the token decoded at step t is computed at position m + t - 1: its query is the previous token's row
    extra = tokens[:-1]
    for key, value in list(inputs.items()):  # per-token tensors grow by the decoded (text) tokens
        if key != "pixel_values" and value.dim() == 2 and value.shape == (1, m):
            fill = {"input_ids": extra, "attention_mask": [1] * len(extra)}.get(key, [0] * len(extra))  # 0: text
            more = torch.tensor([fill], dtype=value.dtype)
            inputs[key] = torch.cat([value, more], 1)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    return [a[0, :, m - 1 : m - 1 + len(tokens), :m].sum(0) for a in out.attentions]


def hit_rates(attn: torch.Tensor, keep: torch.Tensor) -> tuple[list[float], list[float]]:
    """(top-k hit rate, attention mass covered) per decoded token of one layer, `k` = the kept count."""
    k = keep.numel()
    kept = torch.zeros(attn.shape[1], dtype=torch.bool)
    kept[keep] = True
    top = torch.topk(attn, k, dim=1).indices
    hits = kept[top].float().mean(1)
    mass = attn[:, kept].sum(1) / attn.sum(1)
    return hits.tolist(), mass.tolist()


def run(model_dir: Path, per_setting: int, budgets, policies, progress=True) -> dict:
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    eager = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32,
                                                            attn_implementation="eager").eval()  # fmt: skip
    processor = AutoProcessor.from_pretrained(model_dir)
    samples = eval_samples(per_setting, settings=SETTINGS[1:3], forms=("readout",))  # 2 and 4 images
    acc: dict = {}
    for s in tqdm(samples, desc="hit rate", unit="question", disable=not progress):
        full = generate(model, processor, s.messages(), images=s.images, policy="full", budget=1.0,
                        max_new_tokens=MAX_TOKENS)  # fmt: skip
        attn = decoded_attention(eager, processor, s, full.tokens)
        words = [processor.tokenizer.decode([t]).strip().lower() for t in full.tokens]
        content = [w in CONTENT_WORDS for w in words]
        for policy in policies:
            for budget in budgets:
                res = generate(model, processor, s.messages(), images=s.images, policy=policy, budget=budget,
                               max_new_tokens=1)  # fmt: skip
                a = acc.setdefault((policy, budget), {"hit": {}, "mass": {}, "content_hit": [], "content_mass": []})
                for layer, (la, kept) in enumerate(zip(attn, res.selection.keep, strict=True)):
                    hits, mass = hit_rates(la, kept)
                    for t, (h, ms) in enumerate(zip(hits, mass, strict=True)):
                        a["hit"].setdefault((t, layer), []).append(h)
                        a["mass"].setdefault((t, layer), []).append(ms)
                        if content[t]:
                            a["content_hit"].append(h)
                            a["content_mass"].append(ms)
    out = {}
    for (p, b), a in acc.items():
        tokens = 1 + max(t for t, _ in a["hit"])
        layers = 1 + max(layer for _, layer in a["hit"])
        grid = [[_mean(a["hit"].get((t, layer), [])) for layer in range(layers)] for t in range(tokens)]
        mass = [[_mean(a["mass"].get((t, layer), [])) for layer in range(layers)] for t in range(tokens)]
        counts = [len(a["hit"].get((t, 0), [])) for t in range(tokens)]
        out[f"{p}@{b:g}"] = {"policy": p, "budget": b, "questions": len(samples), "answers_reaching_token": counts,
                             "hit_rate": grid, "mass_covered": mass,  # [decoded token][layer]
                             "hit_rate_per_layer": layer_means(grid),
                             "hit_rate_all": _mean([h for v in a["hit"].values() for h in v]),
                             "hit_rate_content": _mean(a["content_hit"]),
                             "mass_content": _mean(a["content_mass"])}  # fmt: skip
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def layer_means(grid: list[list[float]]) -> list[float]:
    """Per layer, the mean over decoded tokens of a `[token][layer]` grid; a token no answer reached
    (NaN) counts for nothing. The one per-layer figure of the printed table and the rendered one."""
    return [_mean([row[layer] for row in grid if row[layer] == row[layer]]) for layer in range(len(grid[0]))]


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for policy in dict.fromkeys(r["policy"] for r in results.values()):
        rows = [r for r in results.values() if r["policy"] == policy]
        fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.8), squeeze=False)
        for ax, r in zip(axes[0], rows, strict=True):
            cmap = plt.get_cmap("viridis")
            # a token position reached by fewer than 3 answers is noise (fewer questions: all of them)
            tokens = [t for t, n in enumerate(r["answers_reaching_token"]) if n >= min(3, r["questions"])]
            layers = range(len(r["hit_rate"][0]))
            for t in tokens:
                ax.plot(layers, r["hit_rate"][t], marker=".", color=cmap(t / max(1, len(tokens))),
                        label=f"token {t + 1}")  # fmt: skip
            ax.set(xlabel="layer", ylabel="top-k hit rate", ylim=(0, 1.02), xticks=list(layers),
                   title=f"{policy} @ {r['budget']:g}: each decoded token of a readout")  # fmt: skip
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out_dir / f"accuracy_hit_rate_{policy}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def table(results: dict) -> str:
    lines = [f"{'policy@budget':<24}{'hit rate per layer (mean over tokens)':>44}{'all':>7}{'content':>9}"
             f"{'mass (content)':>16}"]  # fmt: skip
    for key, r in results.items():
        per = " ".join(f"{h:.2f}" for h in r["hit_rate_per_layer"])
        lines.append(f"{key:<24}{per:>44}{r['hit_rate_all']:>7.3f}{r['hit_rate_content']:>9.3f}"
                     f"{r['mass_content']:>16.3f}")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-setting", type=int, default=8)
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
