"""Many image chats sharing one KV pool: stock SGLang vs the plugin with `reuse: lazy`, `compressed`, `full`.

U users (`--users`, 32), each a chat of 3 to 5 turns about its own 1 or 2 images (seeded noise images
of `--image-side` pixels), start at Poisson arrivals and wait a seeded think time between a reply and
their next question: a closed loop per user, the same schedule for every side. The follow-ups are
text-only about the same images (the gateway sends the images again with every turn; so does this
script). All users share one server whose KV pool (`--max-total-tokens`) holds the full KV of about
U/8 chats at their last turn (`--pool-chats`): a stock tree keeps a few chats; the others are evicted
and their images prefilled again at their next turn.

Sides, each on its own fresh tree (one server at a time has the machine; the plugin sides share one
server, flushed between them):

    stock        stock SGLang (radix cache on)
    full         plugin, policy full (stock behaviour through the plugin)
    lazy         plugin, vlcache @ budget, reuse lazy (the tree keeps each turn's prompt KV exact)
    compressed   plugin, vlcache @ budget, reuse compressed (the tree keeps each turn compressed)

Per side: completed turns per second (first send to last reply), time to first token p50/p99 by turn
number (client-side: send to first streamed chunk, queueing included), cached tokens per turn (SGLang's
`cached_tokens`), prompt tokens actually prefilled (prompt - cached), and the peak number of chats
resident in the tree. Residency is observed the same way on every side: a chat was resident from the
end of turn k to the start of turn k+1 when turn k+1 found its images cached (cached tokens >= the
chat's visual tokens); the time after a chat's last turn is not counted. Prints the table and the ratios
to stock, writes `bench/results/sessions.{json,png}` (timeline: turns completed, chats resident).

    .venv/bin/python -m bench.sessions [--users 32 --image-side 672 --max-new-tokens 24 --think-mean 2]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass

import httpx

from bench.harness import (
    RESULTS,
    Servers,
    add_attach_args,
    bench_server_config,
    chat_prompt,
    flush,
    generate_body,
    noise_image,
    percentile,
    progress,
    run_batch,
    stream_generate,
    write_json,
)
from vlmodels.bench_qwen2vl import ensure_bench_qwen2vl

SIDES = ("stock", "full", "lazy", "compressed")
QUESTIONS = (
    "Describe every image in detail.",
    "Which part of it is the brightest?",
    "What colours are in the top left corner?",
    "Is there any pattern that repeats?",
    "Summarise what you said in one sentence.",
)


@dataclass(frozen=True)
class Chat:
    """One user's chat: its image seeds, when it starts, and the think time before each follow-up."""

    user: int
    image_seeds: tuple[int, ...]
    start_s: float
    think_s: tuple[float, ...]

    @property
    def turns(self) -> int:
        return len(self.think_s) + 1


def schedule(users: int, seed: int, arrival_rate: float, think_mean: float) -> list[Chat]:
    rng = random.Random(seed)
    chats, t = [], 0.0
    for u in range(users):
        n_images, turns = rng.choice((1, 2)), rng.randint(3, 5)
        seeds = tuple(1000 * (u + 1) + i for i in range(n_images))
        think = tuple(rng.expovariate(1 / think_mean) if think_mean > 0 else 0.0 for _ in range(turns - 1))
        chats.append(Chat(u, seeds, t, think))
        t += rng.expovariate(arrival_rate)
    return chats


def ceiling_turns_per_s(chats: list[Chat]) -> float:
    """Turns per second if every turn took no time: the schedule's own arrivals and think times bound it."""
    return sum(c.turns for c in chats) / max(c.start_s + sum(c.think_s) for c in chats)


def visual_tokens(image_side: int) -> int:
    return (image_side // 28) ** 2  # Qwen2-VL: 14-px patches merged 2x2


def final_turn_tokens(processor, chat: Chat, image_side: int, max_new_tokens: int) -> int:
    """KV tokens of a chat after its last reply (answers stood in by `max_new_tokens` one-token words)."""
    filler = " ".join(["ok"] * max_new_tokens)
    history = [(QUESTIONS[t], filler if t + 1 < chat.turns else None) for t in range(chat.turns)]
    text_ids = processor.tokenizer(chat_prompt(processor, "image", len(chat.image_seeds), history))["input_ids"]
    return len(text_ids) + len(chat.image_seeds) * (visual_tokens(image_side) - 1) + max_new_tokens


def vl_options(side: str, budget: float) -> dict | None:
    return {
        "stock": None,
        "full": {"policy": "full"},
        "lazy": {"policy": "vlcache", "budget": budget, "reuse": "lazy"},
        "compressed": {"policy": "vlcache", "budget": budget, "reuse": "compressed"},
    }[side]


async def run_chat(client, url, processor, chat: Chat, images: list[str], vl, args, t0: float) -> list[dict]:
    """One user's turns in order, each after its think time; a failed turn ends the chat (recorded)."""
    await asyncio.sleep(max(0.0, t0 + chat.start_s - time.perf_counter()))
    history, rows = [], []
    for turn in range(chat.turns):
        history.append((QUESTIONS[turn], None))
        body = generate_body(chat_prompt(processor, "image", len(images), history), images, args.max_new_tokens, vl)
        row = {"user": chat.user, "turn": turn + 1, "images": len(images)}
        try:
            timed = await stream_generate(client, url, body)
        except (RuntimeError, httpx.HTTPError) as exc:
            rows.append({**row, "ok": False, "error": str(exc)[:300], "sent": time.perf_counter() - t0})
            return rows
        rows.append({**row, "ok": True, "sent": timed.sent - t0, "first": timed.stamps[0][0] - t0,
                     "done": timed.stamps[-1][0] - t0, "prompt_tokens": timed.meta["prompt_tokens"],
                     "cached_tokens": timed.meta.get("cached_tokens", 0)})  # fmt: skip
        finish = timed.meta.get("finish_reason") or {}
        if finish.get("type") == "abort":  # SGLang streams an abort (e.g. a prompt over the pool) as a reply
            rows[-1].update(ok=False, error=str(finish.get("message"))[:300])
            return rows
        history[-1] = (QUESTIONS[turn], timed.text)
        if turn + 1 < chat.turns:
            await asyncio.sleep(chat.think_s[turn])
    return rows


def run_side(url: str, processor, chats: list[Chat], vl, args) -> list[dict]:
    images = {c.user: [noise_image(s, args.image_side) for s in c.image_seeds] for c in chats}

    async def go():
        async with httpx.AsyncClient(timeout=3600) as client:
            t0 = time.perf_counter()
            per_chat = await asyncio.gather(
                *(run_chat(client, url, processor, c, images[c.user], vl, args, t0) for c in chats)
            )
        return [row for rows in per_chat for row in rows]

    return asyncio.run(go())


def resident_intervals(turns: list[dict], tokens_per_image: int) -> list[tuple[float, float]]:
    """(from, to) per chat and turn gap in which the chat's KV sat in the tree (see the module docstring)."""
    by_user: dict[int, list[dict]] = {}
    for r in turns:
        by_user.setdefault(r["user"], []).append(r)
    spans = []
    for rows in by_user.values():
        rows.sort(key=lambda r: r["turn"])
        for before, after in zip(rows, rows[1:], strict=False):
            if before["ok"] and after["ok"] and after["cached_tokens"] >= after["images"] * tokens_per_image:
                spans.append((before["done"], after["sent"]))
    return spans


def resident_curve(spans: list[tuple[float, float]]) -> list[tuple[float, int]]:
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    curve, now = [(0.0, 0)], 0
    for t, delta in events:
        now += delta
        curve.append((t, now))
    return curve


def summarise(side: str, turns: list[dict], tokens_per_image: int) -> dict:
    ok = [r for r in turns if r["ok"]]
    if not ok:
        raise RuntimeError(f"{side}: every turn failed, e.g. {turns[0].get('error')}")
    span = max(r["done"] for r in ok) - min(r["sent"] for r in turns)
    ttft = lambda rows: [r["first"] - r["sent"] for r in rows]  # noqa: E731
    by_turn = {}
    for n in sorted({r["turn"] for r in ok}):
        rows = [r for r in ok if r["turn"] == n]
        by_turn[n] = {"turns": len(rows), "ttft_p50_s": statistics.median(ttft(rows)),
                      "ttft_p99_s": percentile(ttft(rows), 0.99),
                      "cached_mean": statistics.fmean(r["cached_tokens"] for r in rows),
                      "prompt_mean": statistics.fmean(r["prompt_tokens"] for r in rows)}  # fmt: skip
    follow = [r for r in ok if r["turn"] > 1]
    curve = resident_curve(resident_intervals(turns, tokens_per_image))
    return {
        "side": side,
        "completed": len(ok),
        "failed": len(turns) - len(ok),
        "errors": [r["error"] for r in turns if not r["ok"]][:3],
        "span_s": span,
        "turns_per_s": len(ok) / span,
        "followup_ttft_p50_s": statistics.median(ttft(follow)),
        "followup_ttft_p99_s": percentile(ttft(follow), 0.99),
        "followup_hits": sum(r["cached_tokens"] >= r["images"] * tokens_per_image for r in follow),
        "followups": len(follow),
        "prefilled_tokens": sum(r["prompt_tokens"] - r["cached_tokens"] for r in ok),
        "prompt_tokens": sum(r["prompt_tokens"] for r in ok),
        "peak_resident_chats": max(n for _, n in curve),
        "by_turn": by_turn,
        "resident_curve": curve,
        "turns": turns,
    }


def print_table(rows: list[dict], args, pool: int, ceiling: float) -> dict:
    print(f"\n{args.users} chats, KV pool {pool} token slots (full KV of ~{args.pool_chats} chats), "
          f"{args.max_new_tokens} output tokens a turn, image {args.image_side} px, think time {args.think_mean} s; "
          f"the schedule allows at most {ceiling:.2f} turns/s\n")  # fmt: skip
    print(f"{'side':<11}{'ok':>5}{'fail':>5}{'turns/s':>9}{'x stock':>8}{'f-up TTFT p50':>14}{'p99':>7}{'x stock':>8}"
          f"{'hits':>9}{'prefilled':>11}{'peak resident':>14}")  # fmt: skip
    stock = next((r for r in rows if r["side"] == "stock"), rows[0])
    for r in rows:
        print(f"{r['side']:<11}{r['completed']:>5}{r['failed']:>5}{r['turns_per_s']:>9.3f}"
              f"{r['turns_per_s'] / stock['turns_per_s']:>8.2f}{r['followup_ttft_p50_s']:>14.2f}"
              f"{r['followup_ttft_p99_s']:>7.2f}{r['followup_ttft_p50_s'] / stock['followup_ttft_p50_s']:>8.2f}"
              f"{r['followup_hits']:>4}/{r['followups']:<4}{r['prefilled_tokens']:>11}{r['peak_resident_chats']:>14}")  # fmt: skip
    print("\nTTFT p50 s (p99) by turn, cached / prompt tokens (means):")
    for r in rows:
        cells = [f"t{n}: {b['ttft_p50_s']:.2f} ({b['ttft_p99_s']:.2f}) {b['cached_mean']:.0f}/{b['prompt_mean']:.0f}"
                 for n, b in r["by_turn"].items()]  # fmt: skip
        print(f"  {r['side']:<11}" + "   ".join(cells))
    ratios = {
        r["side"]: {"turns_per_s": r["turns_per_s"] / stock["turns_per_s"],
                    "followup_ttft_p50": r["followup_ttft_p50_s"] / stock["followup_ttft_p50_s"]}
        for r in rows
    }  # fmt: skip
    if "compressed" in ratios and stock["side"] == "stock":
        c = ratios["compressed"]
        met = c["turns_per_s"] >= 3.0 or c["followup_ttft_p50"] <= 1 / 3
        print(f"\ncompressed / stock: {c['turns_per_s']:.2f}x turns per second, follow-up TTFT p50 "
              f"{c['followup_ttft_p50']:.2f} of stock's; target (>= 3x, or <= 1/3): {'met' if met else 'missed'}")  # fmt: skip
    return ratios


def plot(rows: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    for r in rows:
        done = sorted(t["done"] for t in r["turns"] if t["ok"])
        axes[0].step(done, range(1, len(done) + 1), where="post", label=r["side"])
        xs, ys = zip(*r["resident_curve"], strict=True)
        axes[2].step(xs, ys, where="post", label=r["side"])
    axes[0].set(xlabel="time (s)", ylabel="turns completed", title="Turns completed")
    turns = sorted({n for r in rows for n in r["by_turn"]})
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        axes[1].bar([n + (i - (len(rows) - 1) / 2) * width for n in turns],
                    [r["by_turn"].get(n, {}).get("ttft_p50_s", float("nan")) for n in turns], width, label=r["side"])  # fmt: skip
    axes[1].set(xlabel="turn", ylabel="TTFT p50 (s)", yscale="log", title="Time to first token by turn", xticks=turns)
    axes[2].set(xlabel="time (s)", ylabel="chats", title="Chats resident in the tree (by next-turn hit)")
    for ax in axes:
        ax.legend()
    fig.suptitle("Image chats sharing one KV pool: stock SGLang vs vlcache plugin (benchmark model, CPU)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--pool-chats", type=float, default=None, help="chats whose full KV the pool holds (users/8)")
    parser.add_argument("--max-total-tokens", type=int, default=None, help="KV pool, tokens (from --pool-chats)")
    parser.add_argument("--image-side", type=int, default=672)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--think-mean", type=float, default=2.0, help="seconds, exponential")
    parser.add_argument("--arrival-rate", type=float, default=1.0, help="chats starting per second (Poisson)")
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--max-running", type=int, default=64)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument(
        "--schedule-policy", default="fcfs", help="SGLang's --schedule-policy on every side (its default: fcfs)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    parser.add_argument("--name", default="sessions", help="results file stem under bench/results/")
    add_attach_args(parser)
    args = parser.parse_args(argv)
    args.pool_chats = args.pool_chats or args.users / 8

    from transformers import AutoProcessor

    model = args.model or ensure_bench_qwen2vl()
    processor = AutoProcessor.from_pretrained(model)
    chats = schedule(args.users, args.seed, args.arrival_rate, args.think_mean)
    per_chat = statistics.fmean(final_turn_tokens(processor, c, args.image_side, args.max_new_tokens) for c in chats)
    pool = args.max_total_tokens or round(args.pool_chats * per_chat)
    tpi = visual_tokens(args.image_side)
    largest = max(final_turn_tokens(processor, c, args.image_side, args.max_new_tokens) for c in chats)
    if pool < largest:
        raise SystemExit(f"a pool of {pool} tokens cannot hold the largest chat ({largest}): raise --pool-chats")
    progress(
        f"{len(chats)} chats, {sum(c.turns for c in chats)} turns; a chat's full KV ~{per_chat:.0f} tokens; pool {pool}"
    )

    rows = []
    plugin_sides = [s for s in args.sides if s != "stock"]
    groups = [("stock", False, ["stock"])] * ("stock" in args.sides) + [("plugin", True, plugin_sides)] * bool(
        plugin_sides
    )
    for name, plugin, sides in groups:
        attach = {"stock": args.stock_url, "plugin": args.plugin_url}
        with Servers("sessions", attach) as servers:
            cfg = bench_server_config(model, plugin=plugin, max_total_tokens=pool, max_running=args.max_running,
                                      extra=["--schedule-policy", args.schedule_policy])  # fmt: skip
            url = servers.start(name, cfg)
            warm = chat_prompt(
                processor, "image", 1, [(QUESTIONS[0], None)]
            )  # the first multimodal request: one-time costs
            run_batch(
                url, [generate_body(warm, [noise_image(7, args.image_side)], 2, vl_options(sides[0], args.budget))]
            )
            for side in sides:
                flush(url, timeout_s=120.0)
                progress(f"{side}: {len(chats)} chats")
                turns = run_side(url, processor, chats, vl_options(side, args.budget), args)
                rows.append(summarise(side, turns, tpi))
                r = rows[-1]
                progress(f"{side}: {r['completed']} turns ok, {r['failed']} failed, {r['turns_per_s']:.3f} turns/s, "
                         f"follow-up TTFT p50 {r['followup_ttft_p50_s']:.2f} s, peak resident {r['peak_resident_chats']}")  # fmt: skip
    ratios = print_table(rows, args, pool, ceiling_turns_per_s(chats))
    write_json(args.name, {"args": vars(args), "pool_tokens": pool, "chat_tokens_mean": per_chat,
                           "ceiling_turns_per_s": ceiling_turns_per_s(chats),
                           "visual_tokens_per_image": tpi, "rows": rows, "ratios": ratios})  # fmt: skip
    plot(rows, RESULTS / f"{args.name}.png")
    print(f"plot: {RESULTS / f'{args.name}.png'}")


if __name__ == "__main__":
    main()
