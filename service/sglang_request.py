"""Translate one gateway request into the body of SGLang's native `POST /generate`.

Contract:
- `text` is the rendered prompt; `image_data` / `video_data` are PNG / MP4 data URLs in prompt order;
- OpenAI sampling fields map to SGLang's `sampling_params` (`max_tokens` -> `max_new_tokens`, ...);
  both routes (`/v1/chat/completions`, `/v1/generate`) describe them with one `SamplingOptions`;
- VL-Cache options (the request's, else the server default, else none) travel as
  `sampling_params.custom_params = {"vl_cache": {...}}`, which SGLang hands to the scheduler
  untouched, where the plugin reads them; with none, the key is absent and SGLang behaves as stock;
- `rid` is the gateway's request id, so the gateway can `/abort_request` it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from service.conversation import PreparedConversation
from service.errors import InvalidRequest

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
    def of(cls, request) -> "SamplingOptions":
        """From any object with these attributes (a `ChatCompletionRequest`; missing ones are None)."""
        values = {f.name: getattr(request, f.name, None) for f in fields(cls)}
        values["max_tokens"] = getattr(request, "max_completion_tokens", None) or values["max_tokens"]
        return cls(**values)


def resolve_vl_cache(options: dict | None, settings) -> dict | None:
    """The request's VL-Cache options checked and completed with the server defaults (400 if wrong).

    `options` is what the client sent (`vl_cache` of the chat body; `policy` / `budget` of a
    multipart form), None when it sent nothing: then the server default applies (or none at all).
    """
    if options is None:
        return settings.default_vl_cache()
    options = {key: value for key, value in options.items() if value is not None}
    for key, value in options.items():
        # custom_params must stay JSON-safe and small: nested objects are refused.
        if not isinstance(value, (str, int, float, bool)):
            raise InvalidRequest(
                f"vl_cache.{key} must be a string, number or boolean", param=f"vl_cache.{key}", code="invalid_vl_cache"
            )
    policy = options.get("policy", settings.default_policy)
    if policy is not None:
        if policy not in settings.allowed_policies:
            raise InvalidRequest(
                f"vl_cache.policy {policy!r} is not one of {', '.join(settings.allowed_policies)}",
                param="vl_cache.policy",
                code="invalid_policy",
            )
        options["policy"] = policy
    budget = options.get("budget", settings.default_budget)
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (math.isfinite(budget) and 0 < budget <= 1):
            raise InvalidRequest(
                f"vl_cache.budget must be a number with 0 < budget <= 1 (the kept fraction of prompt tokens), got {budget!r}",
                param="vl_cache.budget",
                code="invalid_budget",
            )
        options["budget"] = float(budget)
    return options


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
        params["custom_params"] = {"vl_cache": vl_cache}
    return params


def generate_payload(sampling: dict, conversation: PreparedConversation, prompt: str, rid: str) -> dict:
    payload: dict = {"rid": rid, "text": prompt, "sampling_params": sampling}
    if conversation.images:
        payload["image_data"] = [image.data_url() for image in conversation.images]
    if conversation.videos:
        payload["video_data"] = [video.data_url() for video in conversation.videos]
    return payload
