"""The visual-token bound against the real engine: the default comes from SGLang's own limit, a request
over the bound is a 413 before SGLang sees it, and the gateway serves on."""

import httpx

from service.app import create_app
from service.config import GatewaySettings
from testkit import make_image, png_data_url, running_server


def _chat(*sizes):
    parts = [{"type": "image_url", "image_url": {"url": png_data_url(make_image(size, (20, 90, 200), i))}}
             for i, size in enumerate(sizes)]  # fmt: skip
    content = [*parts, {"type": "text", "text": "Describe."}]
    return {"model": "default", "max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": content}]}


def test_default_bound_is_sglangs_longest_input(gateway_app, gateway):
    state = gateway_app.state.gateway
    info = httpx.get(f"{state.settings.backend_url}/server_info", timeout=30).json()
    assert state.max_visual_tokens == info["max_req_input_len"] < info["context_length"] + 1


def test_over_the_bound_is_413_and_the_server_serves_on(sglang_server):
    app = create_app(GatewaySettings(backend_url=sglang_server.url, max_visual_tokens=300))
    with (
        running_server(app, ready_path="/ready", timeout_s=300) as url,
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        resp = http.post("/v1/chat/completions", json=_chat((448, 448), (448, 448)))  # 256 + 256 tokens
        assert resp.status_code == 413, resp.text
        message = resp.json()["error"]["message"]
        assert resp.json()["error"]["code"] == "too_many_visual_tokens"
        assert "512 visual tokens (256 + 256)" in message and "at most 300" in message
        ok = http.post("/v1/chat/completions", json=_chat((448, 448)))
        assert ok.status_code == 200, ok.text
        assert ok.json()["usage"]["prompt_tokens_details"]["image_tokens"] == 256  # SGLang counted what we computed


def test_estimate_equals_the_engines_count_over_the_folders_max_pixels(gateway, tiny_model_dir):
    """640 x 480 is over the tiny Qwen2-VL's max_pixels (448 x 448): the bound counts what SGLang counts."""
    from service.media.visual_tokens import VisualTokenCost

    resp = httpx.post(f"{gateway}/v1/chat/completions", json=_chat((640, 480)), timeout=120)
    assert resp.status_code == 200, resp.text
    engine = resp.json()["usage"]["prompt_tokens_details"]["image_tokens"]
    assert engine == VisualTokenCost.from_model_dir(tiny_model_dir).image(640, 480)
