"""The gateway's only link to SGLang: an httpx client for SGLang's native HTTP API.

Endpoints used (SGLang 0.5.23): `POST /generate` (plain and `stream: true`, Server-Sent Events whose
every chunk carries `meta_info`), `POST /abort_request` (`{"rid": ...}`), `GET /health`,
`GET /model_info`, `GET /server_info`, `GET /v1/loads`. A router in front (SMG 1.13) serves these only
under SGLang's older names, `/get_model_info`, `/get_server_info`, `/get_loads` (same bodies): each is
tried on a 4xx.

Error contract: SGLang's answers become `service.errors` exceptions. HTTP 400 (and an in-stream
`{"error": ...}` event with a 4xx code) -> `InvalidRequest` (the client sent something SGLang refuses,
e.g. a prompt over the context length); 429 -> `Overloaded`; connection failures -> 503
`backend_unavailable`; timeouts -> 504 `backend_timeout`; anything else -> 502.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import httpx

from service.errors import APIError, BackendError, InvalidRequest, Overloaded

logger = logging.getLogger(__name__)


class Backend(Protocol):
    """What the gateway needs from a generation backend (SGLangBackend, or a fake in unit tests)."""

    async def generate(self, payload: dict, headers: dict | None = None) -> dict: ...

    def generate_stream(self, payload: dict, headers: dict | None = None) -> AsyncIterator[dict]: ...

    async def abort(self, rid: str) -> None: ...

    async def health(self) -> bool: ...

    async def model_info(self) -> dict: ...

    async def server_info(self) -> dict: ...

    async def loads(self) -> dict: ...

    async def aclose(self) -> None: ...


def error_from_backend(status: int, message: str) -> APIError:
    """Map an SGLang error (HTTP status + message) to the gateway's error."""
    if status == 429:
        return Overloaded(f"SGLang is overloaded: {message}", code="backend_overloaded", headers={"Retry-After": "1"})
    if 400 <= status < 500:
        return InvalidRequest(message, code="backend_rejected_request")
    if status == 503:
        return BackendError(f"SGLang is unavailable: {message}", code="backend_unavailable", status_code=503)
    return BackendError(f"SGLang failed: {message}", code="backend_error")


def _error_message(body: object) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(err)
    return str(body)


def _transport_error(exc: httpx.HTTPError) -> APIError:
    if isinstance(exc, httpx.TimeoutException):
        return BackendError("SGLang did not answer in time", code="backend_timeout", status_code=504)
    return BackendError(f"SGLang is unreachable ({type(exc).__name__})", code="backend_unavailable", status_code=503)


class SGLangBackend:
    """httpx client of one SGLang server. One instance per gateway (connection pooling)."""

    def __init__(self, base_url: str, timeout_s: float = 300.0, client: httpx.AsyncClient | None = None):
        self.base_url = base_url.rstrip("/")
        # trust_env=False: an HTTP(S)_PROXY in the environment must not reroute loopback traffic.
        self._client = client or httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=5.0), trust_env=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(self, payload: dict, headers: dict | None = None) -> dict:
        """Non-streaming `/generate`: the final `{text, output_ids, meta_info}`. `headers` go with the
        request (a router's routing key)."""
        try:
            response = await self._client.post("/generate", json={**payload, "stream": False}, headers=headers)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
        body = _json_or_text(response)
        if response.status_code != 200:
            raise error_from_backend(response.status_code, _error_message(body))
        if not isinstance(body, dict) or "meta_info" not in body:
            raise BackendError("SGLang returned an unexpected body", code="backend_error")
        return body

    async def generate_stream(self, payload: dict, headers: dict | None = None) -> AsyncIterator[dict]:
        """Streaming `/generate`: yields each SSE chunk (`{text, output_ids, meta_info}`), cumulative.

        Closing the iterator early closes the HTTP stream; the caller also calls `abort(rid)` so that
        SGLang frees the request's KV at once rather than at its next output.
        """
        try:
            stream = self._client.stream("POST", "/generate", json={**payload, "stream": True}, headers=headers)
            async with stream as response:
                if response.status_code != 200:
                    await response.aread()
                    raise error_from_backend(response.status_code, _error_message(_json_or_text(response)))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        err = event["error"] if isinstance(event["error"], dict) else {"message": event["error"]}
                        raise error_from_backend(int(err.get("code") or 500), str(err.get("message")))
                    yield event
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None

    async def abort(self, rid: str) -> None:
        """Ask SGLang to abort `rid` and free its KV. Best effort: failures are logged, not raised."""
        if self._client.is_closed:  # the gateway is stopping; the launcher aborts what SGLang still holds
            return
        try:
            response = await self._client.post("/abort_request", json={"rid": rid}, timeout=5.0)
            if response.status_code != 200:
                logger.warning("SGLang refused to abort %s: HTTP %d", rid, response.status_code)
        except httpx.HTTPError as exc:
            logger.warning("could not abort %s in SGLang: %s", rid, exc)

    async def health(self) -> bool:
        try:
            return (await self._client.get("/health", timeout=5.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def _get_json(self, path: str, timeout: float = 10.0) -> dict:
        try:
            response = await self._client.get(path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise _transport_error(exc) from None
        if response.status_code != 200:
            raise error_from_backend(response.status_code, _error_message(_json_or_text(response)))
        return response.json()

    async def _get_json_or_router(self, path: str, router_path: str, timeout: float = 10.0) -> dict:
        try:
            return await self._get_json(path, timeout)
        except InvalidRequest:  # a 4xx: a router (SMG 1.13) serves only SGLang's older name for it
            return await self._get_json(router_path, timeout)

    async def model_info(self) -> dict:
        return await self._get_json_or_router("/model_info", "/get_model_info")

    async def server_info(self) -> dict:
        return await self._get_json_or_router("/server_info", "/get_server_info")

    async def loads(self) -> dict:
        return await self._get_json_or_router("/v1/loads", "/get_loads", timeout=3.0)


def _json_or_text(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text
