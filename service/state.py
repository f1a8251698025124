"""The gateway's per-app state: its settings and the long-lived objects the routes share.

`template` and `model_name` come from SGLang (`/model_info`) once it answers; until then the gateway
runs (liveness, metrics) but every model route answers 503 `backend_not_ready` (see `service.app`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from service.admission import AdmissionLimiter
from service.backend import Backend
from service.config import GatewaySettings
from service.errors import BackendError, ModelNotFound
from service.media.intake import MediaIntake
from service.media.visual_tokens import VisualTokenCost
from service.metrics import GatewayMetrics
from service.prompt import ChatTemplate

# Accepted as `model` besides the served name: what SGLang's own OpenAI API accepts as a wildcard.
MODEL_ALIASES = frozenset({"default"})


@dataclass
class GatewayState:
    settings: GatewaySettings
    backend: Backend
    intake: MediaIntake
    metrics: GatewayMetrics
    limiter: AdmissionLimiter
    template: ChatTemplate | None = None  # None until SGLang answered /model_info
    model_name: str | None = None
    # SGLang streams cumulative text unless started with --incremental-streaming-output.
    incremental_stream: bool = False
    # The served model's visual-token rules and the per-request bound (None: no bound).
    visual_cost: VisualTokenCost = field(default_factory=VisualTokenCost)
    max_visual_tokens: int | None = None
    # Set when a stop's drain time has run out: in-flight requests then end with 503 `server_stopping`
    # (service.disconnect); `stopped_requests` counts them.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    stopped_requests: int = 0
    _background: set = field(default_factory=set)

    @property
    def connected(self) -> bool:
        return self.template is not None and self.model_name is not None

    def require_connected(self) -> None:
        """503 until the gateway has read the model from SGLang (it keeps trying in the background)."""
        if not self.connected:
            raise BackendError(
                "the model backend is not ready yet; retry shortly", code="backend_not_ready", status_code=503,
                headers={"Retry-After": str(max(1, self.settings.retry_after_s))},
            )  # fmt: skip

    def check_model(self, model: str | None) -> None:
        self.require_connected()
        if model is None:
            return
        if model != self.model_name and model not in MODEL_ALIASES:
            raise ModelNotFound(
                f"model {model!r} is not served here; use {self.model_name!r}", param="model", code="model_not_found"
            )

    def note_stopped_request(self) -> None:
        self.stopped_requests += 1
        self.metrics.aborted.inc()

    def spawn(self, coro) -> None:
        """Run `coro` detached from the current request (e.g. an abort while the stream is cancelled)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)  # keep a reference until done, or the task may be collected
        task.add_done_callback(self._background.discard)

    async def drain_background(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
