"""Request and response bodies of the gateway's HTTP API (pydantic models): the wire schemas.

Below every module that reads or writes them (`service.conversation`, `service.api.*`), so each
imports them downward.

The request is OpenAI's chat-completions body restricted to what the gateway implements, plus two
extensions: a `video_url` content part and a top-level `vl_cache` object. Unknown fields are refused
(400), as OpenAI does: a misspelt option must not be silently ignored. The response is OpenAI's, with
`usage` extended by `kv_cache` (the plugin's report, or null) and `timings` (milliseconds).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.kv_report import KVCacheReport
from service.vl_cache import VLCacheOptions


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
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(default=None, description="at most 4")
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1, description="only n=1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    vl_cache: VLCacheOptions | None = None


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
    413: _error("request or media over a size limit (bytes, pixels, duration, visual tokens)"),
    415: _error("unsupported media type"),
    422: _error("the body does not fit the schema (wrong types, missing or unknown fields)"),
    429: _error("in-flight limit reached, or SGLang's queue is full; retry after the Retry-After header"),
    500: _error("a failure inside the gateway or the plugin (the server keeps serving)"),
    502: _error("SGLang failed"),
    503: _error("SGLang is down or not ready, or the gateway is stopping"),
    504: _error("SGLang did not answer in time"),
}
# The two generation routes can answer every error above.
GENERATION_ERRORS: dict = dict(ERROR_RESPONSES)
