"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Clients written for OpenAI (the official SDKs, LangChain, curl scripts) read `error.message`; FastAPI's
default 422 body (`{"detail": [...]}`) would reach them as an opaque blob. Every failure the API can
answer - bad JSON, a wrong type, an option we do not support, a full queue, a draining server - goes
through `APIError` or one of the handlers installed by `install_error_handlers`.
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("dssidecar.api")


class APIError(Exception):
    """An error answered to the client as an OpenAI error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def queue_full(message: str, retry_after_seconds: float) -> APIError:
    retry_after = str(max(1, math.ceil(retry_after_seconds)))
    return APIError(
        429, message, error_type="rate_limit_error", code="queue_full", headers={"Retry-After": retry_after}
    )


def unavailable(message: str, code: str = "server_draining") -> APIError:
    return APIError(503, message, error_type="service_unavailable", code=code, headers={"Retry-After": "1"})


def _location_to_param(location: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    parts = [p for p in location if p != "body"]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or None


def validation_error(error: RequestValidationError) -> APIError:
    problems = error.errors()
    if not problems:
        return bad_request("the request body is invalid")
    first = problems[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return bad_request(f"the request body is not valid JSON: {detail}".rstrip(": "), code="invalid_json")
    param = _location_to_param(first.get("loc", ()))
    messages = []
    for problem in problems[:5]:
        where = _location_to_param(problem.get("loc", ())) or "body"
        messages.append(f"{where}: {problem.get('msg', 'invalid')}")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return bad_request("; ".join(messages) + more, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(error).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        error_type = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            error_body(str(error.detail), error_type),
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # the exception text may hold prompt text, paths or secrets: it goes to the log, the client gets
        # an id to quote (its own X-Request-Id when it sent one)
        request_id = request.headers.get("x-request-id") or f"err-{uuid.uuid4().hex[:16]}"
        logger.exception("unhandled error while serving request %s %s (request id %s)", request.method,
                         request.url.path, request_id)
        return JSONResponse(
            error_body(f"internal error (request id {request_id}); the server log has the details", "server_error"),
            status_code=500, headers={"X-Request-Id": request_id},
        )
