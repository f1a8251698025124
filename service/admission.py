"""Admission control: a bound on the requests the gateway works on at once.

Beyond `limit`, a request is refused at once with 429 and `Retry-After` rather than queued: a client
(or a load balancer) can then retry elsewhere, and the gateway's memory (decoded media) stays bounded.
A slot is held from admission until the response is complete, streaming included.
"""

from __future__ import annotations

from service.errors import Overloaded


class Slot:
    """One admitted request. `release()` is idempotent (streams release from several exit paths)."""

    def __init__(self, limiter: AdmissionLimiter):
        self._limiter = limiter
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter._inflight -= 1


class AdmissionLimiter:
    """Not thread-safe by design: used only from the event loop."""

    def __init__(self, limit: int, retry_after_s: int = 1):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._inflight = 0

    @property
    def inflight(self) -> int:
        return self._inflight

    def acquire(self) -> Slot:
        """A slot, or `Overloaded` (429) when `limit` requests are already in flight."""
        if self._inflight >= self.limit:
            raise Overloaded(
                f"the gateway is at its limit of {self.limit} concurrent requests; retry shortly",
                code="too_many_requests",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self._inflight += 1
        return Slot(self)
