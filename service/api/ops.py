"""Operational routes: liveness, readiness, model list, Prometheus metrics.

- `GET /health`: 200 while the gateway process serves (Kubernetes liveness). It does not call SGLang,
  so a slow backend never gets the gateway restarted.
- `GET /ready`: 200 when the gateway has read the model from SGLang and SGLang answers its `/health`,
  else 503 (Kubernetes readiness).
- `GET /v1/models`: the served model (OpenAI's list format).
- `GET /metrics`: Prometheus text; pool gauges are refreshed from SGLang first (bounded wait).
"""

from __future__ import annotations

import time
from typing import Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from service.errors import BackendError
from service.pool_stats import refresh_pool_gauges
from service.schemas import ERROR_RESPONSES, ModelCard, ModelList
from service.state import GatewayState

router = APIRouter()
STARTED = int(time.time())


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: str


@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health()


@router.get("/ready", response_model=Readiness, responses={503: ERROR_RESPONSES[503]})
async def ready(request: Request) -> Readiness:
    gw: GatewayState = request.app.state.gateway
    gw.require_connected()
    if not await gw.backend.health():
        raise BackendError("SGLang is not healthy", code="backend_unavailable", status_code=503)
    return Readiness(model=gw.model_name)


@router.get("/v1/models", response_model=ModelList, responses={k: ERROR_RESPONSES[k] for k in (401, 503)})
async def models(request: Request) -> ModelList:
    gw: GatewayState = request.app.state.gateway
    gw.require_connected()
    return ModelList(data=[ModelCard(id=gw.model_name, created=STARTED)])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}
    },
)
async def metrics(request: Request) -> Response:
    gw: GatewayState = request.app.state.gateway
    with anyio.move_on_after(3.0):  # a stuck backend must not stall Prometheus
        await refresh_pool_gauges(gw.backend, gw.metrics, with_layers=gw.settings.scrape_plugin_layer_figures)
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
