"""Routes of the live page: `/` (the HTML), `/page/static/<file>` and `/api/page/events` (Server-Sent Events).

Why a stream: the page backfills its charts once with /api/v1/query_range and then needs a few numbers a
second. Polling six Prometheus queries plus /api/status every second costs the agent an HTTP request
each; one SSE connection instead gets one event per second holding /api/status's JSON and the page's
instant queries, answered by the same evaluator as /api/v1/query and in its `data` format. Rule state
(the /api/v1/rules and /api/v1/alerts data) rides along every few events. The events are computed in the
API's thread from the store; the collection tick does no work for the page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from dsagent.prom_api import DEFAULT_LOOKBACK_SECONDS, instant_query_data
from dsagent.store import TimeSeriesStore

log = logging.getLogger(__name__)

STATIC_FILES: dict[str, str] = {
    "page.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
MAX_STREAM_QUERIES = 32
MAX_QUERY_CHARS = 1000
RULES_EVERY_EVENTS = 5


def _static_bytes(name: str) -> bytes:
    return resources.files("dsagent.page").joinpath("static", name).read_bytes()


def page_event(store: TimeSeriesStore, status_provider: Callable[[], dict[str, Any]],
               rule_manager: Callable[[], Any] | None, queries: list[str], with_rules: bool, now_seconds: float,
               interval_seconds: float = 1.0, lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS) -> dict[str, Any]:
    """One stream event: /api/status's JSON, each query's /api/v1/query answer, and (with_rules) rule state."""
    body: dict[str, Any] = {"time": now_seconds, "retention_seconds": store.retention_seconds,
                            "interval_seconds": interval_seconds}
    try:
        status = dict(status_provider())
        status.pop("rules", None)  # the page reads rule state in Prometheus's form below, every few events
        body["status"] = status
    except Exception as exc:  # the panels say why instead of the page going blank
        log.exception("status for the page failed")
        body["status_error"] = f"{type(exc).__name__}: {exc}"
    results: dict[str, Any] = {}
    for text in queries:
        try:
            results[text] = {"status": "success", "data": instant_query_data(store, text, now_seconds, lookback_seconds)}
        except ValueError as exc:
            results[text] = {"status": "error", "errorType": "bad_data", "error": str(exc)}
    body["queries"] = results
    if with_rules:
        manager = rule_manager() if rule_manager is not None else None
        if manager is None:
            body["rules"] = None
        else:
            try:
                body["rules"] = {"rules": manager.prometheus_rules(), "alerts": manager.prometheus_alerts()}
            except Exception as exc:
                body["rules"] = {"error": f"{type(exc).__name__}: {exc}"}
    return body


def build_page_router(store: TimeSeriesStore, status_provider: Callable[[], dict[str, Any]],
                      rule_manager: Callable[[], Any] | None = None, interval_seconds: float = 1.0,
                      lookback_seconds: float = DEFAULT_LOOKBACK_SECONDS) -> APIRouter:
    """The page's routes; status_provider is /api/status's, rule_manager returns the rules' manager or None."""
    router = APIRouter()
    cache: dict[str, bytes] = {}

    def static(name: str) -> bytes:
        if name not in cache:
            cache[name] = _static_bytes(name)
        return cache[name]

    @router.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(static("index.html"), headers={"Cache-Control": "no-cache"})

    @router.get("/page/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            return JSONResponse({"error": f"no page file {name!r}"}, status_code=404)
        return Response(static(name), media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @router.get("/api/page/events", include_in_schema=False)
    async def events(request: Request) -> Response:
        queries = request.query_params.getlist("query")
        if len(queries) > MAX_STREAM_QUERIES or any(len(q) > MAX_QUERY_CHARS for q in queries):
            return JSONResponse({"status": "error", "errorType": "bad_data",
                                 "error": f"at most {MAX_STREAM_QUERIES} queries of {MAX_QUERY_CHARS} characters"},
                                status_code=400)

        async def stream() -> AsyncIterator[bytes]:
            count = 0
            yield b"retry: 2000\n\n"
            while not await request.is_disconnected():
                body = page_event(store, status_provider, rule_manager, queries, count % RULES_EVERY_EVENTS == 0,
                                  time.time(), interval_seconds, lookback_seconds)
                payload = json.dumps(body, separators=(",", ":"))
                yield f"event: tick\ndata: {payload}\n\n".encode()
                count += 1
                await asyncio.sleep(interval_seconds - (time.time() % interval_seconds) + 0.05)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router
