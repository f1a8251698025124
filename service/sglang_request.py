"""Translate one gateway request into the body of SGLang's native `POST /generate`.

Contract:
- `text` is the rendered prompt; `image_data` / `video_data` are PNG / MP4 data URLs in prompt order;
- OpenAI sampling fields map to SGLang's `sampling_params` (`max_tokens` -> `max_new_tokens`, ...);
  both routes (`/v1/chat/completions`, `/v1/generate`) describe them with one `SamplingOptions`;
- VL-Cache options (resolved by `service.vl_cache`) travel as
  `sampling_params.custom_params = {"vl_cache": {...}}`, which SGLang hands to the scheduler
  untouched, where the plugin reads them; with none, the key is absent and SGLang behaves as stock;
- `modalities` is `["multi-images"]` with more than one image: SGLang's original-format LLaVA processor
  otherwise takes only the first image (sglang/srt/multimodal/processors/llava.py); others ignore it;
- `rid` is the gateway's request id, so the gateway can `/abort_request` it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from service.media.intake import PreparedMedia
from service.vl_cache import custom_params

# A generous default when the client gives no max_tokens (OpenAI's is "until the context is full";
# on a shared server an explicit bound is kinder). Clients set max_tokens for anything else.
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling fields the gateway accepts, whatever the route (None: SGLang's default)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    ignore_eos: bool | None = None
    stop: str | list[str] | None = None

    @classmethod
    def of(cls, request) -> SamplingOptions:
        """From any object with these attributes (a `ChatCompletionRequest`; missing ones are None)."""
        values = {f.name: getattr(request, f.name, None) for f in fields(cls)}
        values["max_tokens"] = getattr(request, "max_completion_tokens", None) or values["max_tokens"]
        return cls(**values)


def sampling_params(options: SamplingOptions, vl_cache: dict | None) -> dict:
    params: dict = {"max_new_tokens": options.max_tokens or DEFAULT_MAX_NEW_TOKENS}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
        ("seed", "sampling_seed"),
        ("ignore_eos", "ignore_eos"),
    ):
        value = getattr(options, ours)
        if value is not None:
            params[theirs] = value
    if options.stop is not None:
        params["stop"] = [options.stop] if isinstance(options.stop, str) else options.stop
    if vl_cache is not None:
        params["custom_params"] = custom_params(vl_cache)
    return params


def modalities(num_images: int) -> dict:
    """The `modalities` field of a `/generate` body with `num_images` images (see the module docstring)."""
    return {"modalities": ["multi-images"]} if num_images > 1 else {}


def generate_payload(
    options: SamplingOptions, vl_cache: dict | None, media: PreparedMedia, prompt: str, rid: str
) -> dict:
    """The whole `/generate` body: prompt, media data URLs, sampling parameters (with the VL-Cache
    options), request id."""
    payload: dict = {"rid": rid, "text": prompt, "sampling_params": sampling_params(options, vl_cache)}
    if media.images:
        payload["image_data"] = [image.data_url() for image in media.images]
        payload |= modalities(len(media.images))
    if media.videos:
        payload["video_data"] = [video.data_url() for video in media.videos]
    return payload
