"""A client that goes away frees its sequence; draining lets in-flight streams finish and refuses new ones.

httpx's ASGITransport buffers whole responses, so the disconnect tests speak raw ASGI: the `receive`
callable reports http.disconnect after a few body chunks, exactly as uvicorn does when a socket closes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from api_fake_engine import FakeEngine
from dssidecar.api.app import build_app, shutdown_engine
from fastapi import FastAPI

MODEL = "fake-model"


class RawClient:
    """Calls the app once with a JSON body; disconnects after `disconnect_after_chunks` body messages."""

    def __init__(self, app: FastAPI, disconnect_after_chunks: int | None = None, disconnect_after_seconds: float | None = None) -> None:
        self.app = app
        self.disconnect_after_chunks = disconnect_after_chunks
        self.disconnect_after_seconds = disconnect_after_seconds
        self.messages: list[dict[str, Any]] = []
        self.disconnected = asyncio.Event()

    async def post(self, path: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"content-type", b"application/json"), (b"host", b"t")],
            "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80), "state": {},
        }  # fmt: skip
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            if self.disconnect_after_seconds is not None:
                try:
                    await asyncio.wait_for(self.disconnected.wait(), self.disconnect_after_seconds)
                except asyncio.TimeoutError:
                    self.disconnected.set()
            await self.disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            self.messages.append(message)
            chunks = [m for m in self.messages if m["type"] == "http.response.body" and m.get("body")]
            if self.disconnect_after_chunks is not None and len(chunks) >= self.disconnect_after_chunks:
                self.disconnected.set()

        await self.app(scope, receive, send)

    def body_text(self) -> str:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body").decode()


async def test_stream_disconnect_aborts_the_request_and_frees_its_blocks() -> None:
    engine = FakeEngine(token_delay_seconds=0.002)
    app = build_app(engine)
    async with app.router.lifespan_context(app):
        raw = RawClient(app, disconnect_after_chunks=3)
        payload = {"model": MODEL, "prompt": "abcdefgh", "max_tokens": 400, "stream": True}
        await asyncio.wait_for(raw.post("/v1/completions", payload), timeout=10)
        assert engine.blocks_held == {}
        assert len(engine.aborted) == 1
        assert "[DONE]" not in raw.body_text()
        assert engine.generation_tokens_total < 400
        assert app.state.serving.in_flight == set()
        text = (await _metrics(app))
        assert 'vllm:request_success_total{finished_reason="abort",model_name="fake-model"} 1.0' in text


async def test_non_stream_disconnect_aborts_the_request() -> None:
    engine = FakeEngine(token_delay_seconds=0.002)
    app = build_app(engine)
    async with app.router.lifespan_context(app):
        raw = RawClient(app, disconnect_after_seconds=0.05)
        payload = {"model": MODEL, "prompt": "abcdefgh", "max_tokens": 400}
        await asyncio.wait_for(raw.post("/v1/completions", payload), timeout=10)
        assert engine.blocks_held == {}
        assert len(engine.aborted) == 1
        assert engine.generation_tokens_total < 400


async def _metrics(app: FastAPI) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        return (await http.get("/metrics")).text


async def test_drain_finishes_in_flight_streams_and_refuses_new_requests() -> None:
    engine = FakeEngine(token_delay_seconds=0.005)
    app = build_app(engine, shutdown_grace_seconds=10.0)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            payload = {"model": MODEL, "prompt": "abc", "max_tokens": 40, "stream": True}
            in_flight = asyncio.create_task(http.post("/v1/completions", json=payload))
            while not engine.blocks_held:
                await asyncio.sleep(0.005)
            drain = asyncio.create_task(shutdown_engine(app, 10.0))
            await asyncio.sleep(0.02)
            refused = await http.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
            assert refused.status_code == 503
            assert (await http.get("/readyz")).status_code == 503
            finished = await in_flight
            await drain
    assert finished.status_code == 200
    assert finished.text.endswith("data: [DONE]\n\n")
    assert '"finish_reason":"length"' in finished.text
    assert engine.aborted == []
    assert engine.shutdown_calls == 1  # the lifespan's own shutdown did not call it twice


async def test_drain_past_the_grace_period_aborts_what_is_left() -> None:
    engine = FakeEngine(token_delay_seconds=0.01)
    app = build_app(engine, shutdown_grace_seconds=0.05)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            payload = {"model": MODEL, "prompt": "abc", "max_tokens": 400}
            in_flight = asyncio.create_task(http.post("/v1/completions", json=payload))
            while not engine.blocks_held:
                await asyncio.sleep(0.005)
            await shutdown_engine(app, 0.05)
            response = await in_flight
    assert response.status_code == 200
    assert response.json()["choices"][0]["finish_reason"] == "abort"
    assert response.json()["usage"]["completion_tokens"] < 400
