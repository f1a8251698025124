"""Pure ASGI middleware (no BaseHTTPMiddleware: it would break streaming and disconnect detection).

- `RequestMetricsMiddleware`: counts every answer in `vlcache_requests_total{endpoint,status}`.
- `APIKeyMiddleware`: with an API key configured, every `/v1/*` request must carry
  `Authorization: Bearer <key>` (401 otherwise), checked before the body is read; other paths
  (`/health`, `/ready`, `/metrics`, `/docs`) stay open.
- `BodyLimitMiddleware`: refuses request bodies over `max_bytes` with 413, by Content-Length when
  declared and by counting otherwise, before the JSON parser buffers them.
"""

from __future__ import annotations

import hmac

from service.errors import MediaTooLarge, Unauthorized
from service.metrics import GatewayMetrics

# Label values are bounded: unknown paths are counted as "other" (no label explosion from scanners).
KNOWN_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/generate", "/v1/models", "/health", "/ready", "/metrics"})
PROTECTED_PREFIX = "/v1/"


class RequestMetricsMiddleware:
    def __init__(self, app, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_ENDPOINTS else "other"
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()


class APIKeyMiddleware:
    def __init__(self, app, api_key: str):
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith(PROTECTED_PREFIX):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                given = token.strip() if scheme.lower() == b"bearer" else b""
                break
        if not hmac.compare_digest(given, self._key):  # constant time: the key does not leak by timing
            message = "invalid API key" if given else "missing API key: send 'Authorization: Bearer <key>'"
            error = Unauthorized(message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await error.response()(scope, receive, send)
        return await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = MediaTooLarge(f"request body over the limit of {self.max_bytes} bytes", code="request_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await error.response()(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await error.response()(scope, receive, send)
