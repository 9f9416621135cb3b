"""Where /control is served: on the main app for a loopback host, else only on a loopback control port."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from dssidecar.api.app import build_app
from dssidecar.api.control import attach_knobs
from dssidecar.engine.async_engine import AsyncLLMEngine
from dssidecar.engine.config import EngineConfig
from fastapi.testclient import TestClient

TOKEN = "attach-token"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> AsyncLLMEngine:
    return AsyncLLMEngine.from_model_path(tiny_model_dir, EngineConfig(device="cpu", kv_cache_blocks=200))


def settings(host: str, control_port: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(host=host, control_port=control_port, control_token=TOKEN, control_token_file=None,
                           model=None, require_accuracy_check=False)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_loopback_host_mounts_control_on_the_main_app(engine: AsyncLLMEngine) -> None:
    app = build_app(engine, manage_engine=False)
    controller = attach_knobs(app, engine, settings("127.0.0.1"))
    client = TestClient(app)
    assert client.get("/control/knobs").status_code == 401
    body = client.get("/control/knobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert body["knobs"]["kv_cache_blocks"]["value"] == 200
    answer = client.put("/control/knobs", headers={"Authorization": f"Bearer {TOKEN}"}, json={"max_batch_size": 7})
    assert answer.status_code == 200 and engine.engine.scheduler.max_batch_size == 7
    assert "dssidecar_oom_events_total" in client.get("/metrics").text
    assert controller is app.state.knob_controller


def test_wide_host_without_control_port_serves_no_control(engine: AsyncLLMEngine) -> None:
    app = build_app(engine, manage_engine=False)
    attach_knobs(app, engine, settings("192.0.2.10"))
    assert TestClient(app).get("/control/knobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_wide_host_with_control_port_serves_control_on_loopback_only(engine: AsyncLLMEngine) -> None:
    app = build_app(engine, manage_engine=False)
    port = free_port()
    attach_knobs(app, engine, settings("192.0.2.10", port))
    server = app.state.control_server
    try:
        assert TestClient(app).get("/control/knobs").status_code == 404
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/control/knobs"
        assert httpx.get(url, timeout=5).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 200
        bound = {sock.getsockname()[0] for s in server.servers for sock in s.sockets}
        assert bound == {"127.0.0.1"}
    finally:
        server.should_exit = True
