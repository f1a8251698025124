"""Decode speed and KV memory: stock SGLang vs the vlcache plugin, same prompts, pair by pair, one run.

Two servers on the benchmark model (`vlmodels/bench_qwen2vl.py`): stock (plugin installed, not
selected) and the plugin (`--radix-cache-backend vlcache`). For each prompt length and batch size, each
plugin setting (policy @ budget) runs right after a stock run of the same shape (fresh images each run,
so no prefix is shared), and its ratios are taken against that stock run. Per row: prefill (TTFT),
decode ms per step (see `bench/harness.py`), end to end for `--max-new-tokens` tokens, KV bytes held
after prefill, and two bounds of the decode speedup:
- the byte bound, (W + b*KV) / (W + b*KV_kept): a step reads the weights W once and each request's KV;
- the step-cost bound, S / (F_plugin + (S - F_stock) * KV_kept / KV): S is stock's step, F each server's
  step at a near-empty KV (a 4-token text prompt, measured at start). F is what a step costs whatever
  the KV (weights, and SGLang's per-step work, which on a CPU is most of it); the plugin can only shrink
  the rest, the KV part, and at best by KV / KV_kept.
`--repeats N` runs each pair N times (stock, plugin, stock, ...) and reports medians.

    .venv/bin/python -m bench.decode                 # the default grid (22 pairs)
    .venv/bin/python -m bench.decode --lengths 4000 --batches 1 --max-new-tokens 32   # a quick look
"""

from __future__ import annotations

import argparse
import statistics

from bench.harness import (
    RESULTS,
    Servers,
    add_attach_args,
    bench_server_config,
    decode_step_s,
    flush,
    generate_body,
    images_for,
    noise_image,
    progress,
    prompt_text,
    run_batch,
    write_json,
)
from vlmodels.bench_qwen2vl import decode_bytes, ensure_bench_qwen2vl

CORE = [("vlcache", 1.0), ("vlcache", 0.1)]  # what the batch > 1 and longest rows run (unless --full-grid)


def settings(args, length: int, batch: int) -> list[tuple[str, float]]:
    full = [("vlcache", b) for b in args.budgets] + [(p, 0.1) for p in args.baselines]
    if args.full_grid or (batch == 1 and length <= args.full_grid_up_to):
        return full
    return [s for s in full if s in CORE] or full[:2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4000, 16000, 32000], help="prompt tokens (about)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.2, 0.1, 0.05])
    parser.add_argument("--baselines", nargs="*", default=["snapkv", "pyramidkv", "streamingllm"])
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument(
        "--full-grid-up-to", type=int, default=16000, help="longest prompt that runs every setting at batch 1"
    )
    parser.add_argument("--batched-up-to", type=int, default=16000, help="longest prompt that runs batch > 1")
    parser.add_argument("--full-grid", action="store_true", help="every setting at every length and batch")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each pair (medians reported)")
    add_attach_args(parser)
    parser.add_argument("--model", default=None, help="model folder (default: build the benchmark model)")
    parser.add_argument("--name", default="decode", help="results file stem under bench/results/")
    args = parser.parse_args(argv)

    from transformers import AutoProcessor

    model = args.model or ensure_bench_qwen2vl()
    processor = AutoProcessor.from_pretrained(model)
    w_bytes, token_bytes = decode_bytes(model)
    plan = [
        (n, b, s)
        for n in args.lengths
        for b in args.batches
        if b == 1 or n <= args.batched_up_to
        for s in settings(args, n, b)
    ]
    capacity = max(b * (n + args.max_new_tokens + 256) for n, b, _ in plan)
    progress(f"{len(plan)} pairs (stock, plugin) to run; KV pool {capacity} tokens per server")

    rows, seed = [], 0
    with Servers(args.name, {"stock": args.stock_url, "plugin": args.plugin_url}) as servers:
        stock = servers.start(
            "stock", bench_server_config(model, plugin=False, max_total_tokens=capacity, max_running=max(args.batches))
        )
        plugin = servers.start(
            "plugin", bench_server_config(model, plugin=True, max_total_tokens=capacity, max_running=max(args.batches))
        )
        warm_text = prompt_text(processor, 1)
        for url, vl in ((stock, None), (plugin, {"policy": "full", "budget": 1.0})):  # one-time multimodal warm-up
            run_batch(url, [generate_body(warm_text, [noise_image(10**6)], 4, vl)])
        fixed = {
            "stock": fixed_step_ms(stock, None, args.max_new_tokens),
            "plugin": fixed_step_ms(plugin, {"policy": "full"}, args.max_new_tokens),
        }
        progress(f"step at a near-empty KV: stock {fixed['stock']:.1f} ms, plugin {fixed['plugin']:.1f} ms")
        payload = {"weights_bytes": w_bytes, "kv_bytes_per_token": token_bytes, "fixed_step_ms": fixed}
        for i, (length, batch, (policy, budget)) in enumerate(plan, 1):
            num_images = images_for(length)
            text = prompt_text(processor, num_images)
            measured = {"stock": [], "plugin": []}
            for _ in range(args.repeats):
                for side, url, vl in (("stock", stock, None), ("plugin", plugin, {"policy": policy, "budget": budget})):
                    flush(url)
                    bodies = []
                    for _ in range(batch):
                        seed += 1
                        images = [noise_image(seed * 1000 + j) for j in range(num_images)]
                        bodies.append(generate_body(text, images, args.max_new_tokens, vl))
                    measured[side].append(run_batch(url, bodies))
            rows.append(summarise(length, batch, policy, budget, measured, w_bytes, token_bytes, fixed))
            write_json(args.name, payload | {"rows": rows})  # partial
            r = rows[-1]
            progress(
                f"{i}/{len(plan)} {length} tok x{batch} {policy}@{budget}: decode {r['stock_step_ms']:.1f} -> "
                f"{r['plugin_step_ms']:.1f} ms/step ({r['decode_speedup']:.2f}x, byte bound {r['byte_bound']:.2f}x, "
                f"step-cost bound {r['cost_bound']:.2f}x)"
            )
    print_table(rows, w_bytes, token_bytes, fixed)
    path = write_json(args.name, payload | {"rows": rows})
    plot(rows, RESULTS / f"{args.name}.png")
    progress(f"wrote {path} and {RESULTS / (args.name + '.png')}")


def fixed_step_ms(url: str, vl: dict | None, max_new_tokens: int, runs: int = 3) -> float:
    """Median ms per decode step of a 4-token text prompt: what a step costs with (almost) no KV to read."""
    body = generate_body("Describe a cat.", [], max_new_tokens, vl)
    return statistics.median(1000 * decode_step_s(run_batch(url, [body])) for _ in range(runs))


def summarise(length, batch, policy, budget, measured, w_bytes, token_bytes, fixed) -> dict:
    """One row from `measured[side]`: the side's batches, one per repeat (medians over them)."""
    stock_runs, plugin_runs = measured["stock"], measured["plugin"]
    plugin = plugin_runs[0]  # prompt sizes and reports: the same in every repeat
    prompt_tokens = [int(t.meta["prompt_tokens"]) for t in plugin]
    reports = [(t.meta.get("vl_cache") or [{}])[0] for t in plugin]
    kv_full = sum(n * token_bytes for n in prompt_tokens)
    kv_kept = sum(int(r.get("kv_bytes_kept", n * token_bytes)) for r, n in zip(reports, prompt_tokens, strict=True))
    median = lambda f, runs: statistics.median(f(b) for b in runs)  # noqa: E731
    wall = lambda batch_: max(t.stamps[-1][0] for t in batch_) - min(t.sent for t in batch_)  # noqa: E731
    prefill = lambda batch_: statistics.mean(t.ttft_s for t in batch_)  # noqa: E731
    stock_steps, plugin_steps = [decode_step_s(b) for b in stock_runs], [decode_step_s(b) for b in plugin_runs]
    step_stock, step_plugin = statistics.median(stock_steps), statistics.median(plugin_steps)
    wall_stock, wall_plugin = median(wall, stock_runs), median(wall, plugin_runs)
    bound = (w_bytes + kv_full) / (w_bytes + kv_kept)
    stock_ms = 1000 * step_stock
    cost_bound = stock_ms / (fixed["plugin"] + max(0.0, stock_ms - fixed["stock"]) * kv_kept / kv_full)
    return {
        "prompt_tokens": statistics.mean(prompt_tokens),
        "batch": batch,
        "policy": policy,
        "budget": budget,
        "repeats": len(plugin_runs),
        "stock_prefill_ms": 1000 * median(prefill, stock_runs),
        "plugin_prefill_ms": 1000 * median(prefill, plugin_runs),
        "stock_step_ms": stock_ms,
        "plugin_step_ms": 1000 * step_plugin,
        "stock_step_ms_runs": [1000 * x for x in stock_steps],
        "plugin_step_ms_runs": [1000 * x for x in plugin_steps],
        "stock_e2e_ms": 1000 * wall_stock,
        "plugin_e2e_ms": 1000 * wall_plugin,
        "kv_bytes_stock": kv_full,
        "kv_bytes_plugin": kv_kept,
        "kept_fraction_per_request": [
            int(r.get("kv_bytes_kept", 0)) / (n * token_bytes) if r else 1.0
            for r, n in zip(reports, prompt_tokens, strict=True)
        ],
        "scoring_ms": [float(r.get("scoring_ms", 0.0)) for r in reports],
        "output_tokens": [t.output_tokens for t in plugin],
        "decode_speedup": step_stock / step_plugin,
        "e2e_speedup": wall_stock / wall_plugin,
        "byte_bound": bound,
        "fraction_of_bound": (step_stock / step_plugin) / bound,
        "cost_bound": cost_bound,
        "fraction_of_cost_bound": (step_stock / step_plugin) / cost_bound,
        "sglang_first_token_latency_s": [t.meta.get("first_token_latency") for t in plugin],
    }


def print_table(rows, w_bytes, token_bytes, fixed) -> None:
    print(
        f"\nbenchmark model: {w_bytes / 1e6:.1f} MB of LM weights, {token_bytes / 1024:.0f} KiB of KV per token (fp32); "
        f"a step at a near-empty KV: stock {fixed['stock']:.1f} ms, plugin {fixed['plugin']:.1f} ms\n"
    )
    head = (
        f"{'prompt':>7}{'bs':>3} {'setting':<16}{'prefill s':>10}{'/stock':>7}{'step ms':>9}{'stock':>8}{'speedup':>8}"
        f"{'bound':>7}{'of bnd':>7}{'cost bd':>8}{'of cost':>8}{'e2e s':>7}{'e2e x':>7}{'KV MB':>8}{'stock':>8}"
        f"  {'kept/full (min-max)'}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        kept = r["kept_fraction_per_request"]
        print(
            f"{r['prompt_tokens']:>7.0f}{r['batch']:>3} {r['policy'] + '@' + str(r['budget']):<16}"
            f"{r['plugin_prefill_ms'] / 1000:>10.2f}{r['plugin_prefill_ms'] / r['stock_prefill_ms']:>7.2f}"
            f"{r['plugin_step_ms']:>9.1f}{r['stock_step_ms']:>8.1f}{r['decode_speedup']:>7.2f}x{r['byte_bound']:>6.2f}x"
            f"{r['fraction_of_bound']:>7.2f}{r['cost_bound']:>7.2f}x{r['fraction_of_cost_bound']:>8.2f}"
            f"{r['plugin_e2e_ms'] / 1000:>7.1f}{r['e2e_speedup']:>6.2f}x"
            f"{r['kv_bytes_plugin'] / 1e6:>8.1f}{r['kv_bytes_stock'] / 1e6:>8.1f}  {min(kept):.3f}-{max(kept):.3f}"
        )


def plot(rows, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for length, batch in sorted({(round(r["prompt_tokens"], -3), r["batch"]) for r in rows}):
        mine = sorted(
            (
                r
                for r in rows
                if r["policy"] == "vlcache" and r["batch"] == batch and round(r["prompt_tokens"], -3) == length
            ),
            key=lambda r: r["budget"],
        )
        if mine:
            left.plot(
                [r["budget"] for r in mine],
                [r["decode_speedup"] for r in mine],
                marker="o",
                label=f"{length:.0f} tok, bs {batch}",
            )
            left.plot(
                [r["budget"] for r in mine], [r["byte_bound"] for r in mine], ls=":", color=left.lines[-1].get_color()
            )
    left.set(
        xscale="log",
        xlabel="budget (vlcache)",
        ylabel="decode speedup vs stock",
        title="measured (solid) vs byte bound (dotted)",
    )
    left.legend(fontsize=8)
    labels = [f"{r['prompt_tokens'] / 1000:.0f}k bs{r['batch']} {r['policy']}@{r['budget']}" for r in rows]
    ys = range(len(rows))
    right.barh([y - 0.2 for y in ys], [r["fraction_of_bound"] for r in rows], height=0.4, label="of the byte bound")
    right.barh(
        [y + 0.2 for y in ys], [r["fraction_of_cost_bound"] for r in rows], height=0.4, label="of the step-cost bound"
    )
    right.set_yticks(ys, labels, fontsize=7)
    right.axvline(0.9, color="k", ls="--", lw=0.8)
    right.legend(fontsize=7)
    right.set(xlabel="measured speedup / bound", title="fraction of each bound (target 0.9)")
    fig.suptitle("SGLang CPU, benchmark Qwen2-VL: stock vs vlcache plugin, decode step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
