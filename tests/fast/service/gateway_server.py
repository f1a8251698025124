"""Run an ASGI app on a real uvicorn server on a free loopback port, in a background thread."""

from __future__ import annotations

import contextlib
import threading

import uvicorn

from service.sglang_process import free_port
from testkit import wait_until_ready


@contextlib.contextmanager
def running_server(app, ready_path: str = "/health", timeout_s: float = 120.0):
    """Yield the base URL once `ready_path` answers 200 (the app's lifespan has run by then)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            url, path=ready_path, timeout_s=timeout_s, poll_s=0.1, name="gateway",
            stopped=lambda: None if thread.is_alive() else "the gateway server stopped during start-up",
        )  # fmt: skip
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
