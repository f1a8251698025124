"""The gateway end to end: the real `openai` client -> real uvicorn gateway -> real SGLang (CPU, tiny model)."""

import json
import subprocess
import sys
import time

import httpx
import openai
import pytest

from service.cli import BANNER_END
from service.sglang_process import free_port
from testkit import data_url, image_bytes, make_image, png_data_url, video_bytes
from tests.integration.service.conftest import API_KEY, MAX_IMAGE_BYTES, _openai

MODEL = "tiny-qwen2vl"


def image_message(url, text="Describe the image in one sentence."):
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}
    ]


RED = png_data_url(make_image((224, 224), (200, 30, 30)))
PNG = image_bytes((224, 224), (200, 30, 30))


def test_image_chat_matches_sglangs_own_openai_endpoint(openai_client, client):
    """Same greedy answer as SGLang's /v1/chat/completions: the gateway renders the prompt the same way."""
    resp = openai_client.chat.completions.create(model=MODEL, messages=image_message(RED), max_tokens=12, temperature=0)
    ours = resp.choices[0].message.content
    assert ours
    usage = resp.usage.model_extra
    assert resp.usage.prompt_tokens_details.model_extra["image_tokens"] == 64  # 224x224 -> 8x8 tokens
    assert usage["kv_cache"] is None or isinstance(usage["kv_cache"], dict)
    # Plain answers are timed from SGLang's stamps (it runs with --enable-metrics, service/sglang_process.py).
    timings = usage["timings"]
    assert 0 < timings["ttft_ms"] <= timings["e2e_ms"] and timings["queue_ms"] >= 0
    assert 0 < timings["decode_ms"] < timings["e2e_ms"]
    assert timings["output_tokens_per_s"] == pytest.approx(
        (resp.usage.completion_tokens - 1) / timings["decode_ms"] * 1000, rel=0.01
    )

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
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["length"],
        ["stop"],
    )
    usage = chunks[-1].usage
    assert usage.completion_tokens >= 1 and "kv_cache" in usage.model_extra
    timings = usage.model_extra["timings"]  # measured by the gateway as the tokens arrived
    assert (
        0 < timings["ttft_ms"] < timings["e2e_ms"] and timings["decode_ms"] > 0 and timings["output_tokens_per_s"] > 0
    )


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


def _chat(messages, **extra):
    return {"model": MODEL, "messages": messages, "max_tokens": 2, **extra}


def test_bad_input_suite(openai_client, media_server, gateway):
    """Each bad request gets its status and an OpenAI-style JSON error; the gateway then still serves."""
    base, _ = media_server
    port = base.rsplit(":", 1)[1]
    bmp, big = image_bytes(fmt="BMP"), b"\x89PNG" + bytes(MAX_IMAGE_BYTES)
    chat_cases = [
        (400, "invalid_media_url", _chat(image_message("data:image/png;base64,@@@not base64@@@"))),
        (400, "invalid_media", _chat(image_message("data:image/png;base64,bm90IGFuIGltYWdl"))),  # "not an image"
        (400, "media_url_not_allowed", _chat(image_message(f"http://127.0.0.2:{port}/photo.jpg"))),  # SSRF guard
        (400, "media_fetch_failed", _chat(image_message(f"{base}/missing.png"))),
        (400, "invalid_media_url", _chat(image_message("file:///etc/passwd"))),
        (400, "invalid_policy", _chat(image_message(RED), vl_cache={"policy": "nope"})),
        (400, "invalid_budget", _chat(image_message(RED), vl_cache={"policy": "vlcache", "budget": 1.5})),
        (400, "backend_rejected_request", _chat([{"role": "user", "content": "hi " * 9000}])),  # over SGLang's context
        (404, "model_not_found", {**_chat(image_message(RED)), "model": "gpt-4o"}),
        (413, "media_too_large", _chat(image_message(data_url(big, "image/png")))),
        (415, "unsupported_media_type", _chat(image_message(data_url(bmp, "image/bmp")))),
        (422, "validation_error", {"model": MODEL}),  # no messages
        (422, "validation_error", _chat(image_message(RED), max_tokens="two")),
    ]
    upload_cases = [  # POST /v1/generate, multipart
        (422, "validation_error", {"max_tokens": "2"}, [("images", ("red.png", PNG, "image/png"))]),  # no prompt
        (415, "unsupported_media_type", {"prompt": "x"}, [("images", ("notes.txt", b"plain text", "text/plain"))]),
        (413, "media_too_large", {"prompt": "x"}, [("images", ("big.png", big, "image/png"))]),
        (400, "invalid_budget", {"prompt": "x", "budget": "2"}, [("images", ("red.png", PNG, "image/png"))]),
    ]
    with httpx.Client(base_url=gateway, timeout=120) as http:
        answers = [(status, code, http.post("/v1/chat/completions", json=body)) for status, code, body in chat_cases]
        answers += [
            (status, code, http.post("/v1/generate", data=data, files=files))
            for status, code, data, files in upload_cases
        ]
        answers.append(
            (
                400,
                "invalid_json",
                http.post("/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}),
            )
        )
        for status, code, resp in answers:
            assert resp.status_code == status, (code, resp.text)
            error = resp.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["code"] == code, (
                error
            )
        good = http.post(
            "/v1/generate",
            data={"prompt": "Describe it.", "max_tokens": "2"},
            files=[("images", ("red.png", PNG, "image/png"))],
        )
        assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] >= 1
    # The official client raises its typed errors for these statuses, and the gateway still serves it.
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(
            model=MODEL, messages=image_message(RED), max_tokens=2, extra_body={"vl_cache": {"budget": 0}}
        )
    with pytest.raises(openai.UnprocessableEntityError):
        openai_client.chat.completions.create(
            model=MODEL, messages=image_message(RED), max_tokens=2, extra_body={"tools_please": 1}
        )
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
        messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data_url(clip, mime), "max_frames": 2}}]}],  # noqa: E501
    )  # fmt: skip
    assert video_tokens == 3 * fewer.usage.prompt_tokens_details.model_extra["video_tokens"] > 0


def test_api_key_is_required_on_v1_routes_only(strict_gateway):
    with _openai(strict_gateway, api_key="wrong") as client, pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model=MODEL, messages=image_message(RED), max_tokens=2)
    assert err.value.body["code"] == "invalid_api_key"
    with httpx.Client(base_url=strict_gateway, timeout=120) as http:
        for path in ["/v1/models", "/v1/chat/completions", "/v1/generate"]:
            resp = http.request("GET" if path == "/v1/models" else "POST", path)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key", path
        for path in ["/health", "/ready", "/metrics"]:  # probes and Prometheus stay open
            assert http.get(path).status_code == 200, path
    with _openai(strict_gateway, api_key=API_KEY) as client:
        assert client.chat.completions.create(model=MODEL, messages=image_message(RED), max_tokens=2).choices


def test_in_flight_limit_of_one_gives_429_with_retry_after(strict_gateway):
    """One slow streaming request holds the only slot: the next request gets 429 at once; when the
    first client leaves, its SGLang request is aborted, the slot is free and the next one is served."""
    long = _chat(image_message(RED), max_tokens=4000, ignore_eos=True, stream=True)
    with httpx.Client(base_url=strict_gateway, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        with http.stream("POST", "/v1/chat/completions", json=long) as resp:
            assert resp.status_code == 200
            lines = (line for line in resp.iter_lines() if line)
            next(lines), next(lines)  # the role chunk, then the first token: it decodes now
            for second in (http.post("/v1/chat/completions", json=_chat(image_message(RED))),
                           http.post("/v1/generate", data={"prompt": "hi", "max_tokens": "2"})):  # fmt: skip
                assert second.status_code == 429, second.text
                assert second.headers["retry-after"] == "2"
                assert (
                    second.json()["error"]["type"] == "rate_limit_error"
                    and second.json()["error"]["code"] == "too_many_requests"
                )
        deadline = time.monotonic() + 30
        while "vlcache_inflight_requests 0.0" not in http.get("/metrics").text:
            assert time.monotonic() < deadline, "the slot was not released after the client left"
            time.sleep(0.1)
        assert http.post("/v1/chat/completions", json=_chat(image_message(RED))).status_code == 200
        metrics = http.get("/metrics").text
    assert 'vlcache_rejected_requests_total{reason="overloaded"} 2.0' in metrics
    assert "vlcache_aborted_requests_total 1.0" in metrics


def _metric(text, name):
    """The value of one sample line (`name` includes its labels)."""
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def test_metrics_and_probes(gateway, openai_client):
    list(openai_client.chat.completions.create(model=MODEL, messages=image_message(RED), max_tokens=4, stream=True))
    with httpx.Client(base_url=gateway) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").status_code == 200
        assert http.get("/v1/models").json()["data"][0]["id"] == MODEL
        text = http.get("/metrics").text
    for name in [  # counted after this session's traffic (earlier tests included)
        'vlcache_requests_total{endpoint="/v1/chat/completions",status="200"}',
        "vlcache_e2e_request_latency_seconds_count{stream=\"true\"}", 'vlcache_e2e_request_latency_seconds_count{stream="false"}',  # noqa: E501
        "vlcache_time_to_first_token_seconds_count", "vlcache_inter_token_latency_seconds_count",
        "vlcache_request_queue_time_seconds_count", "vlcache_prompt_tokens_total", "vlcache_visual_tokens_total",
        "vlcache_generation_tokens_total", 'vlcache_media_items_total{kind="image"}',
        'vlcache_media_processing_seconds_count{kind="image"}', "vlcache_backend_up",
    ]:  # fmt: skip
        assert _metric(text, name) > 0, name
    assert _metric(text, "vlcache_kv_pool_capacity_tokens") == 32768  # the fixture's --max-total-tokens
    for name in ["vlcache_inflight_requests", "vlcache_kv_pool_used_tokens", "vlcache_kv_bytes_full_total",
                 "vlcache_kv_realized_budget_count", "vlcache_rejected_requests_total"]:  # fmt: skip
        assert f"# TYPE {name.removesuffix('_count').removesuffix('_total')}" in text, name


def test_cli_attaches_and_prints_working_examples(sglang_server, tmp_path):
    """`vlcache-serve --backend-url ...`: the printed curl and openai snippet both work as printed."""
    port = free_port()
    log = tmp_path / "cli.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--backend-url", sglang_server.url, "--port", str(port)],  # noqa: E501
                                stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while BANNER_END not in log.read_text():  # printed once the socket is bound
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        text = log.read_text()
        curl = next(line for line in text.splitlines() if line.startswith("curl "))
        answer = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120).stdout)
        assert answer["choices"][0]["message"]["content"] is not None, answer
        snippet = text.split("[vlcache] or with the openai Python client:", 1)[1].split(BANNER_END, 1)[0]
        run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "timings" in run.stdout
    finally:
        proc.terminate()
        code = proc.wait(30)
    assert code == 0, log.read_text()[-2000:]  # SIGTERM with nothing in flight: a clean stop
    assert "Traceback" not in log.read_text()
