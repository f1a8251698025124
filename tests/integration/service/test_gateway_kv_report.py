"""Through the gateway in front of SGLang with the plugin selected: the per-request KV report, the
per-layer pool figures, and KV freed when a client disconnects."""

import json
import re
import time

import httpx
import pytest

from testkit import data_url, make_image, png_data_url, video_bytes

MODEL = "tiny-qwen2vl"
IMAGE = png_data_url(make_image((448, 448), (20, 120, 200), 1))  # 256 visual tokens: enough to compress


def ask(openai_client, vl_cache=None, max_tokens=8):
    return openai_client.chat.completions.create(
        model=MODEL, max_tokens=max_tokens, temperature=0,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}},
                                               {"type": "text", "text": "Describe the image in detail, please."}]}],
        extra_body={"vl_cache": vl_cache} if vl_cache else None,
    )  # fmt: skip


def test_report_is_consistent(vlcache_openai_client, tiny_model_dir, vlcache_gateway):
    layers = json.loads((tiny_model_dir / "config.json").read_text())["text_config"]["num_hidden_layers"]
    resp = ask(vlcache_openai_client, {"policy": "vlcache", "budget": 0.25})
    report = resp.usage.model_extra["kv_cache"]
    assert report is not None, "no vl_cache report in meta_info"
    m = report["prompt_tokens"]
    kept = report["kept_tokens_per_layer"]
    assert report["policy"] == "vlcache" and report["budget"] == pytest.approx(0.25)
    assert m == resp.usage.prompt_tokens
    assert report["compressed"] is True
    assert len(kept) == layers and all(1 <= k <= m for k in kept)
    assert report["realized_budget"] == pytest.approx(sum(kept) / (layers * m), rel=1e-6)
    assert sum(kept) == round(0.25 * layers * m)  # renormalised budgets (docs/algorithm.md section 2)
    assert 0 < report["kv_bytes_kept"] < report["kv_bytes_full"]
    assert report["kv_bytes_kept"] / report["kv_bytes_full"] == pytest.approx(report["realized_budget"], rel=1e-6)
    assert report["kv_bytes_kept"] / report["kv_bytes_full"] == pytest.approx(0.25, abs=0.01)  # the requested budget
    assert report["scoring_ms"] >= 0 and report["reason"] == ""
    assert report["visual_tokens"] == resp.usage.prompt_tokens_details.model_extra["image_tokens"] == 256
    assert len(report["freed_slots_per_layer"]) == layers and all(f > 0 for f in report["freed_slots_per_layer"])
    assert len(report["layer_sparsity"]) == layers
    assert resp.usage.model_extra["timings"]["decode_ms"] is not None

    metrics = httpx.get(f"{vlcache_gateway}/metrics").text
    assert 'vlcache_kv_requests_total{compressed="true",policy="vlcache"}' in metrics
    assert 'vlcache_kv_pool_layer_capacity_slots{layer="0"}' in metrics  # the plugin's per-layer pool figures


def test_full_policy_reports_no_saving_and_changes_nothing(vlcache_openai_client, openai_client):
    stock = ask(openai_client).choices[0].message.content  # the stock server, without the plugin
    resp = ask(vlcache_openai_client, {"policy": "full", "budget": 1.0})
    report = resp.usage.model_extra["kv_cache"]
    assert resp.choices[0].message.content == stock  # docs/algorithm.md section 6
    assert report["realized_budget"] == pytest.approx(1.0)
    assert report["kv_bytes_kept"] == report["kv_bytes_full"]


def test_video_request_is_compressed_too(vlcache_openai_client):
    clip = data_url(video_bytes(frames=30, size=(128, 96), fps=10), "video/mp4")  # 6 frames -> 420 tokens
    resp = vlcache_openai_client.chat.completions.create(
        model=MODEL, max_tokens=4, temperature=0,
        messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": clip}},
                                               {"type": "text", "text": "What happens?"}]}],
        extra_body={"vl_cache": {"policy": "vlcache", "budget": 0.2}},
    )  # fmt: skip
    report = resp.usage.model_extra["kv_cache"]
    assert (
        report["compressed"] is True
        and report["visual_tokens"] == resp.usage.prompt_tokens_details.model_extra["video_tokens"]
    )
    assert report["kv_bytes_kept"] / report["kv_bytes_full"] == pytest.approx(0.2, abs=0.01)


def _layer_slots(http) -> list[int]:
    """The plugin's physical KV slots in use per layer, as the gateway exports them."""
    text = http.get("/metrics").text
    found = re.findall(r'^vlcache_kv_pool_layer_used_slots\{layer="(\d+)"\} ([0-9.e+]+)$', text, re.M)
    return [int(float(v)) for _, v in sorted(found, key=lambda item: int(item[0]))]


def test_client_disconnect_mid_stream_frees_the_requests_kv(vlcache_gateway):
    """The client leaves mid-stream: the gateway aborts the request in SGLang, and every layer's
    physical KV slots go back to what they were before it (the pool figures of the plugin)."""
    image = png_data_url(make_image((448, 448), (200, 200, 40), 2))  # not in the radix tree yet
    body = {"model": MODEL, "max_tokens": 4000, "temperature": 0, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                      {"type": "text", "text": "Describe the image."}]}],
            # reuse off: with the default (lazy) the prompt's full KV stays in the radix tree as
            # evictable cache by design (docs/multiturn.md); here every slot must come back.
            "vl_cache": {"policy": "vlcache", "budget": 0.5, "reuse": "off"}}  # fmt: skip
    with httpx.Client(base_url=vlcache_gateway, timeout=120) as http:
        before = _layer_slots(http)
        assert before, "no per-layer pool figures from the plugin"
        aborted = float(re.search(r"^vlcache_aborted_requests_total (\S+)$", http.get("/metrics").text, re.M).group(1))
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = (line for line in resp.iter_lines() if line)
            next(lines), next(lines)  # the role chunk, then the first token: prefill done, compressed
            during = _layer_slots(http)
            assert all(d > b for d, b in zip(during, before, strict=True)), (before, during)  # 4000 tokens to go
        deadline = time.monotonic() + 15
        while (after := _layer_slots(http)) != before:
            assert time.monotonic() < deadline, f"KV not freed after the client left: {before} -> {after}"
            time.sleep(0.1)
        text = http.get("/metrics").text
    assert f"vlcache_aborted_requests_total {aborted + 1}" in text
