"""Render the measured figures of `bench/results/*.json` into the documents that show them.

A document marks each generated part with a pair of HTML comments (invisible in rendered markdown):

    <!-- results:decode -->
    ...generated, never edited by hand...
    <!-- /results:decode -->

The opening marker on a line of its own makes a block (a table); both markers on one line make an
inline figure inside a sentence. The name picks a renderer of `RENDERERS`: a function from the
loaded JSON of one results file to markdown.

    .venv/bin/python tools/render_results.py           # rewrite every marked part from bench/results/
    .venv/bin/python tools/render_results.py --check   # exit 1 naming each stale part, change nothing

`tests/fast/tools/test_render_results.py` runs the check, so no document can state a figure that
bench/results/ contradicts. Adding a renderer for a new results file is a decorated function:

    @renderer("followup", "followup.json")
    def _followup(data: dict) -> str:
        return table(["design", "accuracy"], [[k, f"{v['accuracy']['all']:.3f}"] for k, v in data["summary"].items()])

then put `<!-- results:followup -->` / `<!-- /results:followup -->` where the table goes and run the
script once.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlmodels.grid_vqa.scoring import HEADLINE_METRIC

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The markdown files searched for markers (relative to the repository root).
DOCUMENTS = ("*.md", "docs/*.md", "bench/*.md", "loadtest/*.md", "deploy/*.md", "models/*/*.md")


@dataclass(frozen=True)
class Renderer:
    source: str  # a file name in bench/results/
    render: Callable[[dict], str]


RENDERERS: dict[str, Renderer] = {}


def renderer(name: str, source: str):
    """Register `fn(data) -> markdown` as the renderer of marker `name`, fed `bench/results/<source>`."""

    def register(fn):
        if name in RENDERERS:
            raise ValueError(f"renderer {name!r} registered twice")
        RENDERERS[name] = Renderer(source, fn)
        return fn

    return register


# --- formatting helpers ------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(x: float) -> str:
    return f"{x:.2f}x"


def tokens(n: float) -> str:
    return f"{round(n):,}"


def mb(n_bytes: float) -> str:
    value = n_bytes / 1e6
    return f"{value:.0f}" if value >= 1000 else f"{value:.1f}"


def setting(row: dict) -> str:
    return f"{row['policy']}@{row['budget']:g}"


def _nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


# --- one renderer per results file ----------------------------------------------------------------------


@renderer("decode-long", "decode_long.json")
@renderer("decode", "decode.json")
def _decode(data: dict) -> str:
    rows = []
    for r in data["rows"]:
        scoring = statistics.median(r["scoring_ms"])  # the plugin's timer, per request of the batch
        rows.append([
            tokens(r["prompt_tokens"]), str(r["batch"]), setting(r),
            f"{r['plugin_prefill_ms'] / 1000:.1f} ({r['plugin_prefill_ms'] / r['stock_prefill_ms']:.2f})",
            f"{r['plugin_step_ms']:.1f} ({r['stock_step_ms']:.1f})", ratio(r["decode_speedup"]),
            ratio(r["byte_bound"]), f"{r['fraction_of_bound']:.2f}", ratio(r["cost_bound"]),
            f"{r['fraction_of_cost_bound']:.2f}", ratio(r["e2e_speedup"]),
            f"{mb(r['kv_bytes_plugin'])} ({mb(r['kv_bytes_stock'])})", f"{r['kv_bytes_plugin'] / r['kv_bytes_stock']:.3f}",
            f"{scoring:.0f} ({100 * scoring / r['stock_prefill_ms']:.1f}%)",
        ])  # fmt: skip
    header = ["prompt", "bs", "setting", "prefill s (/stock)", "step ms (stock)", "decode speedup", "byte bound",
              "of bound", "step-cost bound", "of it", "e2e x", "KV MB (stock)", "kept/full",
              "scoring ms (/stock prefill)"]  # fmt: skip
    fixed = data["fixed_step_ms"]
    return (
        f"A step at a near-empty KV (4-token prompt): stock {fixed['stock']:.1f} ms, plugin {fixed['plugin']:.1f} ms."
        + "\n\n"
        + table(header, rows)
    )


@renderer("decode-headline", "decode.json")
def _decode_headline(data: dict) -> str:
    """Inline: the 16k-token prompt at vlcache 0.1, batch 1 and 4 (the README's status line)."""
    length = min({r["prompt_tokens"] for r in data["rows"]}, key=lambda n: abs(n - 16000))
    pick = {r["batch"]: r for r in data["rows"] if r["prompt_tokens"] == length and setting(r) == "vlcache@0.1"}
    one, four = pick[1], pick[4]
    return (
        f"{ratio(one['decode_speedup'])} at batch 1, {ratio(four['decode_speedup'])} at batch 4, "
        f"{one['fraction_of_bound']:.2f} and {four['fraction_of_bound']:.2f} of the byte bound, "
        f"{one['fraction_of_cost_bound']:.2f} and {four['fraction_of_cost_bound']:.2f} of the step-cost bound"
    )


@renderer("decode-budget1", "decode_budget1.json")
def _decode_budget1(data: dict) -> str:
    rows, ratios = [], []
    for i, r in enumerate(data["rows"], 1):
        ratios.append(r["plugin_step_ms"] / r["stock_step_ms"])
        rows.append([str(i), tokens(r["prompt_tokens"]), setting(r), f"{r['stock_step_ms']:.1f}",
                     f"{r['plugin_step_ms']:.1f}", f"{ratios[-1]:.2f}"])  # fmt: skip
    steps = [r["stock_step_ms"] for r in data["rows"]]
    summary = (
        f"Plugin / stock step time over the {len(ratios)} pairs: **median {statistics.median(ratios):.2f}, "
        f"worst {max(ratios):.2f}** (stock {min(steps):.0f}-{max(steps):.0f} ms a step)."
    )
    return (
        table(["pair", "prompt", "setting", "stock step ms", "plugin step ms", "plugin / stock"], rows)
        + "\n\n"
        + summary
    )


@renderer("overhead", "overhead.json")
def _overhead(data: dict) -> str:
    rows = []
    for r in data["rows"]:
        med = r["median_ttft_s"]
        rows.append([
            tokens(r["prompt_tokens"]), f"{med['stock']:.2f}", f"{med['full']:.2f}", f"{med['vlcache']:.2f}",
            f"{med['full'] / med['stock']:.2f}", f"{med['vlcache'] / med['stock']:.2f}",
            f"{statistics.median(r['scoring_s']):.3f}", f"**{100 * r['scoring_share_of_stock_prefill']:.1f}%**",
        ])  # fmt: skip
    header = ["prompt tokens", "stock s", "full s", "vlcache s", "full / stock", "vlcache / stock",
              "scoring s (plugin's timer)", "scoring / stock prefill"]  # fmt: skip
    return table(header, rows)


@renderer("throughput", "throughput.json")
def _throughput(data: dict) -> str:
    rows = [
        [r["side"] if r["side"] == "stock" else f"{r['side']}@{data['args']['budget']:g}", str(r["completed"]),
         str(r["failed"]), f"{r['req_per_s']:.3f}", f"{r['output_tok_per_s']:.1f}", f"{r['ttft_p50_s']:.2f}",
         f"{r['ttft_p99_s']:.2f}", f"{r['latency_p50_s']:.2f}", f"{r['latency_p99_s']:.2f}", str(r["peak_decoding"])]
        for r in data["rows"]
    ]  # fmt: skip
    header = ["side", "ok", "failed", "req/s", "tok/s", "TTFT p50 s", "p99 s", "latency p50 s", "p99 s",
              "peak decoding"]  # fmt: skip
    a = data["args"]
    settings = (
        f"Setting: a KV pool of {tokens(a['max_total_tokens'])} tokens per server, {a['requests']} requests at "
        f"{a['rate']:g}/s (Poisson, seed {a['seed']}), each a streamed chat through the gateway with one "
        f"{a['image_side']}x{a['image_side']} image and {a['max_new_tokens']} output tokens."
    )
    stock, plugin = data["rows"][0], data["rows"][1]
    summary = (
        f"Request throughput **{ratio(plugin['req_per_s'] / stock['req_per_s'])}** of stock, output tokens/s "
        f"{ratio(plugin['output_tok_per_s'] / stock['output_tok_per_s'])}; peak decoding requests "
        f"{plugin['peak_decoding']} vs {stock['peak_decoding']}."
    )
    return settings + "\n\n" + table(header, rows) + "\n\n" + summary


def _sessions(data: dict) -> str:
    """Per side: turns/s, follow-up TTFT, TTFT by turn, follow-up hits, tokens prefilled, chats resident."""
    a, stock = data["args"], data["rows"][0]
    turns = sorted({int(n) for r in data["rows"] for n in r["by_turn"]})
    rows = [
        [r["side"] if r["side"] in ("stock", "full") else f"{r['side']} (vlcache {a['budget']:g})",
         f"{r['completed']} / {r['failed']}", f"{r['turns_per_s']:.2f} ({ratio(r['turns_per_s'] / stock['turns_per_s'])})",
         f"{r['followup_ttft_p50_s']:.2f} ({r['followup_ttft_p50_s'] / stock['followup_ttft_p50_s']:.2f})",
         f"{r['followup_ttft_p99_s']:.2f}",
         " / ".join(f"{r['by_turn'][str(n)]['ttft_p50_s']:.2f}" for n in turns),
         f"{r['followup_hits']} / {r['followups']}", f"{tokens(r['prefilled_tokens'])} of {tokens(r['prompt_tokens'])}",
         str(r["peak_resident_chats"])]
        for r in data["rows"]
    ]  # fmt: skip
    header = ["side", "turns ok / failed", "turns/s (x stock)", "follow-up TTFT p50 s (/ stock)", "p99 s",
              f"TTFT p50 s, turn {' / '.join(map(str, turns))}", "follow-ups with images cached",
              "prompt tokens prefilled", "peak chats resident"]  # fmt: skip
    think = f"think times exponential, mean {a['think_mean']:g} s" if a["think_mean"] else "no think time"
    settings = (
        f"Setting: {a['users']} chats of 3-5 turns, 1 or 2 images of {a['image_side']}x{a['image_side']} "
        f"({data['visual_tokens_per_image']} visual tokens each), starting at {a['arrival_rate']:g}/s (Poisson, seed "
        f"{a['seed']}), {think}, {a['max_new_tokens']} output tokens a turn; one server, a KV pool of "
        f"{tokens(data['pool_tokens'])} tokens (the full KV of {a['pool_chats']:g} chats at their last turn); "
        f"SGLang `--schedule-policy {a.get('schedule_policy', 'fcfs')}`. The schedule allows at most "
        f"{data['ceiling_turns_per_s']:.2f} turns/s."
    )
    return settings + "\n\n" + table(header, rows)


for _name, _source in (("sessions", "sessions.json"), ("sessions-saturated", "sessions_saturated.json"),
                       ("sessions-saturated-lpm", "sessions_saturated_lpm.json")):  # fmt: skip
    renderer(_name, _source)(_sessions)


@renderer("sessions-headline", "sessions.json")
def _sessions_headline(data: dict) -> str:
    """Inline: compressed vs stock follow-up TTFT and turns/s (the README's status line)."""
    c = data["ratios"]["compressed"]
    rows = {r["side"]: r for r in data["rows"]}
    return (
        f"follow-up TTFT p50 {rows['compressed']['followup_ttft_p50_s']:.2f} s vs {rows['stock']['followup_ttft_p50_s']:.2f} s "
        f"({c['followup_ttft_p50']:.2f} of stock's), {ratio(c['turns_per_s'])} the turns per second"
    )


def _multiturn_designs(budget: float) -> dict[str, str]:
    """The designs of bench/multiturn.py, in its order, with their column labels."""
    b = f"{budget:g}"
    return {
        "stock": "stock",
        "full": "full",
        "lazy": f"lazy (vlcache {b})",
        "compressed": f"**compressed** (vlcache {b}, default)",
        "off": f"off (vlcache {b})",
        "snap-lazy": f"lazy, snapkv {b}",
        "stream-lazy": f"lazy, streamingllm {b}",
    }


@renderer("multiturn", "multiturn.json")
def _multiturn(data: dict) -> str:
    cells = {(s["media"], s["turn"], s["design"]): s for s in data["summary"]}
    media = list(dict.fromkeys(s["media"] for s in data["summary"]))
    turns = sorted({s["turn"] for s in data["summary"]} - {1})
    designs, rows = _multiturn_designs(data["args"]["budget"]), []
    for m in media:
        for t in turns:
            stock = cells[(m, t, "stock")]["ttft_ms"]
            row = [m, str(t)]
            for design in designs:
                c = cells[(m, t, design)]
                text = f"{c['ttft_ms']:.1f} ms"
                if design != "stock":
                    text += f" ({ratio(c['ttft_ms'] / stock)})"
                text += f", {round(c['cached_tokens'])}/{round(c['prompt_tokens'])}"
                if not _nan(c["held_slots_after"]):
                    text += f", {round(c['held_slots_after'])} held"
                row.append(text)
            rows.append(row)
    header = ["chat", "turn", *designs.values()]
    pressure = []
    for design, steps in data["pressure"].items():
        last = steps[-1]
        pressure.append(
            f"`{design}`: {tokens(last['tree_cached_slots'])} tokens in the tree after the last, "
            f"{tokens(last['physical_used_mean'])} physical slots held per layer (mean), peak tree "
            f"{tokens(max(s['tree_cached_slots'] for s in steps))}"
        )
    n = len(next(iter(data["pressure"].values())))
    summary = (
        f"Memory pressure ({n} distinct one-image requests, one after the other, into {tokens(data['pool_tokens'])} "
        "token slots): " + "; ".join(pressure) + "."
    )
    return table(header, rows) + "\n\n" + summary


@renderer("multiturn-turn2", "multiturn.json")
def _multiturn_turn2(data: dict) -> str:
    """Turn 2, one row per chat kind and design: tokens, TTFT against stock and `full`, scoring, KV held."""
    cells = {(s["media"], s["turn"], s["design"]): s for s in data["summary"]}
    designs, rows = _multiturn_designs(data["args"]["budget"]), []
    for m in dict.fromkeys(s["media"] for s in data["summary"]):
        stock, full = cells[(m, 2, "stock")]["ttft_ms"], cells[(m, 2, "full")]["ttft_ms"]
        for design, label in designs.items():
            c = cells[(m, 2, design)]
            rows.append([
                m, label, f"{round(c['cached_tokens'])} / {round(c['prompt_tokens'])}", f"{c['ttft_ms']:.1f}",
                f"{c['ttft_ms'] / stock:.2f}", f"{c['ttft_ms'] / full:.2f}",
                "-" if _nan(c["scoring_ms"]) else f"{c['scoring_ms']:.1f}",
                "-" if _nan(c["held_slots_after"]) else str(round(c["held_slots_after"])),
            ])  # fmt: skip
    header = ["chat", "design", "cached / prompt tokens", "TTFT ms", "/ stock", "/ full", "score ms",
              "KV held after turn 2"]  # fmt: skip
    return table(header, rows)


@renderer("accuracy", "accuracy.json")
def _accuracy(data: dict) -> str:
    """Per form, the headline metric of every policy at every budget, with its 95% interval."""
    runs = {(r["label"], r["budget"]): r for r in data["runs"]}
    full = runs[("full", 1.0)]
    budgets = [b for b in data["budgets"] if b < 1.0]
    labels = list(dict.fromkeys(r["label"] for r in data["runs"] if r["label"] not in ("full", "blank_images")))
    blank = runs.get(("blank_images", 1.0))
    parts = []
    for form, metric in HEADLINE_METRIC.items():
        key = f"form:{form}"

        def cell(run, key=key, metric=metric):
            m = run["metrics"][key]
            lo, hi = m[f"{metric}_ci"]
            return f"{m[metric]:.3f} [{lo:.2f}, {hi:.2f}]"

        rows = [[label] + [cell(runs[(label, b)]) for b in budgets] for label in labels]
        rows.append(["full (every policy at 1.0)"] + [cell(full)] * len(budgets))
        if blank:
            rows.append(["blank images (full cache)"] + [cell(blank)] * len(budgets))
        n = full["metrics"][key]["n"]
        parts.append(f"**{form}**, {metric} (n={n} per cell, 95% interval):\n\n"
                     + table(["policy"] + [f"{b:g}" for b in budgets], rows))  # fmt: skip
    c = data["control"]
    control = "; ".join(f"{form} F1 {v['ratio']:.2f} of full ({'fell' if v['fell'] else 'did not fall'})"
                        for form, v in c["forms"].items())  # fmt: skip
    parts.append(f"Control `{c['policy']}` at {c['budget']:g}: {control}. {data['questions']} questions, "
                 f"{data['sglang_minutes']:.1f} min through SGLang.")  # fmt: skip
    return "\n\n".join(parts)


@renderer("followup", "followup.json")
def _followup(data: dict) -> str:
    """Follow-up F1 per multi-turn design and budget, with its 95% interval."""
    summary, budgets = data["summary"], data["budgets"]

    def cell(label):
        row = summary.get(label)
        if row is None:
            return "-"
        lo, hi = row["f1_ci"]["all"]
        return f"{row['f1']['all']:.3f} [{lo:.2f}, {hi:.2f}]"

    designs = list(dict.fromkeys(k.split("@")[0] for k in summary if "@" in k))
    rows = [[d] + [cell(f"{d}@{b:g}") for b in budgets] for d in designs]
    rows.append(["full cache"] + [cell("full")] * len(budgets))
    return f"Policy `{data['policy']}`, {data['chats']} two-turn chats, turn-2 F1 (95% interval):\n\n" + table(
        ["design"] + [f"{b:g}" for b in budgets], rows
    )


@renderer("hit-rate", "accuracy_hit_rate.json")
def _hit_rate(data: dict) -> str:
    """Per policy: top-k hit rate per layer (mean over decoded tokens), over all and content tokens."""
    rows = []
    for label, r in sorted(data["results"].items(), key=lambda kv: -kv[1]["hit_rate_all"]):
        rows.append([label, " ".join(f"{x:.2f}" for x in r["hit_rate_per_layer"]), f"{r['hit_rate_all']:.3f}",
                     f"{r['hit_rate_content']:.3f}", f"{r['mass_content']:.3f}"])  # fmt: skip
    n = next(iter(data["results"].values()))["questions"]
    header = ["policy @ budget", "hit rate per layer", "all decoded tokens", "content tokens", "mass covered (content)"]
    return f"{n} readout questions (2 and 4 images), every decoded token:\n\n" + table(header, rows)


# --- markers ----------------------------------------------------------------------------------------------

# A marker quoted in inline code (`<!-- results:NAME -->`, as in this sentence) is prose, not a marker.
MARKER = re.compile(r"(?<!`)<!-- results:(?P<name>[\w-]+) -->(?P<body>.*?)<!-- /results:(?P=name) -->", re.DOTALL)
OPENING = re.compile(r"(?<!`)<!-- results:(?P<name>[\w-]+) -->")


class MarkerError(Exception):
    pass


def documents(root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in root.glob(pattern) if p.is_file()})


def rendered(name: str, cache: dict, results: Path = RESULTS) -> str:
    if name not in RENDERERS:
        raise MarkerError(f"no renderer named {name!r} (known: {', '.join(sorted(RENDERERS))})")
    spec = RENDERERS[name]
    if spec.source not in cache:
        cache[spec.source] = json.loads((results / spec.source).read_text())
    return spec.render(cache[spec.source]).strip()


def render_text(text: str, cache: dict | None = None, results: Path = RESULTS) -> tuple[str, list[str]]:
    """(the text with every marked part rendered anew, the names of the parts that changed)."""
    cache = {} if cache is None else cache
    closed = {m.start() for m in MARKER.finditer(text)}
    for m in OPENING.finditer(text):
        if m.start() not in closed:
            raise MarkerError(f"<!-- results:{m['name']} --> has no <!-- /results:{m['name']} --> after it")
    changed = []

    def replace(m: re.Match) -> str:
        body = rendered(m["name"], cache, results)
        block = m["body"].startswith("\n")
        if not block and "\n" in body:
            raise MarkerError(f"results:{m['name']} renders several lines: put its markers on lines of their own")
        new = f"\n{body}\n" if block else body
        if new != m["body"]:
            changed.append(m["name"])
        return f"<!-- results:{m['name']} -->{new}<!-- /results:{m['name']} -->"

    return MARKER.sub(replace, text), changed


def run(check: bool, root: Path = ROOT, results: Path = RESULTS) -> int:
    cache, stale, used = {}, [], 0
    for path in documents(root):
        text = path.read_text()
        if not OPENING.search(text):
            continue
        try:
            new, changed = render_text(text, cache, results)
        except MarkerError as e:
            print(f"{path.relative_to(root)}: {e}", file=sys.stderr)
            return 2
        used += len(MARKER.findall(text))
        if changed:
            stale += [f"{path.relative_to(root)}: results:{name}" for name in changed]
            if not check:
                path.write_text(new)
    verb = "stale (run tools/render_results.py)" if check else "rendered"
    for line in stale:
        print(f"{verb}: {line}", file=sys.stderr if check else sys.stdout)
    if not stale:
        print(f"{used} marked parts, all up to date with bench/results/")
    return 1 if check and stale else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a marked part is stale")
    args = parser.parse_args(argv)
    return run(args.check)


if __name__ == "__main__":
    raise SystemExit(main())
