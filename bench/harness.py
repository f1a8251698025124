"""What the SGLang benchmarks share: servers on the benchmark model, long multi-image prompts, timed
streaming requests.

Timing: every request streams (`/generate`, `stream: true`, one chunk per decode step), and the client
stamps each chunk on arrival (`time.perf_counter`). TTFT = first chunk - send; a decode step of a batch is
read from the window where every request of the batch is decoding (after the last first token, before
the first finish): steps in the window / its length. SGLang's own `first_token_latency` and
`e2e_latency` (meta_info, `--enable-metrics`) are kept next to the client's figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from service.sglang_process import SGLangServer, SGLangServerConfig, free_port
from testkit import flush_when_idle, png_data_url
from vlmodels.bench_qwen2vl import BENCH_SPEC, IMAGE_SIDE

# The benchmarks' names for the shared helpers (`testkit`), kept for the scripts that import them from here.
flush = flush_when_idle

# Tests point this elsewhere so a smoke run never overwrites the committed results.
RESULTS = Path(os.environ.get("VLCACHE_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- prompts -------------------------------------------------------------------------------------------


def noise_image(seed: int, side: int = IMAGE_SIDE) -> str:
    """A seeded random-blocks PNG as a data URL: distinct seeds never share a radix prefix."""
    rng = random.Random(seed)
    small = Image.new("RGB", (side // 28, side // 28))
    small.putdata(
        [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(small.width * small.height)]
    )
    return png_data_url(small.resize((side, side), Image.NEAREST))


def prompt_text(processor, num_images: int, question: str = "Describe every image in detail.") -> str:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def chat_prompt(processor, media_kind: str, n_media: int, history: list[tuple[str, str | None]]) -> str:
    """A chat's prompt: the media with the first question, then each (question, answer) turn; the last
    answer is None (the turn being asked)."""
    messages = []
    for i, (question, answer) in enumerate(history):
        content = [{"type": media_kind}] * (n_media if i == 0 else 0) + [{"type": "text", "text": question}]
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def images_for(target_tokens: int, tokens_per_image: int = (IMAGE_SIDE // 28) ** 2) -> int:
    """How many benchmark images make a prompt of about `target_tokens` tokens."""
    return max(1, round(target_tokens / tokens_per_image))


# --- servers -------------------------------------------------------------------------------------------


def bench_server_config(
    model: Path, *, plugin: bool, max_total_tokens: int, max_running: int, extra=()
) -> SGLangServerConfig:
    """CPU engine; whole prompts in one prefill chunk (no redundant re-attention of earlier chunks)."""
    return SGLangServerConfig(
        model_path=str(model),
        port=free_port(),
        kv_compression=plugin,
        context_length=BENCH_SPEC.context_length,
        max_total_tokens=max_total_tokens,
        max_running_requests=max_running,
        extra_args=[
            "--chunked-prefill-size",
            "-1",
            "--max-prefill-tokens",
            str(BENCH_SPEC.context_length),
            "--mem-fraction-static",
            "0.9",
            *extra,
        ],  # explicit: SGLang derives it from the chunk size
    )


@contextmanager
def sigterm_raises_exit():
    """While inside, SIGTERM raises SystemExit(143), so `finally`/`__exit__` cleanup (stopping SGLang) runs."""
    if threading.current_thread() is not threading.main_thread():  # signal.signal works in the main thread only
        yield
        return

    def _raise(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM must not interrupt that cleanup
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


class Servers(ExitStack):
    """Named servers, started one after the other, stopped together; logs under bench/results/.
    `attach` maps a name to the URL of a server already running (the smoke tests): nothing is started."""

    def __init__(self, stem: str, attach: dict[str, str] | None = None):
        super().__init__()
        self.stem, self.urls, self.attach = stem, {}, attach or {}
        self.started_any = False

    def start(self, name: str, config: SGLangServerConfig, extra_env: dict | None = None) -> str:
        if self.attach.get(name):
            self.urls[name] = self.attach[name]
            return self.attach[name]
        if not self.started_any:  # a SIGTERM (a killed bench run) must stop every server started, too
            self.enter_context(sigterm_raises_exit())
            self.started_any = True
        RESULTS.mkdir(exist_ok=True)
        log = self.enter_context(open(RESULTS / f"{self.stem}.{name}.log", "w"))
        progress(f"starting SGLang '{name}' ({'plugin' if config.kv_compression else 'stock'}) on {config.url}")
        server = SGLangServer(config, log=log, extra_env=extra_env)
        self.enter_context(server)
        self.urls[name] = server.url
        return server.url


def server_state(url: str) -> dict:
    with httpx.Client(timeout=30) as client:
        info = client.get(f"{url}/get_server_info").json()
    states = info.get("internal_states") or [{}]
    return states[0]


# --- timed requests ------------------------------------------------------------------------------------


@dataclass
class Timed:
    """One streamed request: send time, arrival time and cumulative token count of each chunk."""

    sent: float
    stamps: list[tuple[float, int]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    text: str = ""  # the output so far (SGLang streams it cumulatively by default)

    @property
    def ttft_s(self) -> float:
        return self.stamps[0][0] - self.sent

    @property
    def e2e_s(self) -> float:
        return self.stamps[-1][0] - self.sent

    @property
    def output_tokens(self) -> int:
        return self.stamps[-1][1]


async def stream_generate(client: httpx.AsyncClient, url: str, body: dict) -> Timed:
    """One streamed `/generate`: each chunk stamped on arrival."""
    timed = Timed(sent=time.perf_counter())
    async with client.stream("POST", f"{url}/generate", json={**body, "stream": True}) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}/generate -> {resp.status_code}: {(await resp.aread())[:500]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            now = time.perf_counter()
            chunk = json.loads(line[5:])
            meta = chunk.get("meta_info", {})
            timed.stamps.append((now, int(meta.get("completion_tokens", len(timed.stamps) + 1))))
            timed.meta = meta
            timed.text = chunk.get("text") or timed.text
    if not timed.stamps:
        raise RuntimeError(f"{url}/generate streamed nothing")
    return timed


def run_batch(url: str, bodies: list[dict], timeout_s: float = 3600) -> list[Timed]:
    """Send `bodies` at once (streaming) and wait for all."""

    async def go():
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            return await asyncio.gather(*(stream_generate(client, url, b) for b in bodies))

    return asyncio.run(go())


def percentile(xs, p: float) -> float:
    """The nearest-rank `p` quantile of `xs` (NaN when empty): what the benchmarks call p50 / p99."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def decode_step_s(batch: list[Timed]) -> float:
    """Seconds per decode step while the whole batch decodes (see the module docstring)."""
    start = max(t.stamps[0][0] for t in batch)
    end = min(t.stamps[-1][0] for t in batch)
    steps = []
    for t in batch:
        inside = [(s, n) for s, n in t.stamps if start <= s <= end]
        if len(inside) >= 2:
            steps.append((inside[-1][0] - inside[0][0]) / max(1, inside[-1][1] - inside[0][1]))
    if not steps:  # batch 1 or no overlap: the request's own decode span
        t = batch[0]
        return (t.stamps[-1][0] - t.stamps[0][0]) / max(1, t.stamps[-1][1] - t.stamps[0][1])
    return statistics.median(steps)


def generate_body(text: str, images: list[str], max_new_tokens: int, vl_cache: dict | None) -> dict:
    params = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    if vl_cache is not None:
        params["custom_params"] = {"vl_cache": vl_cache}
    return {"text": text, "image_data": images, "sampling_params": params}


def add_attach_args(parser) -> None:
    parser.add_argument("--stock-url", default=None, help="use this running stock SGLang instead of starting one")
    parser.add_argument("--plugin-url", default=None, help="use this running SGLang with the plugin selected")


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
