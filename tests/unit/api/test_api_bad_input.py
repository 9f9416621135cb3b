"""Bad input cannot hurt the sidecar (issue 12 item 6): out-of-range sampling values, lone surrogates,
oversized bodies and engine surprises are answered with one clear 4xx/5xx, recorded, and never reach
the tensors; tokenization runs off the event loop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api_fake_engine import FakeEngine
from dssidecar.api.app import build_app
from dssidecar.api.request_telemetry import RequestTelemetry
from dssidecar.engine.protocol import RequestOutput, SamplingParams
from fastapi import FastAPI
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from test_api_errors import assert_openai_error

MODEL = "fake-model"
CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_k", 2**70), ("top_k", 100_001), ("top_k", -2), ("seed", 2**70), ("seed", -(2**63) - 1)],
)
async def test_sampling_values_outside_their_range_are_400_naming_the_field(
    client: httpx.AsyncClient, fake_engine: FakeEngine, field: str, value: int
) -> None:
    for path, body in (("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", {"messages": CHAT})):
        response = await client.post(path, json={"model": MODEL, field: value, **body})
        error = assert_openai_error(response, 400, param=field)
        assert str(value) in error["message"] or field in error["message"]
    assert fake_engine.submitted == []


async def test_largest_valid_seed_and_top_k_are_accepted(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    payload = {"model": MODEL, "prompt": "x", "max_tokens": 2, "seed": 2**63 - 1, "top_k": 100_000}
    assert (await client.post("/v1/completions", json=payload)).status_code == 200
    assert fake_engine.submitted[-1][2].seed == 2**63 - 1


@pytest.mark.parametrize("raw", [b'"temperature": NaN', b'"top_p": Infinity', b'"presence_penalty": NaN',
                                 b'"logit_bias": {"5": Infinity}'])
async def test_non_finite_numbers_are_400(client: httpx.AsyncClient, fake_engine: FakeEngine, raw: bytes) -> None:
    body = b'{"model": "fake-model", "prompt": "x", ' + raw + b"}"
    response = await client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert_openai_error(response, 400)
    assert fake_engine.submitted == []


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", b'{"model": "fake-model", "prompt": "a\\ud800b"}', "prompt"),
        ("/v1/completions", b'{"model": "fake-model", "prompt": ["\\udfff"]}', "prompt"),
        ("/v1/completions", b'{"model": "fake-model", "prompt": "ok", "stop": ["\\ud83d"]}', "stop[0]"),
        ("/v1/chat/completions",
         b'{"model": "fake-model", "messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "\\ud800"}]}',
         "messages[1].content"),
    ],
)
async def test_a_lone_surrogate_is_400_naming_the_field(
    client: httpx.AsyncClient, fake_engine: FakeEngine, path: str, body: bytes, param: str
) -> None:
    response = await client.post(path, content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, param=param, code="invalid_unicode")
    assert "surrogate" in error["message"]
    assert fake_engine.submitted == []


async def test_a_surrogate_pair_is_ordinary_text(client: httpx.AsyncClient) -> None:
    body = b'{"model": "fake-model", "prompt": "\\ud83d\\ude00", "max_tokens": 2}'
    response = await client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def small_limit_app(engine: FakeEngine, limit: int) -> FastAPI:
    return build_app(engine, telemetry=RequestTelemetry(), max_request_body_bytes=limit)


async def test_a_body_over_the_limit_is_413_before_it_is_read() -> None:
    engine = FakeEngine()
    app = small_limit_app(engine, 1000)
    chunks_read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"31457280")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert chunks_read == 0  # refused on the declared length, nothing read
    assert b"request_too_large" in sent[1]["body"] and b"1000 bytes" in sent[1]["body"]


async def test_a_chunked_body_over_the_limit_is_413_and_reading_stops() -> None:
    engine = FakeEngine()
    app = small_limit_app(engine, 1000)
    chunks = 0

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        nonlocal chunks
        yield b'{"model": "fake-model", "prompt": "'
        for _ in range(1000):
            chunks += 1
            yield b"y" * 100
        yield b'"}'

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            response = await http.post("/v1/completions", content=body(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413)
    assert engine.submitted == []


async def test_a_body_under_the_limit_is_served() -> None:
    engine = FakeEngine()
    app = small_limit_app(engine, 1000)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            response = await http.post("/v1/completions", json={"model": MODEL, "prompt": "x" * 500, "max_tokens": 2})
    assert response.status_code == 200, response.text


async def test_prompts_are_tokenized_off_the_event_loop(client: httpx.AsyncClient, fake_engine: FakeEngine) -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []
    encode = fake_engine.tokenizer.encode

    def recording_encode(text: str) -> list[int]:
        if len(text) > 1:  # the prompts; the fake engine encodes single generated characters itself
            threads.append(threading.get_ident())
        return encode(text)

    fake_engine.tokenizer.encode = recording_encode  # type: ignore[method-assign]
    assert (await client.post("/v1/completions", json={"model": MODEL, "prompt": "abc", "max_tokens": 1})).status_code == 200
    assert (await client.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "max_tokens": 1})).status_code == 200
    assert len(threads) == 2 and loop_thread not in threads


class ExplodingEngine(FakeEngine):
    """An engine whose generate raises something the protocol does not name (a bug, an overflow)."""

    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        raise OverflowError("int too big to convert")


async def test_an_unexpected_engine_error_is_500_and_still_recorded() -> None:
    exporter = InMemoryLogRecordExporter()
    app = build_app(ExplodingEngine(), telemetry=RequestTelemetry(log_exporter=exporter))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            response = await http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
            metrics = (await http.get("/metrics")).text
    error = assert_openai_error(response, 500)
    assert "OverflowError" in error["message"]
    (record,) = exporter.get_finished_logs()
    assert record.log_record.attributes is not None
    assert record.log_record.attributes["http.response.status_code"] == 500
    assert 'reason="engine_error"' in metrics
