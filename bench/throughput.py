"""Throughput of a memory-bound server under a fixed open-loop load, through the gateway: stock vs budget 0.1.

Two SGLang servers on the benchmark model with the same small KV pool (`--max-total-tokens`), each
behind its own gateway (`vlcache-serve --backend-url`). The same schedule of requests (Poisson
arrivals at `--rate` per second, seeded; each a streamed chat completion with one 980x980 image, about
1,250 prompt tokens) is sent to each in turn. Reported per side: completed requests per second (first
send to last finish), output tokens per second, p50/p99 TTFT and latency, and the peak number of
requests decoding at once (from the client's timelines: first token to last token).

What bounds the gain: SGLang admits a request only if its whole prompt fits uncompressed (prefill
happens before compression) and reserves room for the `max_new_tokens` of every running request, so
the plugin's saving is the prompt's (1 - budget), not the decode tail; and once memory no longer binds,
prefill compute does (every request is prefilled in full on both sides).

    .venv/bin/python -m bench.throughput [--requests 48 --rate 2 --max-total-tokens 4096 --max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
import zlib

import httpx

from bench.harness import (
    RESULTS,
    Servers,
    add_attach_args,
    bench_server_config,
    noise_image,
    percentile,
    progress,
    write_json,
)
from service.sglang_process import free_port
from testkit import wait_until_ready
from vlmodels.bench_qwen2vl import ensure_bench_qwen2vl


@contextlib.contextmanager
def gateway(backend_url: str, name: str):
    """`vlcache-serve` attached to `backend_url`, on a free loopback port, until the block ends."""
    port = free_port()
    RESULTS.mkdir(exist_ok=True)
    log = open(RESULTS / f"throughput.gateway-{name}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--backend-url", backend_url, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            url, timeout_s=120, name="gateway",
            stopped=lambda: None if proc.poll() is None else f"gateway exited with {proc.returncode}; see {log.name}",
        )  # fmt: skip
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()
        log.close()


async def one_request(client, url, body, start_at, t0) -> dict:
    await asyncio.sleep(max(0.0, t0 + start_at - time.perf_counter()))
    sent = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            return {
                "sent": sent - t0,
                "status": resp.status_code,
                "error": (await resp.aread())[:300].decode(errors="replace"),
            }
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
    return {
        "sent": sent - t0,
        "status": 200,
        "first": (first or sent) - t0,
        "done": (last or sent) - t0,
        "chunks": tokens,
    }


def run_load(url: str, bodies: list[dict], arrivals: list[float]) -> list[dict]:
    async def go():
        async with httpx.AsyncClient(timeout=600) as client:
            t0 = time.perf_counter()
            return await asyncio.gather(
                *(one_request(client, url, b, a, t0) for b, a in zip(bodies, arrivals, strict=True))
            )

    return asyncio.run(go())


def peak_decoding(results) -> int:
    events = sorted(
        [(r["first"], 1) for r in results if r["status"] == 200]
        + [(r["done"], -1) for r in results if r["status"] == 200],
        key=lambda e: (e[0], e[1]),
    )
    peak = cur = 0
    for _, delta in events:
        cur += delta
        peak = max(peak, cur)
    return peak


def summarise(side: str, results: list[dict], max_new_tokens: int) -> dict:
    ok = [r for r in results if r["status"] == 200]
    if not ok:
        raise RuntimeError(f"{side}: every request failed, e.g. {results[0].get('status')}: {results[0].get('error')}")
    span = max(r["done"] for r in ok) - min(r["sent"] for r in results) if ok else float("nan")
    ttft = sorted(r["first"] - r["sent"] for r in ok)
    lat = sorted(r["done"] - r["sent"] for r in ok)
    return {
        "side": side,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": [r.get("error") for r in results if r["status"] != 200][:3],
        "req_per_s": len(ok) / span,
        "output_tok_per_s": sum(r["chunks"] for r in ok) / span,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p99_s": percentile(ttft, 0.99),
        "latency_p50_s": statistics.median(lat),
        "latency_p99_s": percentile(lat, 0.99),
        "peak_decoding": peak_decoding(results),
        "timelines": ok,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rate", type=float, default=2.0, help="open-loop arrivals per second (Poisson)")
    parser.add_argument("--max-total-tokens", type=int, default=4096, help="KV pool of each server, tokens")
    parser.add_argument("--max-running", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--image-side", type=int, default=980)
    add_attach_args(parser)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="throughput", help="results file stem under bench/results/")
    args = parser.parse_args(argv)

    model = args.model or ensure_bench_qwen2vl()
    rng = random.Random(args.seed)
    arrivals, t = [], 0.0
    for _ in range(args.requests):
        arrivals.append(t)
        t += rng.expovariate(args.rate)

    def bodies(side: str, vl: dict | None, model_id: str) -> list[dict]:
        out = []
        for i in range(args.requests):
            body = {
                "model": model_id,
                "max_tokens": args.max_new_tokens,
                "temperature": 0,
                "stream": True,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": noise_image(zlib.crc32(f"{side}/{i}".encode()), args.image_side)},
                            },
                            {"type": "text", "text": "Describe the image in detail."},
                        ],
                    }
                ],
                "ignore_eos": True,
            }
            if vl:
                body["vl_cache"] = vl
            out.append(body)
        return out

    rows = []
    for side, plugin, vl in (("stock", False, None), ("vlcache", True, {"policy": "vlcache", "budget": args.budget})):
        # One server at a time: each side gets the machine to itself.
        with Servers("throughput", {"stock": args.stock_url, "vlcache": args.plugin_url}) as servers:
            url = servers.start(
                side,
                bench_server_config(
                    model, plugin=plugin, max_total_tokens=args.max_total_tokens, max_running=args.max_running
                ),
            )
            with gateway(url, side) as gw:
                model_id = httpx.get(f"{gw}/v1/models", timeout=30).json()["data"][0]["id"]
                run_load(gw, bodies(side + "-warm", vl, model_id)[:1], [0.0])
                progress(f"{side}: {args.requests} requests at {args.rate}/s open loop")
                results = run_load(gw, bodies(side, vl, model_id), arrivals)
        rows.append(summarise(side, results, args.max_new_tokens))
        r = rows[-1]
        progress(
            f"{side}: {r['completed']} ok, {r['failed']} failed, {r['req_per_s']:.3f} req/s, peak decoding {r['peak_decoding']}"
        )

    print(
        f"\nKV pool {args.max_total_tokens} tokens, {args.requests} requests at {args.rate}/s, {args.max_new_tokens} output tokens each\n"
    )
    print(
        f"{'side':<9}{'ok':>4}{'fail':>5}{'req/s':>8}{'tok/s':>8}{'TTFT p50':>9}{'p99':>7}{'lat p50':>8}{'p99':>7}{'peak':>6}"
    )
    for r in rows:
        print(
            f"{r['side']:<9}{r['completed']:>4}{r['failed']:>5}{r['req_per_s']:>8.3f}{r['output_tok_per_s']:>8.1f}"
            f"{r['ttft_p50_s']:>9.2f}{r['ttft_p99_s']:>7.2f}{r['latency_p50_s']:>8.2f}{r['latency_p99_s']:>7.2f}{r['peak_decoding']:>6}"
        )
    ratio = rows[1]["req_per_s"] / rows[0]["req_per_s"]
    print(f"\nrequest throughput, vlcache@{args.budget} / stock: {ratio:.2f}x")
    write_json(args.name, {"args": vars(args), "rows": rows, "throughput_ratio": ratio})
    plot(rows, RESULTS / f"{args.name}.png")


def plot(rows, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        tl = sorted(r["timelines"], key=lambda x: x["sent"])
        ax.plot([x["sent"] for x in tl], [x["done"] - x["sent"] for x in tl], marker=".", label=f"{r['side']} latency")
        ax.plot([x["sent"] for x in tl], [x["first"] - x["sent"] for x in tl], ls=":", label=f"{r['side']} TTFT")
    ax.set(xlabel="arrival time (s)", ylabel="seconds", title="Open-loop load on a memory-bound server")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
