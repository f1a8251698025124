"""The gateway around its backend (a fake SGLang): request translation, errors, 429, reports, metrics."""

import json
import threading
import time

import httpx
import pytest

from service.errors import BackendError, InvalidRequest
from testkit import data_url, image_bytes, running_server, video_bytes
from tests.fast.service.fake_backend import REPORT, REPORT_AS_ANSWERED


def chat(content="Hello", **extra):
    return {"model": "tiny-qwen2vl", "max_tokens": 8, "messages": [{"role": "user", "content": content}], **extra}


def image_part(**kw):
    return {"type": "image_url", "image_url": {"url": data_url(image_bytes(**kw), "image/png")}}


def assert_openai_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code


def test_plain_completion_shape_and_translation(make_client, fake):
    client = make_client()
    body = chat([image_part(), {"type": "video_url", "video_url": {"url": data_url(video_bytes(), "video/mp4")}},
                 {"type": "text", "text": "What is this?"}],
                temperature=0.5, top_p=0.9, stop="END", seed=7, vl_cache={"policy": "vlcache", "budget": 0.25})  # fmt: skip  # noqa: E501
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "chat.completion" and out["model"] == "tiny-qwen2vl"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
    assert out["choices"][0]["finish_reason"] == "length"
    assert resp.headers["x-request-id"] == out["id"]
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] == 103
    assert usage["kv_cache"] is None  # no plugin report: null, not an error
    assert usage["timings"]["media_ms"] > 0 and usage["timings"]["e2e_ms"] >= usage["timings"]["media_ms"]

    payload = fake.payloads[-1]
    assert payload["rid"] == out["id"]
    assert (
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>What is this?"
        in payload["text"]
    )
    assert payload["text"].endswith("<|im_start|>assistant\n")
    assert payload["image_data"][0].startswith("data:image/png;base64,") and "modalities" not in payload  # one image
    assert payload["video_data"][0].startswith("data:video/mp4;base64,")
    assert payload["sampling_params"] == {
        "max_new_tokens": 8, "temperature": 0.5, "top_p": 0.9, "sampling_seed": 7, "stop": ["END"],
        "custom_params": {"vl_cache": {"policy": "vlcache", "budget": 0.25}},
    }  # fmt: skip


def test_server_default_policy_and_no_policy(make_client, fake):
    make_client(default_policy="snapkv", default_budget=0.5).post("/v1/chat/completions", json=chat())
    assert fake.payloads[-1]["sampling_params"]["custom_params"] == {"vl_cache": {"policy": "snapkv", "budget": 0.5}}
    make_client().post("/v1/chat/completions", json=chat())
    assert "custom_params" not in fake.payloads[-1]["sampling_params"]  # stock SGLang behaviour


def test_kv_report_is_forwarded_and_counted(make_client, fake):
    fake.meta_extra = {"vl_cache": REPORT}
    client = make_client()
    usage = client.post("/v1/chat/completions", json=chat()).json()["usage"]
    assert usage["kv_cache"] == REPORT_AS_ANSWERED
    metrics = client.get("/metrics").text
    assert 'vlcache_kv_requests_total{compressed="true",policy="vlcache"} 1.0' in metrics
    assert "vlcache_kv_bytes_full_total 102400.0" in metrics and "vlcache_kv_bytes_kept_total 10240.0" in metrics


def test_report_as_a_list_takes_the_last_entry(make_client, fake):
    fake.meta_extra = {"vl_cache": [None, {**REPORT, "budget": 0.5}, REPORT, None]}
    assert make_client().post("/v1/chat/completions", json=chat()).json()["usage"]["kv_cache"] == REPORT_AS_ANSWERED


def test_malformed_report_is_null_not_an_error(make_client, fake):
    fake.meta_extra = {"vl_cache": {"policy": "vlcache"}}  # fields missing
    resp = make_client().post("/v1/chat/completions", json=chat())
    assert resp.status_code == 200 and resp.json()["usage"]["kv_cache"] is None


BMP = data_url(image_bytes(fmt="BMP"), "image/bmp")


@pytest.mark.parametrize(
    "body,status,code",
    [
        # 422: the body does not fit the schema
        (chat(bogus=1), 422, "validation_error"),
        (chat(n=2), 422, "validation_error"),
        ({"model": "default", "messages": []}, 422, "validation_error"),
        ({"model": "default"}, 422, "validation_error"),
        (chat(max_tokens="many"), 422, "validation_error"),
        (chat([{"type": "audio", "audio": "x"}]), 422, "validation_error"),
        (chat(vl_cache={"policy": 3}), 400, "invalid_policy"),
        (chat(vl_cache={"budget": "lots"}), 400, "invalid_budget"),
        (chat(vl_cache=[1]), 400, "invalid_vl_cache"),
        # 400: bad values
        (chat(vl_cache={"policy": "nope"}), 400, "invalid_policy"),
        (chat(vl_cache={"policy": "vlcache", "budget": 1.5}), 400, "invalid_budget"),
        (chat(vl_cache={"budget": 0}), 400, "invalid_budget"),
        (chat(vl_cache={"policy": "vlcache", "nested": {"a": 1}}), 400, "invalid_vl_cache"),
        ({"model": "default", "messages": [{"role": "assistant", "content": [image_part()]}]}, 400, None),
        (chat([image_part()] * 9), 400, "too_many_media"),
        (chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]), 400, "invalid_media"),
        (chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]), 400, "invalid_media_url"),
        (chat([{"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]), 400, "media_url_not_allowed"),
        (
            chat([{"type": "video_url", "video_url": {"url": data_url(b"junk" * 100, "video/mp4")}}]),
            400,
            "invalid_media",
        ),
        # 415: a type the gateway does not take
        (chat([{"type": "image_url", "image_url": {"url": BMP}}]), 415, "unsupported_media_type"),
        (
            chat([{"type": "image_url", "image_url": {"url": data_url(b"hello", "text/plain")}}]),
            415,
            "unsupported_media_type",
        ),
        (
            chat([{"type": "video_url", "video_url": {"url": data_url(image_bytes(), "image/png")}}]),
            415,
            "unsupported_media_type",
        ),
        # 413: over a size limit (the test settings allow 1 MB images)
        (
            chat([{"type": "image_url", "image_url": {"url": data_url(b"x" * 1_100_000, "image/png")}}]),
            413,
            "media_too_large",
        ),
        # 404
        ({**chat(), "model": "gpt-4"}, 404, "model_not_found"),
    ],
    ids=[
        "unknown-field",
        "n=2",
        "no-messages",
        "no-messages-field",
        "wrong-type",
        "unknown-part",
        "policy-type",
        "budget-type",
        "vl-cache-type",
        "bad-policy",
        "bad-budget",
        "zero-budget",
        "nested-option",
        "media-in-assistant",
        "too-many-images",
        "undecodable-png",
        "bad-base64",
        "ssrf",
        "undecodable-mp4",
        "bmp",
        "text-file",
        "image-as-video",
        "image-too-big",
        "unknown-model",
    ],  # fmt: skip
)
def test_bad_requests_are_openai_errors(make_client, fake, body, status, code):
    client = make_client(max_image_bytes=1_000_000)
    assert_openai_error(client.post("/v1/chat/completions", json=body), status, code)
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200  # still serving
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-qwen2vl"


def test_policy_or_budget_alone_completes_from_the_server_defaults(make_client, fake):
    client = make_client(default_policy="snapkv", default_budget=0.5)
    client.post("/v1/chat/completions", json=chat(vl_cache={"budget": 0.2}))
    assert fake.payloads[-1]["sampling_params"]["custom_params"] == {"vl_cache": {"policy": "snapkv", "budget": 0.2}}
    client.post("/v1/chat/completions", json=chat(vl_cache={"policy": "h2o", "renormalize": False}))
    assert fake.payloads[-1]["sampling_params"]["custom_params"] == {
        "vl_cache": {"policy": "h2o", "budget": 0.5, "renormalize": False}}  # fmt: skip


def test_malformed_json_is_400(make_client):
    resp = make_client().post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_openai_error(resp, 400, "invalid_json")


def test_body_limit_is_413(make_client):
    client = make_client(max_request_bytes=2048)
    assert_openai_error(client.post("/v1/chat/completions", json=chat("x" * 5000)), 413, "request_too_large")


@pytest.mark.parametrize(
    "error,status,code",
    [
        (
            InvalidRequest("The input is longer than the context length", code="backend_rejected_request"),
            400,
            "backend_rejected_request",
        ),
        (
            BackendError("SGLang is unreachable", status_code=503, code="backend_unavailable"),
            503,
            "backend_unavailable",
        ),
        (
            BackendError("SGLang did not answer in time", status_code=504, code="backend_timeout"),
            504,
            "backend_timeout",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_backend_errors_before_output_keep_their_status(make_client, fake, error, status, code, stream):
    fake.error = error
    assert_openai_error(make_client().post("/v1/chat/completions", json=chat(stream=stream)), status, code)


def test_error_mapping_from_sglang_statuses():
    from service.backend import error_from_backend

    assert error_from_backend(400, "too long").status_code == 400
    assert error_from_backend(429, "busy").status_code == 429
    assert error_from_backend(503, "down").status_code == 503
    assert error_from_backend(500, "crash").status_code == 502


def test_abort_finish_reason_becomes_an_error(make_client, fake):
    fake.meta_extra = {"finish_reason": {"type": "abort", "message": "prompt too long", "status_code": 400}}
    assert_openai_error(make_client().post("/v1/chat/completions", json=chat()), 400)


def sse_events(text):
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def test_stream_shape_and_usage(make_client, fake):
    fake.meta_extra = {"vl_cache": REPORT}
    resp = make_client().post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["kv_cache"] == REPORT_AS_ANSWERED
    assert chunks[-1]["usage"]["timings"]["ttft_ms"] is not None


def test_stream_without_include_usage_has_no_usage_chunk(make_client):
    events = sse_events(make_client().post("/v1/chat/completions", json=chat(stream=True)).text)
    assert all("usage" not in json.loads(e) for e in events[:-1])


def test_error_mid_stream_is_an_error_event(make_client, fake):
    fake.error_after = 1
    events = sse_events(make_client().post("/v1/chat/completions", json=chat(stream=True)).text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "backend_error"


def test_incremental_backend_stream(make_client, fake):
    fake.server_info_json = {"incremental_streaming_output": True}
    fake_pieces = fake.pieces

    async def incremental(payload, headers=None):
        for i, piece in enumerate(fake_pieces, 1):
            yield {"text": piece, "meta_info": fake._meta(i, i == len(fake_pieces))}

    fake.generate_stream = incremental
    events = sse_events(make_client().post("/v1/chat/completions", json=chat(stream=True)).text)
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "Hello world"


@pytest.mark.parametrize("stream", [False, True])
def test_429_when_in_flight_limit_is_reached(make_client, fake, stream):
    client = make_client(max_inflight_requests=1, retry_after_s=3)
    fake.gate = threading.Event()
    first = {}
    thread = threading.Thread(
        target=lambda: first.update(r=client.post("/v1/chat/completions", json=chat(stream=stream)))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while client.app.state.gateway.limiter.inflight < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        resp = client.post("/v1/chat/completions", json=chat())
        assert_openai_error(resp, 429, "too_many_requests")
        assert resp.headers["retry-after"] == "3"
        assert resp.json()["error"]["type"] == "rate_limit_error"
    finally:
        fake.gate.set()
        thread.join(10)
    assert first["r"].status_code == 200
    assert client.app.state.gateway.limiter.inflight == 0  # released, streaming included
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200
    assert 'vlcache_rejected_requests_total{reason="overloaded"} 1.0' in client.get("/metrics").text


def test_health_ready_models(make_client, fake):
    client = make_client()
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    fake.healthy = False
    assert_openai_error(client.get("/ready"), 503, "backend_unavailable")
    assert client.get("/health").status_code == 200  # liveness does not depend on SGLang


def test_metrics_pool_gauges_and_layer_hook(make_client, fake):
    # The plugin's pool figures (radix_ext/sglang/compressor.py::pool_figures), as /server_info carries them.
    fake.server_info_json = {"internal_states": [{"vl_cache": {
        "physical_slots_total": 1000, "physical_slots_used_per_layer": [30, 7], "logical_slots_used": 30}}]}  # fmt: skip  # noqa: E501
    fake.meta_extra = {"vl_cache": [REPORT]}  # the plugin's one-element list
    client = make_client()
    client.post("/v1/chat/completions", json=chat())
    text = client.get("/metrics").text
    for line in [
        "vlcache_backend_up 1.0", "vlcache_kv_pool_used_tokens 50.0", "vlcache_kv_pool_capacity_tokens 1000.0",
        "vlcache_kv_pool_token_usage 0.05", "vlcache_backend_waiting_requests 2.0",
        'vlcache_kv_pool_layer_used_slots{layer="0"} 30.0', 'vlcache_kv_pool_layer_used_slots{layer="1"} 7.0',
        'vlcache_kv_pool_layer_capacity_slots{layer="1"} 1000.0', 'vlcache_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0',  # noqa: E501
        "vlcache_prompt_tokens_total 100.0", "vlcache_generation_tokens_total 3.0",
        "vlcache_visual_tokens_total 64.0",  # no image_tokens from SGLang here: the report's visual_tokens
        "vlcache_inter_token_latency_seconds_count 2.0",  # plain: the mean step, once per token after the first
        'vlcache_inter_token_latency_seconds_bucket{le="0.01"} 2.0',  # (30 ms e2e - 10 ms TTFT) / 2 steps
        "vlcache_time_to_first_token_seconds_count 1.0", "vlcache_request_queue_time_seconds_count 1.0",
        'vlcache_e2e_request_latency_seconds_count{stream="false"} 1.0',
        "vlcache_request_kv_bytes_full_count 1.0", "vlcache_request_kv_bytes_kept_sum 10240.0",
    ]:  # fmt: skip
        assert line in text, line


def test_metrics_survive_a_dead_backend(make_client, fake):
    async def down():
        raise BackendError("down", status_code=503)

    fake.loads = down
    resp = make_client().get("/metrics")
    assert resp.status_code == 200 and "vlcache_backend_up 0.0" in resp.text


def test_client_disconnect_mid_stream_aborts_in_backend(chat_template, fake):
    """Real HTTP (uvicorn): the client closes the stream; the gateway aborts the rid in the backend."""
    from service.app import create_app
    from service.config import GatewaySettings

    fake.pieces = [f"t{i} " for i in range(200)]
    fake.step_s = 0.05  # 10 s of output if nobody aborts
    app = create_app(GatewaySettings(backend_url="http://fake"), backend=fake, template=chat_template)
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=10) as client:
            with client.stream("POST", "/v1/chat/completions", json=chat(stream=True, max_tokens=200)) as resp:
                rid = resp.headers["x-request-id"]
                lines = resp.iter_lines()
                for _ in range(3):
                    next(lines)
            # leaving the block closed the connection mid-stream
            deadline = time.monotonic() + 5
            while rid not in fake.aborted:
                assert time.monotonic() < deadline, "the gateway did not abort the backend request"
                time.sleep(0.05)
            assert app.state.gateway.limiter.inflight == 0
            assert "vlcache_aborted_requests_total 1.0" in client.get("/metrics").text


def test_timings_of_a_plain_answer_come_from_sglangs_stamps(make_client, fake):
    timings = make_client().post("/v1/chat/completions", json=chat()).json()["usage"]["timings"]
    # The fake SGLang: queue 2 ms, first token 10 ms after receipt, finished at 30 ms, 3 tokens.
    assert timings["queue_ms"] == 2.0
    assert timings["ttft_ms"] >= 10.0 and timings["e2e_ms"] >= timings["media_ms"]
    assert timings["decode_ms"] == pytest.approx(20.0)
    assert timings["output_tokens_per_s"] == pytest.approx(100.0)  # 2 tokens after the first in 20 ms


def test_timings_of_a_stream_are_measured_by_the_gateway(make_client, fake):
    fake.step_s = 0.02
    client = make_client()
    events = sse_events(
        client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True})).text
    )
    timings = json.loads(events[-2])["usage"]["timings"]
    assert timings["ttft_ms"] >= 20 and timings["decode_ms"] >= 35  # 3 events 20 ms apart
    assert timings["output_tokens_per_s"] == pytest.approx(2000.0 / timings["decode_ms"], rel=1e-3)
    assert timings["e2e_ms"] >= timings["ttft_ms"] + timings["decode_ms"] - 1
    metrics = client.get("/metrics").text
    assert "vlcache_inter_token_latency_seconds_count 2.0" in metrics  # one per token after the first
    assert 'vlcache_inter_token_latency_seconds_bucket{le="0.01"} 0.0' in metrics  # each gap is ~20 ms
    assert 'vlcache_e2e_request_latency_seconds_count{stream="true"} 1.0' in metrics


def test_api_key_guards_v1_routes_only(make_client):
    client = make_client(api_key="s3cret")
    for method, path in [("get", "/v1/models"), ("post", "/v1/chat/completions"), ("post", "/v1/generate")]:
        resp = getattr(client, method)(path)
        assert_openai_error(resp, 401, "invalid_api_key")
        assert resp.headers["www-authenticate"] == "Bearer"
    assert_openai_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    assert_openai_error(client.get("/v1/models", headers={"Authorization": "Basic s3cret"}), 401, "invalid_api_key")
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/models", headers=ok).status_code == 200
    assert client.post("/v1/chat/completions", json=chat(), headers=ok).status_code == 200
    for path in ["/health", "/ready", "/metrics", "/openapi.json"]:  # probes and Prometheus carry no key
        assert client.get(path).status_code == 200, path
    assert 'vlcache_requests_total{endpoint="/v1/models",status="401"} 3.0' in client.get("/metrics").text


def test_no_api_key_configured_means_open(make_client):
    assert make_client().get("/v1/models", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_backend_not_ready_at_start_is_503_until_it_is(make_client, fake, monkeypatch):
    """A pod whose SGLang still loads: the gateway runs, answers 503, and connects once SGLang is up."""
    import service.app

    monkeypatch.setattr(service.app, "RETRY_FIRST_S", 0.05)
    real_model_info, calls = fake.model_info, []

    async def loading():
        calls.append(1)
        if len(calls) < 3:
            raise BackendError("SGLang is unreachable (ConnectError)", status_code=503, code="backend_unavailable")
        return await real_model_info()

    fake.model_info = loading
    client = make_client()
    assert client.get("/health").status_code == 200
    resp = client.post("/v1/chat/completions", json=chat())
    if resp.status_code == 503:  # (the retry may already have connected on a slow machine)
        assert_openai_error(resp, 503, "backend_not_ready")
        assert resp.headers["retry-after"]
    deadline = time.monotonic() + 10
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "the gateway never connected"
        time.sleep(0.05)
    assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_unreachable_backend_is_503(chat_template):
    """Real httpx client, nothing listening: every model route is 503, liveness and metrics still answer."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import GatewaySettings
    from service.sglang_process import free_port

    app = create_app(GatewaySettings(backend_url=f"http://127.0.0.1:{free_port()}"), template=chat_template)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/health").status_code == 200
        assert_openai_error(client.get("/ready"), 503, "backend_not_ready")
        assert_openai_error(client.get("/v1/models"), 503, "backend_not_ready")
        assert_openai_error(client.post("/v1/chat/completions", json=chat()), 503, "backend_not_ready")
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "vlcache_backend_up 0.0" in metrics.text
        # Connected, then SGLang goes away: the generation call itself is the 503.
        gw = app.state.gateway
        gw.template, gw.model_name = chat_template, "tiny-qwen2vl"
        assert_openai_error(client.post("/v1/chat/completions", json=chat()), 503, "backend_unavailable")
        assert gw.limiter.inflight == 0
