"""Noticing that the HTTP client has gone, while the gateway waits on SGLang.

Starlette cancels nothing on a client disconnect for a plain response, and a streaming response only
notices when its next write fails, which can be a long prefill away. `DisconnectWatcher` reads the
ASGI receive channel (which yields `http.disconnect` when the peer closes) so the gateway can abort
the SGLang request at once and free its KV.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request


class ClientGone(Exception):
    """The client closed the connection before the answer was complete."""


class DisconnectWatcher:
    """Start once per request (after the body was read); `race()` awaits work unless the client leaves."""

    def __init__(self, request: Request):
        self._task = asyncio.ensure_future(self._wait(request))

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
        """The awaitable's result; `ClientGone` (and the awaitable cancelled) if the client left first."""
        work = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({work, self._task}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            raise
        if work.done():
            return work.result()
        work.cancel()
        raise ClientGone()

    def close(self) -> None:
        self._task.cancel()
