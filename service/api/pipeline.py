"""The one path every generation takes, whatever the route (`/v1/chat/completions`, `/v1/generate`).

Order of work: the route reads the request and does its cheap refusals (model, VL-Cache options,
media counts: `service.conversation` plans the prompt and lists the media) -> admission slot (429 when
full) -> disconnect watcher -> the media in one pass (`MediaIntake.prepare`: limits, bytes, decode,
visual tokens) -> prompt rendered with the model's chat template -> SGLang `/generate` body
(`service.sglang_request`; behind a router, the chat's routing key in a header: `service.routing_key`) -> SGLang, plain or streaming -> for a plain answer, its finish reason and
usage (`service.api.usage`). The slot is held until the answer is complete (for a stream: until
the stream ends); if the client leaves first, the SGLang request is aborted (`/abort_request`), so its
KV is freed at once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import anyio
from fastapi import Request
from fastapi.responses import Response

from service.api.events import EventPump
from service.api.usage import RequestClock, build_usage, finish_reason, record_usage
from service.conversation import ConversationPlan
from service.disconnect import ClientGone, DisconnectWatcher, ServerStopping
from service.errors import Overloaded
from service.routing_key import routing_key
from service.schemas import Usage
from service.sglang_request import SamplingOptions, generate_payload
from service.state import GatewayState

# Not a real HTTP status: nginx's "client closed request", used only in the gateway's own metrics.
CLIENT_CLOSED = 499


@dataclass
class StreamStart:
    """A streaming generation whose first SGLang event has arrived (so SGLang accepted it)."""

    pump: EventPump
    first: dict


@dataclass
class PlainAnswer:
    """A complete (non-streaming) answer, its usage recorded in the metrics."""

    text: str
    finish_reason: str | None
    usage: Usage


class GenerationRun:
    """One request from its receipt: its id, clock, admission slot and disconnect watcher."""

    def __init__(self, gw: GatewayState, request: Request, id_prefix: str, received: float):
        self.gw = gw
        self.request = request
        self.clock = RequestClock(received=received)
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
        self, plan: ConversationPlan, sampling: SamplingOptions, vl_cache: dict | None, stream: bool
    ) -> PlainAnswer | StreamStart | Response:
        """Admit, then run the request's work until SGLang answered (plain) or sent its first event
        (streaming) unless the client leaves first. Returns the `PlainAnswer`, a `StreamStart` (whose
        owner must call `finish()`), or an empty 499 if the client left."""
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
            outcome = await self.watcher.race(self._work(plan, sampling, vl_cache, stream))
            if isinstance(outcome, StreamStart):
                handed_over = True
                return outcome
            return self._plain_answer(outcome)
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

    async def _work(
        self, plan: ConversationPlan, sampling: SamplingOptions, vl_cache: dict | None, stream: bool
    ) -> dict | StreamStart:
        """Media, prompt, SGLang: SGLang's final answer (plain) or its first event (streaming)."""
        gw = self.gw
        media = await gw.intake.prepare(plan.media, gw.visual_cost, gw.max_visual_tokens)
        self.clock.media_ms = media.media_ms
        # Rendering is pure CPU (jinja) but fast; a thread keeps long conversations off the loop.
        prompt = await anyio.to_thread.run_sync(gw.template.render, plan.template_messages)
        payload = generate_payload(sampling, vl_cache, media, prompt, self.rid)
        headers = None
        if gw.settings.routing_key_header:  # a router in front of several workers: pin the chat to one
            headers = {gw.settings.routing_key_header: routing_key(gw.model_name, media, plan.template_messages)}
        self.clock.sent_to_backend = time.perf_counter()
        if not stream:
            return await gw.backend.generate(payload, headers)
        pump = EventPump(gw.backend.generate_stream(payload, headers))
        try:
            return StreamStart(pump, await pump.next())
        except BaseException:  # refused, or cancelled because the client left: the pump ends here
            pump.close()
            raise

    def _plain_answer(self, answer: dict) -> PlainAnswer:
        """Finish reason (an SGLang abort raises its error) and usage of a plain answer, recorded."""
        meta = answer.get("meta_info", {})
        reason = finish_reason(meta)
        done = time.perf_counter()
        usage = build_usage(meta, self.clock, done)
        record_usage(self.gw.metrics, usage, self.clock)
        self.gw.metrics.latency.labels(stream="false").observe(done - self.clock.received)
        return PlainAnswer(answer.get("text", ""), reason, usage)
