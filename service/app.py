"""The FastAPI application: `create_app(settings)` wires routes, errors, middleware and state.

At start-up (lifespan) the app connects to SGLang (`settings.backend_url`), asks it which model it
serves, and loads that model's chat template. If SGLang is not there yet (a pod whose SGLang is
still loading), the gateway starts anyway and keeps trying in the background: `/health` answers,
`/ready` and the model routes answer 503 until it has connected. Tests inject a fake backend and/or
a template.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI

from service import vl_cache
from service.admission import AdmissionLimiter
from service.api import chat, generate, ops
from service.backend import Backend, SGLangBackend
from service.config import GatewaySettings
from service.errors import install_error_handlers
from service.media.intake import MediaIntake
from service.media.visual_tokens import VisualTokenCost
from service.metrics import GatewayMetrics
from service.middleware import APIKeyMiddleware, BodyLimitMiddleware, RequestMetricsMiddleware
from service.prompt import ChatTemplate
from service.state import GatewayState

logger = logging.getLogger(__name__)

RETRY_FIRST_S, RETRY_MAX_S = 1.0, 15.0


def create_app(
    settings: GatewaySettings,
    *,
    backend: Backend | None = None,
    template: ChatTemplate | None = None,
    on_ready: Callable[[GatewayState], None] | None = None,
) -> FastAPI:
    """The gateway app. `backend` defaults to SGLang at `settings.backend_url` (which is then required)."""
    if backend is None and not settings.backend_url:
        raise ValueError("settings.backend_url is required when no backend is given")
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        the_backend = backend or SGLangBackend(settings.backend_url, timeout_s=settings.backend_timeout_s)
        intake = MediaIntake(settings, metrics)
        state = GatewayState(
            settings=settings,
            backend=the_backend,
            intake=intake,
            metrics=metrics,
            limiter=AdmissionLimiter(settings.max_inflight_requests, settings.retry_after_s),
        )
        app.state.gateway = state
        retry: asyncio.Task | None = None
        try:
            try:
                await _connect(state, template, on_ready)
            except Exception as exc:
                logger.warning("SGLang at %s is not ready (%s); serving 503 until it is", settings.backend_url, exc)
                retry = asyncio.get_running_loop().create_task(_keep_connecting(state, template, on_ready))
            yield
            await state.drain_background()
        finally:
            if retry is not None:
                retry.cancel()
            await intake.aclose()
            if backend is None:
                await the_backend.aclose()

    app = FastAPI(
        title="vlcache-serve gateway",
        version="0.1.0",
        summary="OpenAI-compatible chat with images and videos over SGLang, with VL-Cache KV reports.",
        lifespan=lifespan,
    )
    install_error_handlers(app, bad_value_code=vl_cache.error_code)
    app.include_router(chat.router)
    app.include_router(generate.router)
    app.include_router(ops.router)
    # Outermost last: metrics see every answer (401 and 413 included); auth runs before the body is read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key.get_secret_value())
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


async def _connect(state: GatewayState, template: ChatTemplate | None, on_ready) -> None:
    """Read the served model from SGLang and load its chat template (raises while SGLang is not there)."""
    model_info = await state.backend.model_info()
    settings = state.settings
    the_template = template or await anyio.to_thread.run_sync(ChatTemplate, _tokenizer_path(settings, model_info))
    info = await _server_info(state.backend)
    state.incremental_stream = bool(info.get("incremental_streaming_output", False))
    state.visual_cost = VisualTokenCost.from_model_dir(the_template.path)
    state.max_visual_tokens = settings.max_visual_tokens or info.get("max_req_input_len") or info.get("context_length")
    state.model_name = _model_name(settings, model_info)
    state.template = the_template  # last: the gateway counts as connected from here on
    logger.info("connected to SGLang at %s, serving %s", settings.backend_url, state.model_name)
    if on_ready is not None:
        on_ready(state)


async def _keep_connecting(state: GatewayState, template: ChatTemplate | None, on_ready) -> None:
    delay = RETRY_FIRST_S
    while True:
        await asyncio.sleep(delay)
        try:
            await _connect(state, template, on_ready)
            return
        except Exception as exc:
            delay = min(delay * 2, RETRY_MAX_S)
            logger.warning(
                "SGLang at %s is still not ready (%s); next try in %.0f s", state.settings.backend_url, exc, delay
            )


def _tokenizer_path(settings: GatewaySettings, model_info: dict) -> str:
    path = settings.tokenizer_path or model_info.get("tokenizer_path") or model_info.get("model_path")
    if not path:
        raise RuntimeError("SGLang reported no tokenizer path; set VLCACHE_TOKENIZER_PATH")
    return path


def _model_name(settings: GatewaySettings, model_info: dict) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    served = model_info.get("served_model_name") or model_info.get("model_path") or "default"
    # SGLang serves under the model path by default; a folder name is a friendlier id.
    return Path(served).name if "/" in served else served


async def _server_info(backend: Backend) -> dict:
    try:
        return await backend.server_info()
    except Exception:
        logger.warning("cannot read /server_info; assuming cumulative streaming output and no visual-token bound")
        return {}
