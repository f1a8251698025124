"""Request and response bodies of the gateway's OpenAI-compatible chat API (pydantic models).

The request is OpenAI's chat-completions body restricted to what the gateway implements, plus two
extensions: a `video_url` content part and a top-level `vl_cache` object. Unknown fields are refused
(400), as OpenAI does: a misspelt option must not be silently ignored. The response is OpenAI's, with
`usage` extended by `kv_cache` (the plugin's report, or null) and `timings` (milliseconds).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, field_validator

from service.kv_report import KVCacheReport


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- request --------------------------------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(description="data:image/...;base64,... or an http(s) URL")
    detail: Literal["auto", "low", "high"] | None = None  # accepted for OpenAI compatibility; unused


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Strict):
    url: str = Field(description="data:video/...;base64,... or an http(s) URL")
    # Per-request sampling; each may only lower the server's limits.
    max_frames: int | None = Field(default=None, ge=2)
    fps: float | None = Field(default=None, gt=0)


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class VLCacheOptions(BaseModel):
    """Per-request KV compression, forwarded to the plugin as `custom_params["vl_cache"]`.

    `policy`: one of the server's allowed policies (default: the server's); `budget`: the fraction of
    prompt tokens kept, 0 < budget <= 1. Further scalar options (e.g. `renormalize`) pass through to
    the plugin. Types are checked here (422); values (policy name, budget range, option values) by
    `service.sglang_request.resolve_vl_cache`, which answers 400 as the API promises for them.
    """

    model_config = ConfigDict(extra="allow")

    policy: str | None = Field(default=None, description="VL-Cache policy, e.g. vlcache, full, snapkv")
    budget: StrictFloat | None = Field(  # strict: `true` or "0.1" is a bad budget, not 1.0 or 0.1
        default=None, description="kept fraction of prompt tokens", json_schema_extra={"exclusiveMinimum": 0, "maximum": 1}
    )


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # SGLang extension; -1 = off
    ignore_eos: bool | None = None  # SGLang extension: generate exactly max_tokens (benchmarks)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    vl_cache: VLCacheOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


# --- response -------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    image_tokens: int | None = None
    video_tokens: int | None = None


class Timings(BaseModel):
    """Where the request's time went, in milliseconds, measured by the gateway and SGLang.

    Streaming answers are timed by the gateway as tokens arrive; plain answers from SGLang's own
    timestamps (null when SGLang does not report them, i.e. without `--enable-metrics`).
    """

    media_ms: float = Field(description="fetching, validating and re-encoding images and videos")
    queue_ms: float | None = Field(default=None, description="waiting in SGLang's scheduler queue")
    ttft_ms: float | None = Field(default=None, description="gateway receipt to first generated token")
    decode_ms: float | None = Field(default=None, description="first generated token to last")
    e2e_ms: float = Field(description="gateway receipt to the complete answer")
    output_tokens_per_s: float | None = Field(
        default=None, description="decode rate: (completion_tokens - 1) / decode time; null for one token"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    kv_cache: KVCacheReport | None = None
    timings: Timings | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class Generation(BaseModel):
    """The answer of `POST /v1/generate` (multipart uploads): the text and the same usage report."""

    id: str
    object: Literal["generation"] = "generation"
    created: int
    model: str
    text: str
    finish_reason: Literal["stop", "length"] | None
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlcache-serve"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- errors (for the OpenAPI document) ------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error")
    param: str | None = None
    code: str | None = Field(default=None, description="machine-readable reason, e.g. invalid_budget")


class ErrorResponse(BaseModel):
    """Every error the gateway answers: OpenAI's shape."""

    error: ErrorDetail


def _error(description: str) -> dict:
    return {"model": ErrorResponse, "description": description}


ERROR_RESPONSES: dict = {
    400: _error("bad input: bad base64, undecodable media, bad policy/budget, unreadable JSON, too many media"),
    401: _error("missing or wrong API key (when VLCACHE_API_KEY is set)"),
    404: _error("unknown model"),
    413: _error("request or media over a size limit (bytes, pixels, duration)"),
    415: _error("unsupported media type"),
    422: _error("the body does not fit the schema (wrong types, missing or unknown fields)"),
    429: _error("in-flight limit reached; retry after the Retry-After header"),
    503: _error("the SGLang backend is down or not ready"),
}
