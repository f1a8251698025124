"""`POST /v1/generate` end to end: real multipart uploads (httpx) -> real gateway -> real SGLang."""

import base64

import httpx
import pytest

from testkit import make_image, png_data_url, video_bytes

MODEL = "tiny-qwen2vl"
IMAGE = make_image((224, 224), (30, 90, 200), 3)
PNG = base64.b64decode(png_data_url(IMAGE).split(",", 1)[1])


def test_image_upload_answers_like_the_chat_api(gateway, openai_client):
    """Same image, same question, greedy: the upload route and the chat route give the same answer
    (one intake, one prompt renderer, one SGLang path)."""
    with httpx.Client(base_url=gateway, timeout=180) as http:
        resp = http.post("/v1/generate", data={"prompt": "What is in the picture?", "max_tokens": "6", "temperature": "0"},  # noqa: E501
                         files=[("images", ("photo.png", PNG, "image/png"))])  # fmt: skip
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "generation" and out["model"] == MODEL and resp.headers["x-request-id"] == out["id"]
    usage = out["usage"]
    assert usage["prompt_tokens_details"]["image_tokens"] == 64 and usage["completion_tokens"] >= 1
    assert usage["timings"]["e2e_ms"] >= usage["timings"]["ttft_ms"] > 0 and usage["timings"]["media_ms"] > 0
    chat = openai_client.chat.completions.create(
        model=MODEL, max_tokens=6, temperature=0,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url(IMAGE)}},
                                               {"type": "text", "text": "What is in the picture?"}]}],
    )  # fmt: skip
    assert out["text"] == chat.choices[0].message.content
    assert usage["prompt_tokens"] == chat.usage.prompt_tokens


def test_video_and_image_upload(gateway):
    clip = video_bytes("libx264", "mp4", frames=30, size=(128, 96), fps=10)  # 3 s -> 6 frames -> 420 tokens
    with httpx.Client(base_url=gateway, timeout=180) as http:
        resp = http.post(
            "/v1/generate", data={"prompt": "What happens?", "max_tokens": "3"},
            files=[("images", ("photo.png", PNG, "image/png")), ("video", ("clip.mp4", clip, "video/mp4"))],
        )  # fmt: skip
    assert resp.status_code == 200, resp.text
    details = resp.json()["usage"]["prompt_tokens_details"]
    assert details["image_tokens"] == 64 and details["video_tokens"] == 420


def test_upload_with_vl_cache_options_reports_the_compression(vlcache_gateway):
    big = make_image((448, 448), (20, 120, 200), 1)  # 256 visual tokens: enough to compress
    png = base64.b64decode(png_data_url(big).split(",", 1)[1])
    with httpx.Client(base_url=vlcache_gateway, timeout=180) as http:
        resp = http.post("/v1/generate", data={"prompt": "Describe the image.", "max_tokens": "3", "policy": "vlcache", "budget": "0.2"},  # noqa: E501
                         files=[("images", ("photo.png", png, "image/png"))])  # fmt: skip
    assert resp.status_code == 200, resp.text
    report = resp.json()["usage"]["kv_cache"]
    assert report["policy"] == "vlcache" and report["budget"] == 0.2 and report["compressed"] is True
    assert report["kv_bytes_kept"] / report["kv_bytes_full"] == pytest.approx(0.2, abs=0.01)
