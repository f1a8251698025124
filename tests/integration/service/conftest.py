"""The gateway's integration tier: gateways (real uvicorn, real HTTP) in front of the session's real
SGLang servers (tests/integration/conftest.py), plus a local HTTP server for media URLs. No SGLang
server is started here: gateways are cheap (a chat template load), SGLang servers are not.

- `gateway`: in front of `sglang_server` (stock SGLang, plugin not selected);
- `strict_gateway`: the same backend, with an API key and an in-flight limit of 1;
- `vlcache_gateway`: in front of `vlcache_server` (the plugin selected): per-request KV reports and
  per-layer pool figures.
"""

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service.app import create_app
from service.config import GatewaySettings
from testkit import running_server


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def media_server(tmp_path_factory):
    """(base URL, folder): files written to the folder are served on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("media")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()


MAX_IMAGE_BYTES = 1_000_000  # small, so the 413 case needs little traffic
API_KEY = "integration-test-key"


@pytest.fixture(scope="session")
def gateway_settings(sglang_server):
    # The local media server is on loopback: allow-list it (and only it) past the SSRF guard.
    return GatewaySettings(
        backend_url=sglang_server.url, media_url_allowed_hosts=["127.0.0.1"], max_inflight_requests=8,
        max_image_bytes=MAX_IMAGE_BYTES,
    )  # fmt: skip


@pytest.fixture(scope="session")
def gateway_app(gateway_settings):
    return create_app(gateway_settings)


@pytest.fixture(scope="session")
def gateway(gateway_app):
    """Base URL of the gateway, once its lifespan ran (SGLang model info read, chat template loaded)."""
    with running_server(gateway_app, ready_path="/ready", timeout_s=300) as url:
        yield url


@pytest.fixture(scope="session")
def strict_gateway(sglang_server):
    """A gateway with `VLCACHE_API_KEY` set and `VLCACHE_MAX_INFLIGHT_REQUESTS=1`."""
    app = create_app(
        GatewaySettings(backend_url=sglang_server.url, api_key=API_KEY, max_inflight_requests=1, retry_after_s=2)
    )
    with running_server(app, ready_path="/ready", timeout_s=300) as url:
        yield url


def _openai(url, api_key="unused"):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=180, max_retries=0)


@pytest.fixture(scope="session")
def openai_client(gateway):
    with _openai(gateway) as client:
        yield client


@pytest.fixture(scope="session")
def vlcache_gateway(request):
    """A second gateway, in front of SGLang with the plugin selected (`vlcache_server` of
    tests/integration/conftest.py, looked up lazily: only the plugin tests start that server)."""
    server = request.getfixturevalue("vlcache_server")
    app = create_app(GatewaySettings(backend_url=server.url))
    with running_server(app, ready_path="/ready", timeout_s=300) as url:
        yield url


@pytest.fixture(scope="session")
def vlcache_openai_client(vlcache_gateway):
    with _openai(vlcache_gateway) as client:
        yield client
