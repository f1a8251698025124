"""`POST /v1/chat/completions`: OpenAI-compatible chat with images and videos, over SGLang `/generate`.

The route checks the model and the VL-Cache options (cheap refusals first), then hands the request to
the shared pipeline (`service.api.pipeline`: admission, media, prompt, SGLang) and shapes SGLang's
answer as OpenAI's `chat.completion` (or a stream of `chat.completion.chunk`), with `usage.kv_cache`
and `usage.timings`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service import vl_cache
from service.api.completion import finish_reason
from service.api.pipeline import GenerationRun, StreamStart
from service.api.streaming import ChatStream
from service.conversation import prepare_conversation
from service.schemas import GENERATION_ERRORS, AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice
from service.sglang_request import SamplingOptions, sampling_params
from service.state import GatewayState

router = APIRouter()
# `stream: true` answers Server-Sent Events of `chat.completion.chunk` instead of the JSON object.
_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}
CHAT_RESPONSES = {**GENERATION_ERRORS, 200: {"content": _STREAM, "description": "the completion, or its stream"}}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=CHAT_RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    gw: GatewayState = request.app.state.gateway
    run = GenerationRun(gw, request, "chatcmpl")
    gw.check_model(body.model)
    options = vl_cache.resolve(body.vl_cache.model_dump() if body.vl_cache else None, gw.settings)
    settings = gw.settings

    def prepare():
        return prepare_conversation(
            body.messages, gw.intake, settings.max_images_per_request, settings.max_videos_per_request
        )

    outcome = await run.execute(prepare, sampling_params(SamplingOptions.of(body), options), stream=body.stream)
    if isinstance(outcome, Response):
        return outcome  # the client left
    if isinstance(outcome, StreamStart):
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = ChatStream(gw, run, outcome.pump, model=gw.model_name, include_usage=include_usage)
        return stream.response(outcome.first)

    meta = outcome.get("meta_info", {})
    reason = finish_reason(meta)
    completion = ChatCompletion(
        id=run.rid,
        created=int(time.time()),
        model=gw.model_name,
        choices=[Choice(message=AssistantMessage(content=outcome.get("text", "")), finish_reason=reason)],
        usage=run.plain_usage(meta),
    )
    return JSONResponse(completion.model_dump(mode="json"), headers={"x-request-id": run.rid})
