"""Refuse request bodies over a size limit with 413 before they are read whole.

Why this exists: FastAPI reads, parses and validates a body before a handler sees it, so a 30 MiB
prompt cost ~20x its size in memory on the event loop before any context-length check could refuse
it. This ASGI middleware answers 413 at once when Content-Length says the body is too large, and for a
body without a length (chunked) it counts bytes as they arrive and stops reading at the limit. Like
nginx's `client_max_body_size` and uvicorn's `h11_max_incomplete_event_size`, the limit is per request
and configurable (`--max-request-body-bytes`, DSSIDECAR_MAX_REQUEST_BODY_BYTES).
"""

from __future__ import annotations

import json

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_REQUEST_BODY_BYTES = 8 << 20


def _too_large_message(limit_bytes: int, length: int | None = None) -> str:
    size = f"{length} bytes" if length is not None else f"more than {limit_bytes} bytes"
    return f"the request body ({size}) is larger than this server's limit of {limit_bytes} bytes (max_request_body_bytes)"


class BodySizeLimitMiddleware:
    """ASGI middleware: 413 (OpenAI error body) for a request body over `max_body_bytes`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, _too_large_message(limit, declared))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises an HTTPException met while reading the body; the app's handler
                    # turns it into the OpenAI error body
                    raise HTTPException(413, _too_large_message(limit))
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, message: str) -> None:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "request_too_large"}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
