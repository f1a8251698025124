"""What an image or a video costs in visual tokens on a Qwen2-VL model, computed from its pixels.

The gateway bounds the visual tokens of one request (`VLCACHE_MAX_VISUAL_TOKENS`, 413 beyond) before
SGLang sees the media, so a request too large for the engine is refused with a message instead of
costing the scheduler its memory. The figures follow the model's own processing:

- an image of `W x H` is resized by Qwen2-VL's smart-resize (sides to multiples of `factor` = patch
  size x merge size = 28 px, the pixel count clamped to the image processor's `[min_pixels,
  max_pixels]`, from the model folder's processor config) and costs `(H'/28) x (W'/28)` tokens;
- a video of `n` frames of `W x H` is resized by SGLang's Qwen-VL video loader (min `128 x 28 x 28`
  px per frame, max `768 x 28 x 28` and a total budget over the frames), then by the video
  processor's own bounds, and costs `(n / 2) x (H'/28) x (W'/28)` tokens (frames merge in pairs).

For a Qwen2-VL folder (`model_type` "qwen2_vl") SGLang's `get_processor` overrides the folder's bounds
with Qwen2-VL's released `size` (`[3136, 1003520]` px, sglang/srt/utils/hf_transformers/processor.py), for
images and videos alike: the estimate takes those, as the engine does. Qwen2.5-VL resizes the same way; Qwen3-VL too with 16-px patches (`factor` 32), read from the folder's
`patch_size` x `merge_size`. A processor that names an `image_seq_length` (Gemma 3) sees every image at
one size and pools it to that many tokens: the cost of any image (a lower bound when it pans and scans,
whose extra crops the engine's own context check still bounds). A folder in the original LLaVA format
(`mm_vision_tower` in config.json: SGLang's own anyres tiling decides the count) is not estimated: the
gateway leaves the bound to the engine's own count (its context-length check). An InternVL folder
(`model_type` "internvl_chat") costs SGLang's 448-px tiles (service/media/internvl_tiles.py) times the
model's tokens per tile, `(force_image_size / patch)^2 x downsample_ratio^2` (SGLang's `num_image_token`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from service.errors import MediaTooLarge
from service.media.internvl_tiles import VIDEO_FRAMES, image_tiles

# Qwen2-VL's HF image processor defaults (used when the model folder says nothing).
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 16384
# SGLang 0.5.23's Qwen-VL video loader (sglang/srt/multimodal/processors/qwen_vl.py).
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)
# What SGLang 0.5.23's get_processor forces on a qwen2_vl folder's image and video processors.
SGLANG_QWEN2_VL_SIZE = {"shortest_edge": 3136, "longest_edge": 1003520}
TEMPORAL_PATCH = 2


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: float) -> tuple[int, int]:
    """Qwen2-VL's resize: both sides multiples of `factor`, pixel count within bounds, aspect kept."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _bounds(config: dict) -> tuple[int, int]:
    size = config.get("size") or {}
    low = config.get("min_pixels") or size.get("shortest_edge") or DEFAULT_MIN_PIXELS
    high = config.get("max_pixels") or size.get("longest_edge") or DEFAULT_MAX_PIXELS
    return int(low), int(high)


@dataclass(frozen=True)
class VisualTokenCost:
    """The resize rules of one model (see the module docstring)."""

    factor: int = 28
    image_min_pixels: int = DEFAULT_MIN_PIXELS
    image_max_pixels: int = DEFAULT_MAX_PIXELS
    video_min_pixels: int = DEFAULT_MIN_PIXELS
    video_max_pixels: int = DEFAULT_MAX_PIXELS
    fixed_image_tokens: int | None = None  # every image costs this many (Gemma 3), whatever its size
    engine_counts: bool = False  # no estimate: the engine's own count bounds the request (original LLaVA)
    tokens_per_tile: int | None = None  # InternVL: each image costs its tiles times this many

    @classmethod
    def from_model_dir(cls, path: str | Path) -> VisualTokenCost:
        """From the model folder's `preprocessor_config.json` / `processor_config.json` (defaults if absent)."""
        model_config = Path(path) / "config.json"
        model = json.loads(model_config.read_text()) if model_config.is_file() else {}
        if "mm_vision_tower" in model:
            return cls(engine_counts=True)
        if model.get("model_type") == "internvl_chat":
            vision = model["vision_config"]
            side = (model.get("force_image_size") or vision["image_size"]) // vision["patch_size"]
            return cls(tokens_per_tile=int(side**2 * model["downsample_ratio"] ** 2))
        for name in ("processor_config.json", "preprocessor_config.json"):
            file = Path(path) / name
            if file.is_file():
                config = json.loads(file.read_text())
                image = config.get("image_processor", config)
                video = config.get("video_processor", image)
                if config.get("image_seq_length"):
                    return cls(fixed_image_tokens=int(config["image_seq_length"]))
                factor = int(image.get("patch_size", 14)) * int(image.get("merge_size", 2))
                if model.get("model_type") == "qwen2_vl":
                    image = video = {"size": SGLANG_QWEN2_VL_SIZE}
                (i_low, i_high), (v_low, v_high) = _bounds(image), _bounds(video)
                return cls(factor, i_low, i_high, v_low, v_high)
        return cls()

    def image(self, width: int, height: int) -> int:
        if self.fixed_image_tokens is not None:
            return self.fixed_image_tokens
        if self.tokens_per_tile is not None:
            return image_tiles(width, height) * self.tokens_per_tile
        h, w = smart_resize(height, width, self.factor, self.image_min_pixels, self.image_max_pixels)
        return (h // self.factor) * (w // self.factor)

    def video(self, frames: int, width: int, height: int) -> int:
        if self.tokens_per_tile is not None:
            return VIDEO_FRAMES * self.tokens_per_tile
        max_pixels = max(
            min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / frames * TEMPORAL_PATCH), int(VIDEO_MIN_PIXELS * 1.05)
        )
        h, w = smart_resize(height, width, self.factor, VIDEO_MIN_PIXELS, max_pixels)  # SGLang's loader
        h, w = smart_resize(h, w, self.factor, self.video_min_pixels, self.video_max_pixels)  # the HF processor
        return math.ceil(frames / TEMPORAL_PATCH) * (h // self.factor) * (w // self.factor)

    def check(self, images, videos, max_tokens: int | None) -> int:
        """The visual tokens of a request's prepared media (`.width`, `.height`, and `.frames` for a
        video); 413 `too_many_visual_tokens` over `max_tokens` (None: no bound). 0, unbounded, when the
        engine counts (`engine_counts`)."""
        if self.engine_counts:
            return 0
        costs = [self.image(i.width, i.height) for i in images]
        costs += [self.video(v.frames, v.width, v.height) for v in videos]
        total = sum(costs)
        if max_tokens is not None and total > max_tokens:
            parts = " + ".join(str(c) for c in costs)
            raise MediaTooLarge(
                f"the images and videos of this request need {total} visual tokens ({parts}); this server accepts "
                f"at most {max_tokens} per request: send fewer or smaller images, or fewer frames",
                code="too_many_visual_tokens",
            )
        return total
