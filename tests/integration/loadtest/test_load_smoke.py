"""A short headless Locust run (loadtest/locustfile.py, as `make loadtest` runs it) against a real
gateway in front of the session's plugin-selected SGLang: no failure of any kind, TTFT and
inter-token latency recorded as their own entries; afterwards, idle and flushed, the pool holds no
logical and no physical slot in any layer."""

import httpx

from loadtest.run import run_locust, summary
from service.app import create_app
from service.config import GatewaySettings
from testkit import flush_when_idle, running_server
from tests.integration.sglang.test_vlcache_plugin import pool_state


def test_locust_run_has_no_failures_and_leaves_no_slot_held(vlcache_server, tmp_path):
    app = create_app(GatewaySettings(backend_url=vlcache_server.url))
    with running_server(app, ready_path="/ready", timeout_s=300) as url:
        # Locust's -t bounds the run; users finish the request they are in (--stop-timeout).
        rc = run_locust(url, tmp_path, users=3, spawn_rate=3, duration="20s", extra=["--max-tokens", "8"])
    figures = summary(tmp_path)
    print("locust smoke:", figures)
    assert rc == 0, figures
    assert figures["failures"] == 0 and figures["all_failures"] == 0
    assert figures["requests"] >= 1
    assert figures["ttft_ms"]["count"] >= 1 and figures["itl_ms"]["count"] >= 1
    with httpx.Client(base_url=vlcache_server.url, timeout=30) as c:
        flush_when_idle(c)
        state = pool_state(c)
    assert state["logical_slots_used"] == 0
    assert state["physical_slots_used_per_layer"] and not any(state["physical_slots_used_per_layer"])
