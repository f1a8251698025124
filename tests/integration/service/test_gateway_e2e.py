"""The gateway end to end: the real `openai` client -> real uvicorn gateway -> real SGLang (CPU, tiny model)."""

import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

from service.sglang_process import free_port
from tests.fast.service.gateway_media import data_url, image_bytes, video_bytes
from tests.integration.conftest import data_url as png_data_url
from tests.integration.conftest import make_image

MODEL = "tiny-qwen2vl"


def image_message(url, text="Describe the image in one sentence."):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}]


RED = png_data_url(make_image((224, 224), (200, 30, 30)))


def test_image_chat_matches_sglangs_own_openai_endpoint(openai_client, client):
    """Same greedy answer as SGLang's /v1/chat/completions: the gateway renders the prompt the same way."""
    resp = openai_client.chat.completions.create(model=MODEL, messages=image_message(RED), max_tokens=12, temperature=0)
    ours = resp.choices[0].message.content
    assert ours
    usage = resp.usage.model_extra
    assert resp.usage.prompt_tokens_details.model_extra["image_tokens"] == 64  # 224x224 -> 8x8 tokens
    assert usage["kv_cache"] is None or isinstance(usage["kv_cache"], dict)
    # ttft_ms of a plain response comes from SGLang's timestamps, which it does not always report.
    assert usage["timings"]["e2e_ms"] > 0 and (usage["timings"]["ttft_ms"] or 1) > 0

    theirs = client.post("/v1/chat/completions", json={
        "model": "default", "messages": image_message(RED), "max_tokens": 12, "temperature": 0}).json()  # fmt: skip
    assert ours == theirs["choices"][0]["message"]["content"]
    assert resp.usage.prompt_tokens == theirs["usage"]["prompt_tokens"]


def test_streaming_equals_plain_and_reports_usage(openai_client):
    kwargs = dict(model=MODEL, messages=image_message(RED, "What colour is it?"), max_tokens=10, temperature=0)
    plain = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(openai_client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (["length"], ["stop"])
    usage = chunks[-1].usage
    assert usage.completion_tokens >= 1 and "kv_cache" in usage.model_extra and "timings" in usage.model_extra


def test_vl_cache_options_are_accepted(openai_client):
    resp = openai_client.chat.completions.create(
        model=MODEL, messages=image_message(RED), max_tokens=4, temperature=0,
        extra_body={"vl_cache": {"policy": "vlcache", "budget": 0.1}},
    )  # fmt: skip
    assert resp.choices[0].message.content is not None


def test_image_by_url_from_an_allow_listed_host(openai_client, media_server):
    base, folder = media_server
    (folder / "photo.jpg").write_bytes(image_bytes((120, 90), (30, 160, 60), fmt="JPEG"))
    resp = openai_client.chat.completions.create(model=MODEL, messages=image_message(f"{base}/photo.jpg"), max_tokens=4)
    assert resp.usage.prompt_tokens > 20


def test_bad_input_gets_4xx_and_the_gateway_keeps_serving(openai_client, media_server, gateway):
    base, _ = media_server
    port = base.rsplit(":", 1)[1]
    bad = [
        image_message("data:image/png;base64,bm90IGFuIGltYWdl"),  # "not an image"
        image_message(f"http://127.0.0.2:{port}/photo.jpg"),  # loopback, not allow-listed: SSRF guard
        image_message(f"{base}/missing.png"),
        image_message("file:///etc/passwd"),
    ]
    for messages in bad:
        with pytest.raises(openai.BadRequestError) as err:
            openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
        assert err.value.body["code"]
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-4o", messages=image_message(RED), max_tokens=4)
    # A prompt over SGLang's context length (8192 tokens) is SGLang's refusal, mapped to a 400.
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi " * 9000}], max_tokens=4)
    resp = httpx.post(f"{gateway}/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "error" in resp.json()
    assert openai_client.chat.completions.create(model=MODEL, messages=image_message(RED), max_tokens=2).choices


@pytest.mark.parametrize("codec,fmt,mime", [("libx264", "mp4", "video/mp4"), ("libvpx-vp9", "webm", "video/webm")])
def test_video_chat(openai_client, codec, fmt, mime):
    clip = video_bytes(codec, fmt, frames=30, size=(128, 96), fps=10)  # 3 s -> 6 frames at 2 fps
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data_url(clip, mime)}},
                                             {"type": "text", "text": "What happens in the video?"}]}]  # fmt: skip
    resp = openai_client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    video_tokens = resp.usage.prompt_tokens_details.model_extra["video_tokens"]
    # 6 frames -> 3 temporal patches (frames merge in pairs), each of the same spatial token count.
    fewer = openai_client.chat.completions.create(
        model=MODEL, max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data_url(clip, mime), "max_frames": 2}}]}],
    )  # fmt: skip
    assert video_tokens == 3 * fewer.usage.prompt_tokens_details.model_extra["video_tokens"] > 0


def _kv_tokens_in_use(client) -> int:
    # Slots held by live requests (the radix tree's evictable cache is not counted).
    return sum(entry["num_used_tokens"] for entry in client.get("/v1/loads").json()["loads"])


def test_client_disconnect_mid_stream_aborts_the_sglang_request(gateway, client):
    body = {"model": MODEL, "messages": image_message(RED), "max_tokens": 4000, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    with httpx.Client(base_url=gateway, timeout=120) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = (line for line in resp.iter_lines() if line)
            for _ in range(3):
                next(lines)
            assert _kv_tokens_in_use(client) > 0  # 4000 tokens to go: decoding for tens of seconds
        deadline = time.monotonic() + 10
        while _kv_tokens_in_use(client):
            assert time.monotonic() < deadline, "SGLang kept decoding after the client left"
            time.sleep(0.1)
        metrics = http.get("/metrics").text
    assert "vlcache_aborted_requests_total 1.0" in metrics


def test_metrics_and_probes(gateway, openai_client):
    openai_client.chat.completions.create(model=MODEL, messages=image_message(RED), max_tokens=2)
    with httpx.Client(base_url=gateway) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").status_code == 200
        assert http.get("/v1/models").json()["data"][0]["id"] == MODEL
        text = http.get("/metrics").text
    for expected in [
        'vlcache_requests_total{endpoint="/v1/chat/completions",status="200"}',
        "vlcache_backend_up 1.0",
        "vlcache_kv_pool_capacity_tokens 32768.0",  # the fixture's --max-total-tokens
        'vlcache_media_items_total{kind="image"}',
        "vlcache_request_latency_seconds_count",
    ]:
        assert expected in text, expected


def test_cli_attaches_and_prints_working_examples(sglang_server, tmp_path):
    """`vlcache-serve --backend-url ...`: the printed curl and openai snippet both work as printed."""
    port = free_port()
    log = tmp_path / "cli.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--backend-url", sglang_server.url, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Uvicorn running" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        text = log.read_text()
        curl = next(line for line in text.splitlines() if line.startswith("curl "))
        answer = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120).stdout)
        assert answer["choices"][0]["message"]["content"] is not None, answer
        snippet = text.split("[vlcache] or with the openai Python client:", 1)[1].split("INFO:", 1)[0]
        run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "timings" in run.stdout
    finally:
        proc.terminate()
        proc.wait(30)
