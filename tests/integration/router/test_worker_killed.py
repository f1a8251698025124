"""A worker SIGKILLed under load, behind SMG (sticky sessions, retries and health checks at their
settings in `service.router_launch`).

A bounded burst through the keyed gateway: 58 short plain requests (each its own chat, so both
workers get some) and 2 long streams pinned to worker 1. Once 20 short answers are in and both streams
have sent their first token, worker 1's whole process group is SIGKILLed. What must hold:
- the 2 streams in flight on the dead worker end with an in-band error event (`server_error` JSON),
  none hangs: lost == in flight on it. A started stream cannot be replayed elsewhere;
- every short request succeeds, those in flight on the dead worker too (SMG retries a request whose
  worker failed before answering), and those sent after the kill are served by worker 0;
- the restarted worker rejoins (SMG's health check) and serves new chats.
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

SHORT, LONG, KILL_AFTER = 58, 2, 20
DEAD = 1  # the worker killed


def _served_by(stack, message: str) -> int:
    """Send a one-token chat whose first message is `message`; the index of the worker that served it."""
    before = stack.served()
    body = {"model": "default", "max_tokens": 1, "messages": [{"role": "user", "content": message}]}
    assert httpx.post(f"{stack.keyed}/v1/chat/completions", json=body, timeout=120).status_code == 200
    delta = [a - b for a, b in zip(stack.served(), before, strict=True)]
    assert sorted(delta) == [0, 1], delta
    return delta.index(1)


def _keys_on(stack, worker: int, n: int, prefix: str) -> list[str]:
    """First messages whose chats SMG pinned to `worker` (a probe per candidate; sticky from then on)."""
    found = []
    for i in range(4 * n + 4):
        if len(found) == n:
            return found
        message = f"{prefix} chat {i}: tell a long story."
        if _served_by(stack, message) == worker:
            found.append(message)
    raise AssertionError(f"SMG pinned fewer than {n} of {4 * n + 4} new chats to worker {worker}")


class Burst:
    """Client-side accounting of the burst: what was sent when, what came back."""

    def __init__(self):
        self.cond = threading.Condition()
        self.short_done = 0
        self.long_started = 0
        self.killed = False
        self.short: list[tuple[bool, int]] = []  # (sent after the kill, status)
        self.long: dict[int, dict] = {}  # stream -> {"started", "finished", "last"}

    def event(self, **changes) -> None:
        with self.cond:
            for name, delta in changes.items():
                setattr(self, name, getattr(self, name) + delta)
            self.cond.notify_all()


def _short(url: str, i: int, burst: Burst) -> None:
    with burst.cond:
        after_kill = burst.killed
    body = {"model": "default", "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": f"burst request {i}: one word please."}]}  # fmt: skip
    status = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).status_code
    with burst.cond:
        burst.short.append((after_kill, status))
    burst.event(short_done=1)


def _long(url: str, j: int, message: str, burst: Burst) -> None:
    """A stream far longer than the burst (4000 tokens, EOS ignored), so it is in flight at the kill."""
    body = {"model": "default", "max_tokens": 4000, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": message}]}  # fmt: skip
    state = burst.long.setdefault(j, {"started": False, "finished": False, "last": None})
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            state["last"] = event
            if not state["started"]:
                state["started"] = True
                burst.event(long_started=1)
            if event.get("choices") and event["choices"][0].get("finish_reason"):
                state["finished"] = True


def test_a_worker_killed_under_load_loses_only_its_started_streams_and_rejoins(router_stack):
    stack = router_stack
    long_messages = _keys_on(stack, DEAD, LONG, "kill-test")
    burst = Burst()
    served_before = stack.served()
    with ThreadPoolExecutor(max_workers=LONG + 4) as pool:
        longs = [pool.submit(_long, stack.keyed, j, m, burst) for j, m in enumerate(long_messages)]
        shorts = [pool.submit(_short, stack.keyed, i, burst) for i in range(SHORT)]
        with burst.cond:  # the trigger: an event, not a timer
            assert burst.cond.wait_for(lambda: burst.short_done >= KILL_AFTER and burst.long_started == LONG, 300)
            stack.kill(DEAD)
            burst.killed = True
            in_flight_on_dead = sum(s["started"] and not s["finished"] for s in burst.long.values())
        for future in [*longs, *shorts]:
            future.result(timeout=300)  # none hangs (httpx's own timeout would fail it first)
    statuses = [status for _, status in burst.short]
    lost = [s for s in burst.long.values() if not s["finished"]]
    after_kill = [status for after, status in burst.short if after]
    served_by_survivor = stack.served_on(1 - DEAD) - served_before[1 - DEAD]
    print(f"sent {SHORT + LONG}: short {SHORT} ({len(after_kill)} after the kill), "
          f"long streams {LONG}; in flight on the dead worker at the kill: {in_flight_on_dead} streams; "
          f"succeeded {statuses.count(200)} short, lost {len(lost)} streams; worker {1 - DEAD} served {served_by_survivor}")  # fmt: skip
    assert in_flight_on_dead == LONG
    assert len(lost) == in_flight_on_dead
    for state in lost:
        error = state["last"]["error"]  # the stream's last event: the gateway's in-band error JSON
        assert error["type"] == "server_error" and error["code"] in ("backend_error", "backend_unavailable"), error
    assert statuses == [200] * SHORT
    assert after_kill and served_by_survivor >= len(after_kill)

    stack.restart(DEAD)
    url = stack.worker_urls[DEAD]
    _wait(lambda: stack.healthy_in_router().get(url), "SMG to count the restarted worker healthy")
    served = [_served_by(stack, f"after the restart, chat {i}") for i in range(6)]
    assert DEAD in served, served  # it takes new chats again


def _wait(condition, what: str, timeout_s: float = 120.0) -> None:
    """Poll `condition` (a counter or state read, not a timer) until true; fail past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
