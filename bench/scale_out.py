"""One worker against two behind SMG: the same Locust load (loadtest/locustfile.py) against
`make serve-router`'s layout with 1 and then 2 SGLang workers, one after the other in one run.

    python -m bench.scale_out [--users 8] [--duration 3m] [--workers 1 2]   # `make bench-scale-out`

Each side: the gateway (sending each chat's routing key) -> SMG -> N workers, all on this machine,
so the sides share its cores: two workers on two cores split them rather than add to them. Prints
per side requests, failures, QPS, TTFT and inter-token latency p50/p99, and the ratios to the first
side; writes bench/results/scale_out.json and scale_out.png. Locust's own files per side go to
bench/results/scale_out_<N>w/ (git-ignored).
"""

from __future__ import annotations

import argparse
import sys

from bench.harness import RESULTS, progress, sigterm_raises_exit, write_json
from loadtest.run import local_service, run_locust, summary

FIELDS = (("ttft_ms", "TTFT"), ("itl_ms", "inter-token"))


def run_side(workers: int, users: int, duration: str, extra: list[str]) -> dict:
    out = RESULTS / f"scale_out_{workers}w"
    progress(f"{workers} worker(s): starting the layout")
    with local_service(workers) as url:
        progress(f"{workers} worker(s): Locust, {users} users for {duration}")
        rc = run_locust(url, out, users, spawn_rate=users, duration=duration, extra=extra)
    figures = summary(out)
    return {"workers": workers, "locust_exit_code": rc, **figures}


def table(rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        "| workers | requests | failures | QPS | TTFT p50 / p99 ms | inter-token p50 / p99 ms | QPS vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["qps"] / base["qps"] if r["qps"] and base["qps"] else float("nan")
        cells = [f"{r[f]['p50']:.0f} / {r[f]['p99']:.0f}" for f, _ in FIELDS]
        lines.append(f"| {r['workers']} | {r['requests']} | {r['all_failures']} | {r['qps']:.2f} | "
                     f"{cells[0]} | {cells[1]} | {ratio:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    names = [f"{r['workers']} worker{'s' * (r['workers'] > 1)}" for r in rows]
    axes[0].bar(names, [r["qps"] or 0 for r in rows], color="tab:blue")
    axes[0].set_title("throughput (requests/s)")
    for ax, (field, title) in zip(axes[1:], FIELDS, strict=True):
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r[field]["p50"] for r in rows], 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [r[field]["p99"] for r in rows], 0.4, label="p99")
        ax.set_xticks(list(x), names)
        ax.set_title(f"{title} (ms)")
        ax.legend()
    fig.suptitle("The same Locust load through SMG: one worker vs two (one machine)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", default="3m", help="Locust's -t per side")
    parser.add_argument("--name", default="scale_out")
    args, locust_extra = parser.parse_known_args(argv)  # the rest (e.g. --max-tokens) goes to Locust
    with sigterm_raises_exit():
        rows = [run_side(n, args.users, args.duration, locust_extra) for n in args.workers]
    print(table(rows))
    payload = {"users": args.users, "duration": args.duration, "locust_args": locust_extra, "rows": rows}
    print(f"[bench] {write_json(args.name, payload)}")
    plot(rows, RESULTS / f"{args.name}.png")
    return max(r["locust_exit_code"] for r in rows)


if __name__ == "__main__":
    sys.exit(main())
