"""`POST /v1/generate` (multipart uploads) around a fake SGLang: translation, report, refusals.

The same route against the real SGLang engine: tests/integration/service/test_gateway_generate_e2e.py.
"""

import pytest

from testkit import image_bytes, video_bytes
from tests.fast.service.fake_backend import REPORT, REPORT_AS_ANSWERED
from tests.fast.service.test_gateway_app import assert_openai_error

PNG = image_bytes((64, 48), fmt="PNG")


def test_images_and_video_become_one_user_turn(make_client, fake):
    fake.meta_extra = {"vl_cache": [REPORT]}
    resp = make_client().post(
        "/v1/generate",
        data={"prompt": "What changed?", "max_tokens": "5", "policy": "vlcache", "budget": "0.25", "temperature": "0",
              "seed": "3", "max_frames": "4"},
        files=[("images", ("a.png", PNG, "image/png")), ("images", ("b.jpg", image_bytes(fmt="JPEG"), "image/jpeg")),
               ("video", ("clip.mp4", video_bytes(frames=30, fps=10), "video/mp4"))],
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "generation" and out["text"] == "Hello world" and out["finish_reason"] == "length"
    assert resp.headers["x-request-id"] == out["id"] and out["model"] == "tiny-qwen2vl"
    assert out["usage"]["kv_cache"] == REPORT_AS_ANSWERED and out["usage"]["total_tokens"] == 103
    assert set(out["usage"]["timings"]) == {
        "media_ms",
        "queue_ms",
        "ttft_ms",
        "decode_ms",
        "e2e_ms",
        "output_tokens_per_s",
    }

    payload = fake.payloads[-1]
    assert (
        "<|vision_start|><|image_pad|><|vision_end|>" * 2 + "<|vision_start|><|video_pad|><|vision_end|>What changed?"
    ) in payload["text"]
    assert len(payload["image_data"]) == 2 and len(payload["video_data"]) == 1
    assert payload["modalities"] == ["multi-images"]  # else original-format LLaVA sees the first image only
    assert payload["sampling_params"] == {
        "max_new_tokens": 5, "temperature": 0.0, "sampling_seed": 3,
        "custom_params": {"vl_cache": {"policy": "vlcache", "budget": 0.25}},
    }  # fmt: skip


def test_prompt_only(make_client, fake):
    resp = make_client(default_policy="full").post("/v1/generate", data={"prompt": "Hi"})
    assert resp.status_code == 200, resp.text
    assert "image_data" not in fake.payloads[-1] and fake.payloads[-1]["text"].endswith(
        "Hi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fake.payloads[-1]["sampling_params"]["custom_params"] == {"vl_cache": {"policy": "full"}}


@pytest.mark.parametrize(
    "data,files,status,code",
    [
        ({}, [("images", ("a.png", PNG, "image/png"))], 422, "validation_error"),  # no prompt
        ({"prompt": ""}, [], 422, "validation_error"),
        ({"prompt": "x", "max_tokens": "many"}, [], 422, "validation_error"),
        ({"prompt": "x", "budget": "lots"}, [], 400, "invalid_budget"),  # not a number at all: still a bad budget
        ({"prompt": "x", "budget": "1.5"}, [], 400, "invalid_budget"),
        ({"prompt": "x", "budget": "0"}, [], 400, "invalid_budget"),
        ({"prompt": "x", "policy": "nope"}, [], 400, "invalid_policy"),
        ({"prompt": "x"}, [("images", ("notes.txt", b"just text", "text/plain"))], 415, "unsupported_media_type"),
        ({"prompt": "x"}, [("images", ("a.bmp", image_bytes(fmt="BMP"), "image/bmp"))], 415, "unsupported_media_type"),
        ({"prompt": "x"}, [("video", ("a.png", PNG, "image/png"))], 415, "unsupported_media_type"),
        ({"prompt": "x"}, [("images", ("a.png", b"\x89PNG broken", "image/png"))], 400, "invalid_media"),
        ({"prompt": "x"}, [("images", ("big.png", b"x" * 1_100_000, "image/png"))], 413, "media_too_large"),
        ({"prompt": "x"}, [("images", ("a.png", PNG, "image/png"))] * 3, 400, "too_many_media"),
        ({"prompt": "x", "model": "gpt-4"}, [], 404, "model_not_found"),
    ],
    ids=[
        "no-prompt",
        "empty-prompt",
        "bad-max-tokens",
        "budget-not-a-number",
        "budget-over-1",
        "budget-0",
        "bad-policy",
        "text-file",
        "bmp",
        "image-as-video",
        "corrupt-png",
        "too-big",
        "too-many",
        "unknown-model",
    ],  # fmt: skip
)
def test_bad_uploads(make_client, fake, data, files, status, code):
    client = make_client(max_image_bytes=1_000_000, max_images_per_request=2)
    assert_openai_error(client.post("/v1/generate", data=data, files=files or None), status, code)
    assert (
        client.post("/v1/generate", data={"prompt": "x"}, files=[("images", ("a.png", PNG, "image/png"))]).status_code
        == 200
    )


def test_request_over_the_body_limit_is_413(make_client):
    client = make_client(max_request_bytes=4096)
    resp = client.post("/v1/generate", data={"prompt": "x"}, files=[("images", ("a.png", b"x" * 10_000, "image/png"))])
    assert_openai_error(resp, 413, "request_too_large")
