"""The one path every generation takes, whatever the route (`/v1/chat/completions`, `/v1/generate`).

Order of work: the route does its cheap refusals first (model, VL-Cache options) -> admission slot
(429 when full) -> media fetched/read, validated and re-encoded (`MediaIntake`) -> prompt rendered
with the model's chat template -> SGLang `/generate`, plain or streaming. The slot is held until the
answer is complete (for a stream: until the stream ends); if the client leaves first, the SGLang
request is aborted (`/abort_request`), so its KV is freed at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from fastapi import Request
from fastapi.responses import Response

from service.api.completion import RequestClock, build_usage, record_usage
from service.api.events import EventPump
from service.conversation import PreparedConversation
from service.disconnect import ClientGone, DisconnectWatcher, ServerStopping
from service.errors import Overloaded
from service.schemas import Usage
from service.sglang_request import generate_payload
from service.state import GatewayState

# Not a real HTTP status: nginx's "client closed request", used only in the gateway's own metrics.
CLIENT_CLOSED = 499


@dataclass
class StreamStart:
    """A streaming generation whose first SGLang event has arrived (so SGLang accepted it)."""

    pump: EventPump
    first: dict


class GenerationRun:
    """One admitted request: its id, clock, admission slot and disconnect watcher."""

    def __init__(self, gw: GatewayState, request: Request, id_prefix: str):
        self.gw = gw
        self.request = request
        self.clock = RequestClock(received=time.perf_counter())
        self.rid = f"{id_prefix}-{uuid.uuid4().hex}"
        self.watcher: DisconnectWatcher | None = None
        self._slot = None

    def finish(self) -> None:
        """Release the admission slot; idempotent (streams call it from several exit paths)."""
        if self._slot is not None:
            self._slot.release()
            self._slot = None
            self.gw.metrics.inflight.dec()
        if self.watcher is not None:
            self.watcher.close()

    async def execute(
        self, prepare: Callable[[], Awaitable[PreparedConversation]], sampling: dict, stream: bool
    ) -> dict | StreamStart | Response:
        """Admit, prepare media and prompt, call SGLang. Returns SGLang's final answer (plain), a
        `StreamStart` (whose owner must call `finish()`), or an empty 499 if the client left."""
        gw = self.gw
        try:
            self._slot = gw.limiter.acquire()
        except Overloaded:
            gw.metrics.rejected.labels(reason="overloaded").inc()
            raise
        gw.metrics.inflight.inc()
        self.watcher = DisconnectWatcher(self.request, gw.stopping)
        handed_over = False
        try:
            conversation = await self.watcher.race(prepare())
            self.clock.media_ms = conversation.media_ms
            gw.check_visual_tokens(conversation.images, conversation.videos)
            # Rendering is pure CPU (jinja) but fast; a thread keeps long conversations off the loop.
            prompt = await anyio.to_thread.run_sync(gw.template.render, conversation.template_messages)
            payload = generate_payload(sampling, conversation, prompt, self.rid)
            self.clock.sent_to_backend = time.perf_counter()
            if not stream:
                return await self.watcher.race(gw.backend.generate(payload))
            pump = EventPump(gw.backend.generate_stream(payload))
            try:
                first = await self.watcher.race(pump.next())
            except BaseException:
                pump.close()
                raise
            handed_over = True
            return StreamStart(pump, first)
        except ClientGone:
            gw.metrics.aborted.inc()
            gw.spawn(gw.backend.abort(self.rid))
            return Response(status_code=CLIENT_CLOSED)
        except ServerStopping:
            gw.note_stopped_request()
            gw.spawn(gw.backend.abort(self.rid))
            raise
        finally:
            if not handed_over:
                self.finish()

    def plain_usage(self, meta_info: dict) -> Usage:
        """Usage of a plain (non-streaming) answer, recorded in the metrics."""
        done = time.perf_counter()
        usage = build_usage(meta_info, self.clock, done)
        record_usage(self.gw.metrics, usage, self.clock)
        self.gw.metrics.latency.labels(stream="false").observe(done - self.clock.received)
        return usage
