"""Run an ASGI app on a real uvicorn server on a free loopback port, in a background thread."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import uvicorn

from service.sglang_process import free_port


@contextlib.contextmanager
def running_server(app, ready_path: str = "/health", timeout_s: float = 120.0):
    """Yield the base URL once `ready_path` answers 200 (the app's lifespan has run by then)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if not thread.is_alive():
                raise RuntimeError("the gateway server stopped during start-up")
            try:
                if server.started and httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready at {url}")
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
