"""The plugin's per-request KV report, as the gateway returns it."""

import json

import httpx
import pytest

from tests.integration.conftest import data_url, make_image

MODEL = "tiny-qwen2vl"
IMAGE = data_url(make_image((448, 448), (20, 120, 200), 1))  # 256 visual tokens: enough to compress


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
    assert sum(kept) == round(0.25 * layers * m)  # renormalised budgets (VLCACHE_SPEC.md section 2)
    assert 0 < report["kv_bytes_kept"] < report["kv_bytes_full"]
    assert report["kv_bytes_kept"] / report["kv_bytes_full"] == pytest.approx(report["realized_budget"], rel=1e-6)
    assert report["scoring_ms"] >= 0

    metrics = httpx.get(f"{vlcache_gateway}/metrics").text
    assert 'vlcache_kv_requests_total{compressed="true",policy="vlcache"}' in metrics
    assert 'vlcache_kv_pool_layer_capacity_slots{layer="0"}' in metrics  # the plugin's per-layer pool figures


def test_full_policy_reports_no_saving_and_changes_nothing(vlcache_openai_client, openai_client):
    stock = ask(openai_client).choices[0].message.content  # the stock server, without the plugin
    resp = ask(vlcache_openai_client, {"policy": "full", "budget": 1.0})
    report = resp.usage.model_extra["kv_cache"]
    assert resp.choices[0].message.content == stock  # VLCACHE_SPEC.md section 6
    assert report["realized_budget"] == pytest.approx(1.0)
    assert report["kv_bytes_kept"] == report["kv_bytes_full"]
