"""Noticing that the HTTP client has gone, or that the server stops, while the gateway waits on SGLang.

Starlette cancels nothing on a client disconnect for a plain response, and a streaming response only
notices when its next write fails, which can be a long prefill away. `DisconnectWatcher` reads the
ASGI receive channel (which yields `http.disconnect` when the peer closes) so the gateway can abort
the SGLang request at once and free its KV.

It also watches the gateway's `stopping` event (set when a stop's drain time has run out): the
request then ends with `ServerStopping` (503, in-band for a stream) instead of being cancelled by
the server, which would cut the connection and log a traceback.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from service.errors import BackendError


class ClientGone(Exception):
    """The client closed the connection before the answer was complete."""


class ServerStopping(BackendError):
    """503: the gateway is stopping and this request did not finish within the drain time."""

    def __init__(self):
        super().__init__(
            "the server is shutting down; the request was aborted", code="server_stopping", status_code=503
        )


class DisconnectWatcher:
    """Start once per request (after the body was read); `race()` awaits work unless the client leaves."""

    def __init__(self, request: Request, stopping: asyncio.Event | None = None):
        self._task = asyncio.ensure_future(self._wait(request))
        self._stopping = stopping

    @staticmethod
    async def _wait(request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    @property
    def gone(self) -> bool:
        return self._task.done() and not self._task.cancelled()

    async def race(self, awaitable):
        """The awaitable's result; `ClientGone` if the client left first, `ServerStopping` if the server's
        drain time ran out first (the awaitable is then cancelled)."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stopping.wait()) if self._stopping is not None else None
        try:
            await asyncio.wait({work, self._task} | ({stop} if stop else set()), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            raise
        finally:
            if stop is not None:
                stop.cancel()
        if work.done():
            return work.result()
        work.cancel()
        if self._task.done():
            raise ClientGone()
        raise ServerStopping()

    def close(self) -> None:
        self._task.cancel()
