"""Fixtures for the API unit tests: a FakeEngine, an app around it and an httpx client on ASGI."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).parent))

from api_fake_engine import FakeEngine  # noqa: E402
from dssidecar.api.app import build_app  # noqa: E402
from dssidecar.api.request_telemetry import RequestTelemetry  # noqa: E402


@pytest.fixture()
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def log_exporter() -> InMemoryLogRecordExporter:
    return InMemoryLogRecordExporter()


@pytest.fixture()
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture()
def telemetry(log_exporter: InMemoryLogRecordExporter, span_exporter: InMemorySpanExporter) -> RequestTelemetry:
    return RequestTelemetry(log_exporter=log_exporter, span_exporter=span_exporter)


@pytest.fixture()
def app(fake_engine: FakeEngine, telemetry: RequestTelemetry) -> FastAPI:
    return build_app(fake_engine, telemetry=telemetry, shutdown_grace_seconds=2.0)


@pytest.fixture()
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar.test") as http:
            yield http
