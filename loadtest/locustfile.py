"""Locust users for the gateway: streaming chat requests with images (some with several), some with a
short video, under a configurable mix of VL-Cache policies and budgets.

Entries in Locust's statistics:
- `POST chat (stream)` (type POST): the real request; its count gives QPS and failures (its time is
  Locust's for a streamed response: until the response headers);
- `time_to_first_token`, `inter_token_latency`, `e2e_latency` (type METRIC): fired by this file, one
  event per request (TTFT: send to first content chunk; e2e: send to the end of the stream) and one
  per gap between consecutive content chunks (ITL), so their percentiles show apart.

Options (Locust's own CLI, `locust -f loadtest/locustfile.py --help`): `--vl-mix`, `--max-tokens`,
`--multi-image-share`, `--video-share`, `--model`, `--api-key`. A stream that ends without a finish
reason, an error event or a missing KV report (compressed policies) counts as a failure; an empty answer
(the model's first token is EOS) is an answer, its TTFT read at the finish chunk.
"""

from __future__ import annotations

import json
import random
import time

from locust import HttpUser, between, events, task

from testkit import mp4_data_url, png_data_url

METRIC = "METRIC"


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--vl-mix", default="vlcache:0.1=3,full=1,snapkv:0.2=1",
                        help="weighted VL-Cache options: policy[:budget]=weight, comma separated")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of every request")
    parser.add_argument("--multi-image-share", type=float, default=0.25, help="share of requests with 3 images")
    parser.add_argument("--video-share", type=float, default=0.2, help="share of requests with a short video")
    parser.add_argument("--model", default="default", help="the model id sent (`default`: the served one)")
    parser.add_argument("--api-key", default="", help="Bearer key, when the gateway has VLCACHE_API_KEY set")


def parse_mix(text: str) -> list[tuple[dict, float]]:
    """`vlcache:0.1=3,full=1` -> [({"policy": "vlcache", "budget": 0.1}, 3.0), ({"policy": "full"}, 1.0)]."""
    mix = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        spec, _, weight = item.partition("=")
        policy, _, budget = spec.partition(":")
        options = {"policy": policy} | ({"budget": float(budget)} if budget else {})
        mix.append((options, float(weight or 1)))
    if not mix:
        raise ValueError("--vl-mix needs at least one policy")
    return mix


def _png(seed: int, size: tuple[int, int]) -> str:
    from PIL import Image

    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for x in range(0, size[0], 16):  # some structure, so the visual tokens differ between images
        for y in range(0, size[1], 16):
            img.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    return png_data_url(img)


IMAGES = [_png(seed, size) for seed, size in enumerate([(224, 224), (336, 224), (224, 336), (448, 448)] * 2)]
VIDEO = mp4_data_url()


def _fire_metric(environment, name: str, ms: float) -> None:
    environment.events.request.fire(
        request_type=METRIC, name=name, response_time=ms, response_length=0, exception=None, context={}
    )


class ChatUser(HttpUser):
    wait_time = between(0.2, 1.0)

    def on_start(self):
        opts = self.environment.parsed_options
        self.mix = parse_mix(opts.vl_mix)
        self.headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}

    def _body(self) -> tuple[dict, dict]:
        opts = self.environment.parsed_options
        roll = random.random()
        if roll < opts.video_share:
            media = [{"type": "video_url", "video_url": {"url": VIDEO}}]
        else:
            count = 3 if roll < opts.video_share + opts.multi_image_share else 1
            media = [{"type": "image_url", "image_url": {"url": url}} for url in random.sample(IMAGES, count)]
        (vl,) = random.choices([m for m, _ in self.mix], weights=[w for _, w in self.mix])
        body = {
            "model": opts.model, "max_tokens": opts.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "vl_cache": vl,
            "messages": [{"role": "user", "content": [*media, {"type": "text", "text": "Describe what you see."}]}],
        }  # fmt: skip
        return body, vl

    @task
    def chat(self):
        body, vl = self._body()
        start = time.perf_counter()
        last = first = None
        usage, finished = None, False
        with self.client.post("/v1/chat/completions", json=body, headers=self.headers, stream=True,
                              catch_response=True, name="chat (stream)") as resp:  # fmt: skip
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            for raw in resp.iter_lines():
                line = raw.decode() if isinstance(raw, bytes) else raw
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    resp.failure(f"error event: {event['error']}")
                    return
                if event.get("usage"):
                    usage = event["usage"]
                choices = event.get("choices", [])
                finished = finished or any(c.get("finish_reason") for c in choices)
                content = any((c.get("delta") or {}).get("content") for c in choices)
                # The first token may be EOS (an empty answer): the finish chunk is then the first.
                if first is None and (content or finished):
                    first = last = time.perf_counter()
                    _fire_metric(self.environment, "time_to_first_token", (first - start) * 1000)
                elif content:
                    now = time.perf_counter()
                    _fire_metric(self.environment, "inter_token_latency", (now - last) * 1000)
                    last = now
            _fire_metric(self.environment, "e2e_latency", (time.perf_counter() - start) * 1000)
            if not finished:
                resp.failure("the stream ended without a finish reason")
            elif usage is None or (vl["policy"] != "full" and not usage.get("kv_cache")):
                resp.failure(f"no KV report in the usage chunk: {usage}")
            else:
                resp.success()
