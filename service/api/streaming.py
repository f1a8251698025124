"""The streaming answer: SGLang's `/generate` SSE turned into OpenAI `chat.completion.chunk` events.

Contract:
- the first SGLang event is awaited *before* the HTTP response starts, so refusals that SGLang makes at
  admission (prompt over the context length, bad media) still reach the client as a 4xx JSON error;
- then: a role chunk, content deltas, a final chunk with `finish_reason`, a usage chunk (OpenAI's
  `stream_options.include_usage`; it carries `usage.kv_cache` and `usage.timings`), `data: [DONE]`;
- an error after the response started is sent as `data: {"error": {...}}` then `data: [DONE]`;
- if the client leaves before the end, the SGLang request is aborted (`/abort_request` with its rid)
  so its KV is freed now; the admission slot is released on every exit path, exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse

from service.api.events import EventPump
from service.api.pipeline import GenerationRun
from service.api.usage import build_usage, finish_reason, record_usage
from service.disconnect import ClientGone, ServerStopping
from service.errors import APIError
from service.schemas import ChatCompletionChunk, ChunkChoice, Delta
from service.state import GatewayState


class _CleanupStreamingResponse(StreamingResponse):
    """A StreamingResponse that runs `on_close` however it ends, even if the body never started."""

    def __init__(self, *args, on_close, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass  # the client left mid-stream: an expected end, handled by on_close
        finally:
            self._on_close()


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class ChatStream:
    """One streaming chat completion, from its first SGLang event to `[DONE]`.

    `run` is the request's `GenerationRun` (rid, clock, watcher, `finish()`).
    """

    def __init__(self, gw: GatewayState, run: GenerationRun, pump: EventPump, *, model: str, include_usage: bool):
        self.gw, self.run, self.pump = gw, run, pump
        self.watcher, self.clock, self.rid = run.watcher, run.clock, run.rid
        self.model, self.include_usage = model, include_usage
        self.created = int(time.time())
        self._completed = False
        self._closed = False

    def response(self, first_event: dict) -> StreamingResponse:
        return _CleanupStreamingResponse(
            self._body(first_event), media_type="text/event-stream",
            headers={"x-request-id": self.rid, "cache-control": "no-cache"}, on_close=self.close,
        )  # fmt: skip

    def _chunk(self, delta: Delta, finish: str | None = None) -> bytes:
        chunk = ChatCompletionChunk(id=self.rid, created=self.created, model=self.model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish)])  # fmt: skip
        return _sse(chunk.model_dump(mode="json", exclude_none=True))

    def _tokens_arrived(self, event: dict) -> None:
        """Timestamp the event's new tokens (TTFT, inter-token latency)."""
        total = int(event.get("meta_info", {}).get("completion_tokens") or 0)
        for gap in self.clock.tokens_arrived(total, time.perf_counter()):
            self.gw.metrics.itl.observe(gap)

    async def _body(self, event: dict | None) -> AsyncIterator[bytes]:
        sent_text = ""
        last: dict = event or {}
        try:
            yield self._chunk(Delta(role="assistant", content=""))
            while event is not None:
                last = event
                self._tokens_arrived(event)
                text = event.get("text", "")
                delta = text if self.gw.incremental_stream else text[len(sent_text) :]
                sent_text = sent_text + delta if self.gw.incremental_stream else text
                if delta:
                    yield self._chunk(Delta(content=delta))
                event = await self.watcher.race(self.pump.next())
            meta = last.get("meta_info", {})
            reason = finish_reason(meta)
            self._completed = True
            usage = build_usage(meta, self.clock, time.perf_counter())
            record_usage(self.gw.metrics, usage, self.clock)
            yield self._chunk(Delta(), reason or "stop")
            if self.include_usage:
                chunk = ChatCompletionChunk(
                    id=self.rid, created=self.created, model=self.model, choices=[], usage=usage
                )
                yield _sse(chunk.model_dump(mode="json"))
            yield b"data: [DONE]\n\n"
        except ClientGone:
            return  # close() aborts the SGLang request
        except ServerStopping as exc:
            self.gw.note_stopped_request()
            yield _sse(exc.body())  # not completed: close() aborts the SGLang request
            yield b"data: [DONE]\n\n"
        except APIError as exc:
            # The request ended inside SGLang (error event or abort): report it in-band.
            self._completed = True
            yield _sse(exc.body())
            yield b"data: [DONE]\n\n"
        finally:
            self.close()

    def close(self) -> None:
        """Idempotent, synchronous (it may run inside a cancelled scope: no awaits here)."""
        if self._closed:
            return
        self._closed = True
        self.pump.close()
        if not self._completed:
            self.gw.metrics.aborted.inc()
            self.gw.spawn(self.gw.backend.abort(self.rid))
        self.gw.metrics.latency.labels(stream="true").observe(time.perf_counter() - self.clock.received)
        self.run.finish()  # releases the admission slot and the disconnect watcher
