"""`POST /v1/chat/completions`: OpenAI-compatible chat with images and videos, over SGLang `/generate`.

The route reads the request and does the cheap refusals (the model, the VL-Cache options, the media
in the messages: `service.conversation` plans the prompt and lists the media, nothing fetched yet),
then hands the plan to the shared pipeline (`service.api.pipeline`: admission, media, prompt, SGLang,
usage) and shapes its answer as OpenAI's `chat.completion` (or a stream of `chat.completion.chunk`),
with `usage.kv_cache` and `usage.timings`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service import vl_cache
from service.api.pipeline import GenerationRun, StreamStart
from service.api.streaming import ChatStream
from service.conversation import plan_conversation
from service.schemas import GENERATION_ERRORS, AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice
from service.sglang_request import SamplingOptions
from service.state import GatewayState

router = APIRouter()
# `stream: true` answers Server-Sent Events of `chat.completion.chunk` instead of the JSON object.
_STREAM = {"text/event-stream": {"schema": {"type": "string"}}}
CHAT_RESPONSES = {**GENERATION_ERRORS, 200: {"content": _STREAM, "description": "the completion, or its stream"}}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=CHAT_RESPONSES)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    received = time.perf_counter()
    gw: GatewayState = request.app.state.gateway
    gw.check_model(body.model)
    options = vl_cache.resolve(body.vl_cache.model_dump() if body.vl_cache else None, gw.settings)
    sampling = SamplingOptions.of(body)
    settings = gw.settings
    plan = plan_conversation(body.messages, settings.max_images_per_request, settings.max_videos_per_request)
    run = GenerationRun(gw, request, "chatcmpl", received)
    outcome = await run.execute(plan, sampling, options, stream=body.stream)
    if isinstance(outcome, Response):
        return outcome  # the client left
    if isinstance(outcome, StreamStart):
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = ChatStream(gw, run, outcome.pump, model=gw.model_name, include_usage=include_usage)
        return stream.response(outcome.first)

    completion = ChatCompletion(
        id=run.rid,
        created=int(time.time()),
        model=gw.model_name,
        choices=[Choice(message=AssistantMessage(content=outcome.text), finish_reason=outcome.finish_reason)],
        usage=outcome.usage,
    )
    return JSONResponse(completion.model_dump(mode="json"), headers={"x-request-id": run.rid})
