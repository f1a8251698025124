"""`POST /v1/generate`: one prompt with uploaded images and/or a video (multipart/form-data).

For apps that hold files rather than URLs (`curl -F images=@photo.jpg`, browsers, `requests`). The
uploads become one user turn: the images in upload order, then the video, then the prompt text. The
files go through the same intake (type sniffing, limits, EXIF, video sampling) and the same pipeline
as the chat API, and the answer carries the same `usage` report (`kv_cache`, `timings`). Plain
answers only: stream with `/v1/chat/completions`.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from service import vl_cache
from service.api.pipeline import GenerationRun
from service.conversation import plan_uploads
from service.schemas import GENERATION_ERRORS, Generation
from service.sglang_request import SamplingOptions
from service.state import GatewayState

router = APIRouter()


# Optional form fields are typed without `| None` (their default is None all the same): a multipart
# form cannot send a null, and the OpenAPI document must not promise that `budget=null` works.
@router.post("/v1/generate", response_model=Generation, responses=GENERATION_ERRORS)
async def generate(
    request: Request,
    prompt: Annotated[str, Form(min_length=1, description="the question or instruction")],
    images: Annotated[
        list[UploadFile], File(description="image files (PNG, JPEG, WebP, GIF); repeat the field for several")
    ] = None,
    video: Annotated[UploadFile, File(description="a video file (MP4/MOV, WebM/MKV)")] = None,
    max_tokens: Annotated[int, Form(ge=1, description="default 256")] = None,
    temperature: Annotated[float, Form(ge=0.0, le=2.0)] = None,
    top_p: Annotated[float, Form(gt=0.0, le=1.0)] = None,
    seed: Annotated[int, Form()] = None,
    policy: Annotated[str, Form(description="VL-Cache policy (default: the server's)")] = None,
    budget: Annotated[
        float,
        Form(description="kept fraction of prompt tokens, 0 < budget <= 1", json_schema_extra=vl_cache.BUDGET_SCHEMA),
    ] = None,
    max_frames: Annotated[
        int, Form(ge=2, description="video: at most this many frames (lowers the server cap)")
    ] = None,
    fps: Annotated[
        float, Form(gt=0.0, description="video: at most this many frames per second (lowers the cap)")
    ] = None,
    model: Annotated[str, Form(description="the served model id (default: it)")] = None,
) -> Response:
    received = time.perf_counter()
    gw: GatewayState = request.app.state.gateway
    gw.check_model(model)
    sent = None if policy is None and budget is None else {"policy": policy, "budget": budget}
    options = vl_cache.resolve(sent, gw.settings)
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    settings = gw.settings
    plan = plan_uploads(
        prompt, list(images or []), video, settings.max_images_per_request, settings.max_videos_per_request,
        video_max_frames=max_frames, video_fps=fps,
    )  # fmt: skip
    run = GenerationRun(gw, request, "gen", received)
    outcome = await run.execute(plan, sampling, options, stream=False)
    if isinstance(outcome, Response):
        return outcome  # the client left
    answer = Generation(
        id=run.rid,
        created=int(time.time()),
        model=gw.model_name,
        text=outcome.text,
        finish_reason=outcome.finish_reason,
        usage=outcome.usage,
    )
    return JSONResponse(answer.model_dump(mode="json"), headers={"x-request-id": run.rid})
