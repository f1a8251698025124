"""OpenAI-style errors: every failure leaves the gateway as `{"error": {message, type, param, code}}`.

The `openai` client turns these into its typed exceptions (BadRequestError for 400,
AuthenticationError for 401, UnprocessableEntityError for 422, RateLimitError for 429, ...), so clients
of the gateway handle errors exactly as they would with OpenAI's API. Handlers
never echo a traceback: unexpected exceptions are logged here and answered with a generic 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error with its HTTP status and OpenAI error fields. Raise it anywhere below a route."""

    status_code = 400
    error_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


class InvalidRequest(APIError):
    """400: the request itself is wrong (schema, unsupported option, bad media)."""


class MediaTooLarge(APIError):
    """413: the request or a media item is over a size limit (bytes, pixels, frame size, duration)."""

    status_code = 413


class UnsupportedMediaType(APIError):
    """415: a media item is of a type the gateway does not accept (e.g. BMP, PDF, an AVI file)."""

    status_code = 415


class Unauthorized(APIError):
    """401: an API key is configured and the request carries none, or a wrong one."""

    status_code = 401


class ModelNotFound(APIError):
    status_code = 404


class Overloaded(APIError):
    """429: the gateway's in-flight limit (or SGLang's queue) is full; retry after `Retry-After`."""

    status_code = 429
    error_type = "rate_limit_error"


class BackendError(APIError):
    """5xx: SGLang is unreachable, timed out, or failed in a way that is not the client's fault."""

    status_code = 502
    error_type = "server_error"


class ValidationFailed(APIError):
    """422: the body does not fit the schema (wrong types, missing or unknown fields)."""

    status_code = 422


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


def install_error_handlers(app: FastAPI, bad_value_code: Callable[[dict], str | None] | None = None) -> None:
    """Route every exception type the gateway can meet to an OpenAI-style JSON body.

    `bad_value_code(pydantic_error)` names schema errors that the API reports as 400 bad values
    rather than 422 (e.g. `service.vl_cache.error_code`: a budget of "lots" is `invalid_budget`).
    """

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # A body that is not JSON at all is bad input (400); JSON that does not fit the schema is 422.
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return InvalidRequest("the body is not valid JSON", code="invalid_json").response()
        message, param = _validation_message(exc)
        codes = [bad_value_code(err) for err in exc.errors()] if bad_value_code else []
        if codes and all(codes):
            return InvalidRequest(message, param=param, code=codes[0]).response()
        return ValidationFailed(message, param=param, code="validation_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        err = APIError(str(exc.detail), status_code=exc.status_code, headers=dict(exc.headers or {}))
        err.error_type = error_type
        return err.response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in the gateway")
        err = APIError("internal error in the gateway", status_code=500, code="internal_error")
        err.error_type = "server_error"
        return err.response()
