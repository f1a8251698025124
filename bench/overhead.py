"""Prefill overhead of VL-Cache scoring: stock vs plugin `full` vs plugin `vlcache`, interleaved, one run.

For each prompt length, `--repeats` rounds of (stock, plugin full, plugin vlcache@0.1), each a fresh
prompt (new images) with one output token, so TTFT is the prefill. `full` isolates the plugin's
bookkeeping (per-layer tables, slot translation); `vlcache` adds the post-vision scoring, selection and
eviction. Reported: median TTFT per side, the overheads against stock, and the plugin's own
`scoring_ms` (time inside `attention_stats` + `select`) as a share of stock prefill.

    .venv/bin/python -m bench.overhead [--lengths 4000 16000 32000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

from bench.harness import (
    RESULTS,
    Servers,
    add_attach_args,
    bench_server_config,
    flush,
    generate_body,
    images_for,
    noise_image,
    progress,
    prompt_text,
    run_batch,
    write_json,
)
from vlmodels.bench_qwen2vl import ensure_bench_qwen2vl

SIDES = (
    ("stock", None),
    ("full", {"policy": "full", "budget": 1.0}),
    ("vlcache", {"policy": "vlcache", "budget": 0.1}),
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4000, 16000, 32000])
    parser.add_argument("--repeats", type=int, default=3)
    add_attach_args(parser)
    parser.add_argument("--model", default=None)
    parser.add_argument("--name", default="overhead")
    args = parser.parse_args(argv)

    from transformers import AutoProcessor

    model = args.model or ensure_bench_qwen2vl()
    processor = AutoProcessor.from_pretrained(model)
    capacity = max(args.lengths) + 512
    rows, seed = [], 0
    with Servers(args.name, {"stock": args.stock_url, "plugin": args.plugin_url}) as servers:
        urls = {
            "stock": servers.start(
                "stock", bench_server_config(model, plugin=False, max_total_tokens=capacity, max_running=1)
            ),
            "plugin": servers.start(
                "plugin", bench_server_config(model, plugin=True, max_total_tokens=capacity, max_running=1)
            ),
        }
        for _, vl in SIDES[:2]:
            run_batch(
                urls["stock" if vl is None else "plugin"],
                [generate_body(prompt_text(processor, 1), [noise_image(10**6)], 1, vl)],
            )
        for length in args.lengths:
            n_img = images_for(length)
            text = prompt_text(processor, n_img)
            ttft = {side: [] for side, _ in SIDES}
            scoring, prompt_tokens = [], 0
            for rep in range(args.repeats):
                for side, vl in SIDES:
                    url = urls["stock" if vl is None else "plugin"]
                    flush(url)
                    seed += 1
                    (t,) = run_batch(
                        url, [generate_body(text, [noise_image(seed * 1000 + j) for j in range(n_img)], 1, vl)]
                    )
                    ttft[side].append(t.ttft_s)
                    prompt_tokens = int(t.meta["prompt_tokens"])
                    if side == "vlcache":
                        scoring.append(float(t.meta["vl_cache"][0]["scoring_ms"]) / 1000)
                progress(
                    f"{length} tokens, round {rep + 1}/{args.repeats}: "
                    + ", ".join(f"{s} {v[-1]:.2f}s" for s, v in ttft.items())
                )
            med = {side: statistics.median(v) for side, v in ttft.items()}
            rows.append(
                {
                    "prompt_tokens": prompt_tokens,
                    "ttft_s": ttft,
                    "median_ttft_s": med,
                    "full_overhead": med["full"] / med["stock"] - 1,
                    "vlcache_overhead": med["vlcache"] / med["stock"] - 1,
                    "scoring_overhead_vs_full": med["vlcache"] / med["full"] - 1,
                    "scoring_s": scoring,
                    "scoring_share_of_stock_prefill": statistics.median(scoring) / med["stock"],
                }
            )
    print(
        f"\n{'prompt':>7}{'stock s':>9}{'full s':>9}{'vlcache s':>10}{'full/stock':>11}{'vlc/stock':>10}{'vlc/full':>9}{'scoring s':>10}{'scoring/stock':>14}"
    )
    for r in rows:
        m = r["median_ttft_s"]
        print(
            f"{r['prompt_tokens']:>7}{m['stock']:>9.2f}{m['full']:>9.2f}{m['vlcache']:>10.2f}{1 + r['full_overhead']:>11.3f}"
            f"{1 + r['vlcache_overhead']:>10.3f}{1 + r['scoring_overhead_vs_full']:>9.3f}{statistics.median(r['scoring_s']):>10.3f}"
            f"{100 * r['scoring_share_of_stock_prefill']:>13.1f}%"
        )
    path = write_json(args.name, {"rows": rows})
    plot(rows, RESULTS / f"{args.name}.png")
    progress(f"wrote {path}")


def plot(rows, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["prompt_tokens"] for r in rows]
    for side, _ in SIDES:
        ax.plot(xs, [r["median_ttft_s"][side] for r in rows], marker="o", label=side)
    ax.set(
        xlabel="prompt tokens",
        ylabel="prefill (TTFT) s, median",
        title="Prefill: stock vs plugin full vs vlcache scoring",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
