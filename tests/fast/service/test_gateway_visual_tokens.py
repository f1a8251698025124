"""The per-request visual-token bound: costs computed from the pixels as Qwen2-VL resizes them, a 413
that says the bound and what the request needed, and the gateway serving on afterwards."""

import json

import pytest

from service.media.visual_tokens import VisualTokenCost
from testkit import data_url, image_bytes, video_bytes

HF_DEFAULT = VisualTokenCost()  # Qwen2-VL's processor defaults (min 56x56 px, max 16384 x 28 x 28 px)


@pytest.mark.parametrize(
    ("size", "tokens"),
    [((448, 448), 256), ((224, 224), 64), ((980, 980), 35 * 35), ((28, 28), 4), ((640, 480), 17 * 23)],
)
def test_tiny_model_image_costs(tiny_model_dir, size, tokens):
    """SGLang caps a Qwen2-VL image at Qwen2-VL's released 1,003,520 px, not the folder's 200,704 px (its
    get_processor overrides the size; the engine's own count is checked in test_gateway_visual_tokens_e2e)."""
    assert VisualTokenCost.from_model_dir(tiny_model_dir).image(*size) == tokens


@pytest.mark.parametrize("size", [(640, 480), (1000, 37), (3000, 2000), (29, 55), (4000, 30), (447, 449)])
def test_image_resize_equals_transformers_qwen2vl(size):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_smart_resize

    cost = VisualTokenCost(image_min_pixels=3136, image_max_pixels=200704)
    h, w = hf_smart_resize(size[1], size[0], factor=28, min_pixels=3136, max_pixels=200704)
    assert cost.image(*size) == (h // 28) * (w // 28)


@pytest.mark.parametrize(("size", "tokens"), [((980, 980), 1225), ((448, 448), 256), ((1000, 500), 36 * 18)])
def test_default_image_costs_are_28_px_per_merged_token(size, tokens):
    assert HF_DEFAULT.image(*size) == tokens


def test_video_cost_is_frame_pairs_times_the_resized_grid(tiny_model_dir):
    # 6 frames of 128 x 96 are upscaled to 392 x 280 (SGLang's 128 x 28 x 28 px minimum): 3 x 14 x 10.
    assert VisualTokenCost.from_model_dir(tiny_model_dir).video(6, 128, 96) == 420


@pytest.mark.parametrize(("size", "tiles"), [((448, 448), 10), ((224, 336), 7), ((896, 448), 9), ((4000, 30), 13)])
def test_internvl_costs_sglangs_448_px_tiles_times_tokens_per_tile(tmp_path, size, tiles):
    """InternVL2.5's geometry (448-px tiles, patch 14, pixel shuffle 0.5: 256 tokens a tile). SGLang breaks
    aspect ties toward more tiles, so a square is 3 x 3 + thumbnail, 2:1 is 4 x 2 + thumbnail, an extreme strip
    12 + thumbnail (service/media/internvl_tiles.py); a video is 32 one-tile frames."""
    config = {
        "model_type": "internvl_chat",
        "force_image_size": 448,
        "downsample_ratio": 0.5,
        "vision_config": {"image_size": 448, "patch_size": 14},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    cost = VisualTokenCost.from_model_dir(tmp_path)
    assert cost.tokens_per_tile == 256 and not cost.engine_counts
    assert cost.image(*size) == tiles * 256
    assert cost.video(6, 640, 480) == 32 * 256


def test_missing_processor_config_gives_the_defaults(tmp_path):
    assert VisualTokenCost.from_model_dir(tmp_path) == HF_DEFAULT


def _chat(*parts):
    content = [*parts, {"type": "text", "text": "What is this?"}]
    return {"model": "tiny-qwen2vl", "max_tokens": 4, "messages": [{"role": "user", "content": content}]}


def _image(size):
    return {"type": "image_url", "image_url": {"url": data_url(image_bytes(size=size), "image/png")}}


def test_over_the_bound_is_413_saying_the_bound_and_the_need(make_client, fake):
    client = make_client(max_visual_tokens=100)
    resp = client.post("/v1/chat/completions", json=_chat(_image((224, 224)), _image((224, 224))))
    assert resp.status_code == 413, resp.text
    err = resp.json()["error"]
    assert err["code"] == "too_many_visual_tokens"
    assert "128 visual tokens (64 + 64)" in err["message"] and "at most 100" in err["message"]
    assert fake.payloads == []  # SGLang never saw it
    # The same gateway serves on: one image fits.
    assert client.post("/v1/chat/completions", json=_chat(_image((224, 224)))).status_code == 200
    assert len(fake.payloads) == 1


def test_a_video_counts_and_uploads_are_bounded_too(make_client, fake):
    client = make_client(max_visual_tokens=100)
    video = {"type": "video_url", "video_url": {"url": data_url(video_bytes(frames=20, fps=10), "video/mp4")}}
    resp = client.post("/v1/chat/completions", json=_chat(video))
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_many_visual_tokens"
    files = [("images", ("a.png", image_bytes(size=(448, 448)), "image/png"))]
    resp = client.post("/v1/generate", data={"prompt": "x"}, files=files)
    assert resp.status_code == 413 and "256 visual tokens" in resp.json()["error"]["message"]


def test_the_default_bound_is_the_engines_longest_input(make_client, fake):
    fake.server_info_json = {**fake.server_info_json, "max_req_input_len": 60}
    resp = make_client().post("/v1/chat/completions", json=_chat(_image((224, 224))))
    assert resp.status_code == 413 and "at most 60" in resp.json()["error"]["message"]
    fake.server_info_json = {**fake.server_info_json, "max_req_input_len": None}
    assert make_client().post("/v1/chat/completions", json=_chat(_image((224, 224)))).status_code == 200
