"""KV memory kept per policy and budget, measured in the real SGLang runtime with the vlcache plugin.

Starts SGLang (CPU engine, embedded tiny Qwen2-VL, plugin selected), sends the same two-image chat
request under each policy x budget (radix cache flushed before each, so the request owns its whole
prompt KV), and prints, per run: the realised budget, KV bytes kept / full,
physical slots freed per layer, scoring time and end-to-end latency; then the ratio to `full`.
Writes `bench/results/kv_compression.png` (KV kept vs budget; per-layer budgets at 0.1).

    .venv/bin/python bench/kv_compression.py [--budgets 0.05 0.1 0.25 0.5 1.0] [--policies vlcache h2o ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.harness import png_data_url
from service.sglang_process import SGLangServer, SGLangServerConfig, free_port
from testkit import flush_when_idle
from vlmodels.tiny_qwen2vl import ensure_tiny_qwen2vl

RESULTS = Path(__file__).resolve().parent / "results"


def _image(size, color, stripe):
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], stripe):
        img.paste((255 - color[0], 255 - color[1], 255 - color[2]), (x, 0, x + stripe // 3, size[1]))
    return png_data_url(img)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--policies", nargs="+", default=["vlcache", "h2o", "snapkv", "pyramidkv", "streamingllm"])
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    from transformers import AutoProcessor

    model = ensure_tiny_qwen2vl()
    processor = AutoProcessor.from_pretrained(model)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                             {"type": "text", "text": "Compare the two images."}]}]  # fmt: skip
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    images = [_image((448, 448), (200, 30, 30), 24), _image((448, 336), (20, 90, 200), 40)]

    config = SGLangServerConfig(model_path=str(model), port=free_port())
    runs = [("full", 1.0)] + [(p, b) for p in args.policies for b in args.budgets]
    rows = []
    RESULTS.mkdir(exist_ok=True)
    log = open(RESULTS / "kv_compression.sglang.log", "w")
    with SGLangServer(config, log=log) as server, httpx.Client(base_url=server.url, timeout=300) as client:
        for i, (policy, budget) in enumerate([("full", 1.0)] + runs):  # the first run warms SGLang up
            body = {
                "text": prompt, "image_data": images,
                "sampling_params": {"temperature": 0, "max_new_tokens": args.max_new_tokens, "ignore_eos": True,
                                    "custom_params": {"vl_cache": {"policy": policy, "budget": budget}}},
            }  # fmt: skip
            # Empty radix tree: the request owns its whole prompt KV (a cached prefix would stay with the
            # tree, and only the request's own tokens could be freed).
            flush_when_idle(client, 60.0)
            start = time.perf_counter()
            resp = client.post("/generate", json=body)
            resp.raise_for_status()
            e2e_ms = (time.perf_counter() - start) * 1000
            if i == 0:
                continue
            (report,) = resp.json()["meta_info"]["vl_cache"]
            rows.append({**report, "e2e_ms": e2e_ms})
            kept = report["kv_bytes_kept"] / report["kv_bytes_full"]
            print(f"[bench] {len(rows)}/{len(runs)} {policy} @ {budget}: kept {kept:.3f}", flush=True)

    full = rows[0]
    print(f"\nprompt: {full['prompt_tokens']} tokens ({full['visual_tokens']} visual), "
          f"{len(full['kept_tokens_per_layer'])} layers, KV full = {full['kv_bytes_full']:,} bytes\n")  # fmt: skip
    header = (
        f"{'policy':<13}{'budget':>7}{'realised':>9}{'kept/full':>10}{'KV kept (B)':>13}{'kept per layer':>22}"
        f"{'freed per layer':>24}{'score ms':>9}{'e2e ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['policy']:<13}{r['budget']:>7.2f}{r['realized_budget']:>9.3f}"
            f"{r['kv_bytes_kept'] / r['kv_bytes_full']:>10.3f}"
            f"{r['kv_bytes_kept']:>13,}{str(r['kept_tokens_per_layer']):>22}{str(r['freed_slots_per_layer']):>24}"
            f"{r['scoring_ms']:>9.1f}{r['e2e_ms']:>8.0f}"
        )
    ratios = [
        f"{r['policy']}@{r['budget']}: {full['kv_bytes_full'] / r['kv_bytes_kept']:.1f}x smaller"
        for r in rows[1:]
        if r["budget"] == 0.1
    ]
    print("\nratio to full (KV bytes): " + ", ".join(ratios))
    _plot(rows, args.budgets)


def _plot(rows, budgets) -> None:
    """Left: KV kept vs requested budget (renormalised budgets hit it exactly). Right: how each policy
    spreads a 0.1 budget over the layers (VL-Cache by layer density, PyramidKV by depth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    policies = list(dict.fromkeys(r["policy"] for r in rows[1:]))
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        left.plot(
            [r["budget"] for r in mine],
            [r["kv_bytes_kept"] / r["kv_bytes_full"] for r in mine],
            marker="o",
            label=policy,
        )
    left.set(
        xlabel="requested budget", ylabel="KV bytes kept / full", xscale="log", yscale="log", title="Prompt KV kept"
    )
    left.legend()
    at = [r for r in rows if r["budget"] == 0.1 and r["policy"] in policies]
    layers = len(rows[0]["kept_tokens_per_layer"])
    width = 0.8 / max(1, len(at))
    for i, r in enumerate(at):
        right.bar([layer + i * width for layer in range(layers)], r["kept_tokens_per_layer"], width, label=r["policy"])
    right.set(
        xlabel="layer", ylabel="prompt tokens kept", title="Per-layer budgets at budget 0.1", xticks=range(layers)
    )
    right.legend()
    fig.suptitle(f"SGLang + vlcache plugin, tiny Qwen2-VL, {rows[0]['prompt_tokens']}-token 2-image prompt")
    fig.tight_layout()
    out = RESULTS / "kv_compression.png"
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
