"""`EventPump`: SGLang's event stream consumed in a task of its own, read one event at a time.

One task owns the HTTP stream from start to end (so closing it never happens from another task),
and the request's code awaits `next()` under its disconnect/stop race. Used by the pipeline (the
first event) and the SSE stream (the rest).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

_END = object()


class EventPump:
    """Consumes the backend stream in its own task (one task owns the HTTP stream start to end)."""

    def __init__(self, events: AsyncIterator[dict]):
        self._queue: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(events))

    async def _run(self, events: AsyncIterator[dict]) -> None:
        try:
            async for event in events:
                self._queue.put_nowait(event)
            self._queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # delivered to the consumer, raised there
            self._queue.put_nowait(exc)

    async def next(self) -> dict | None:
        """The next event; None at the end; raises the backend's error."""
        item = await self._queue.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.task.cancel()
