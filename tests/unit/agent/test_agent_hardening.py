"""Issue 12 items 7, 8, 10 and 15 (unit level): bounded OTLP bodies, a token on the receiver, no secret in
what is shown, duplicate config keys named, the pipeline without a parked timer thread."""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from pathlib import Path

import pytest
from dsagent.config import (
    ConfigError,
    effective_config_yaml,
    load_config,
    mask_arguments,
    strip_url_credentials,
)
from dsagent.samples import RequestRecord
from dsagent.sources.otlp_receiver import build_otlp_router
from fastapi import FastAPI
from fastapi.testclient import TestClient

JSON = {"Content-Type": "application/json"}
LOGS = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": [
    {"key": "request_id", "value": {"stringValue": "r1"}}]}]}]}]}


def client(limit: int = 1024, token: str | None = None) -> tuple[TestClient, list[RequestRecord]]:
    received: list[RequestRecord] = []
    app = FastAPI()
    app.include_router(build_otlp_router(received.extend, limit, bearer_token=token))
    return TestClient(app), received


# ---- 7. bodies -----------------------------------------------------------------------------------------


def test_declared_content_length_over_the_limit_is_413_before_reading() -> None:
    http, received = client(limit=100)
    response = http.post("/v1/logs", content=b"x" * 50, headers={**JSON, "Content-Length": "1000000"})
    assert response.status_code == 413 and not received


def test_gzip_bomb_stops_at_the_limit_with_413() -> None:
    http, _ = client(limit=64 * 1024)
    bomb = gzip.compress(b"{" + b" " * (50 * 1024 * 1024) + b"}")  # ~50 KB that inflates to 50 MiB
    response = http.post("/v1/logs", content=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    assert response.status_code == 413 and "decompressed" in response.text


def test_gzip_and_deflate_within_the_limit_still_decode() -> None:
    http, received = client(limit=64 * 1024)
    body = json.dumps(LOGS).encode()
    assert http.post("/v1/logs", content=gzip.compress(body), headers={**JSON, "Content-Encoding": "gzip"}
                     ).status_code == 200
    assert http.post("/v1/logs", content=zlib.compress(body), headers={**JSON, "Content-Encoding": "deflate"}
                     ).status_code == 200
    assert len(received) == 1  # the second is the same request id


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"resourceLogs": [' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"]}",
    b"\x1f\x8b truncated",
])
def test_malformed_or_deeply_nested_bodies_are_400_not_500(body: bytes) -> None:
    http, _ = client(limit=1024 * 1024)
    headers = {**JSON, "Content-Encoding": "gzip"} if body.startswith(b"\x1f\x8b") else JSON
    assert http.post("/v1/logs", content=body, headers=headers).status_code == 400


def test_duplicate_config_key_names_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("engine:\n  port: 8000\n  host: 127.0.0.1\n  port: 8001\n")
    with pytest.raises(ConfigError, match=r"agent.yaml:4: duplicate key 'port' \(first given at line 2\)"):
        load_config(path, environ={})


# ---- 8. receiver token ---------------------------------------------------------------------------------


def test_receiver_with_a_token_refuses_requests_without_it() -> None:
    http, received = client(token="s3cret")
    assert http.post("/v1/logs", json=LOGS).status_code == 401
    assert http.post("/v1/logs", json=LOGS, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert not received
    assert http.post("/v1/logs", json=LOGS, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert len(received) == 1


def test_receiver_config_defaults_to_its_own_loopback_port_and_masks_the_token() -> None:
    config = load_config(None, environ={}, overrides={"sources.otlp_receiver.token": "abc123"})
    assert config.sources.otlp_receiver.host == "127.0.0.1" and config.sources.otlp_receiver.port == 0
    assert "abc123" not in effective_config_yaml(config)


# ---- 10. secrets -------------------------------------------------------------------------------------


def test_config_show_masks_environment_secret_flags_and_url_credentials() -> None:
    config = load_config(None, environ={}, overrides={
        "engine.kind": "vllm",
        "engine.command": ["vllm", "serve", "m", "--api-key", "sk-live-1", "--hf-token=hf_abc",
                           "--download-dir", "https://user:pw@mirror/x"],
        "engine.environment": {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI", "HF_HOME": "/data"},
        "export.elasticsearch.url": "https://elastic:hunter2@es:9200",
    })
    shown = effective_config_yaml(config)
    for secret in ("sk-live-1", "hf_abc", "wJalrXUtnFEMI", "hunter2", "user:pw"):
        assert secret not in shown
    assert "--api-key" in shown and "https://elastic:***@es:9200" in shown


def test_mask_arguments_keeps_ordinary_flags() -> None:
    assert mask_arguments(["serve", "--port", "8000", "--api-key", "k", "--token=t"]) == [
        "serve", "--port", "8000", "--api-key", "***", "--token=***"]
    assert strip_url_credentials("to https://elastic:hunter2@es:9200 and http://h:1") == \
        "to https://elastic:***@es:9200 and http://h:1"
    assert strip_url_credentials("https://ghp_token@host/x") == "https://***@host/x"


def test_sidecar_500_returns_a_request_id_not_the_exception_text() -> None:
    from dssidecar.api.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("prompt was: my password is hunter2")

    response = TestClient(app, raise_server_exceptions=False).get("/boom", headers={"X-Request-Id": "req-42"})
    assert response.status_code == 500
    assert "hunter2" not in response.text and "req-42" in response.json()["error"]["message"]


# ---- 15. no parked timer thread ----------------------------------------------------------------------


def test_agent_pipeline_has_no_collect_thread(tmp_path: Path) -> None:
    from dsagent.app import Agent

    config = load_config(None, environ={}, overrides={
        "data_dir": str(tmp_path), "engine.kind": "external", "engine.url": "http://127.0.0.1:9",
        "server.port": 0, "sources.gpu.backend": "off"})
    agent = Agent(config)
    agent.start()
    try:
        assert "dsagent-export-collect" not in {thread.name for thread in threading.enumerate()}
    finally:
        agent.stop()


def test_api_beyond_loopback_needs_the_token_for_status_but_not_for_metrics(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import httpx
    from dsagent.app import Agent
    from typer.testing import CliRunner

    config = load_config(None, environ={}, overrides={
        "data_dir": str(tmp_path), "engine.kind": "external", "engine.url": "http://127.0.0.1:9",
        "server.host": "0.0.0.0", "server.port": 0, "sources.gpu.backend": "off"})
    agent = Agent(config)
    with caplog.at_level("WARNING"):
        agent.start()
    try:
        assert agent.api is not None
        local = f"http://127.0.0.1:{agent.api.port}"
        assert httpx.get(local + "/metrics", timeout=5).status_code == 200
        assert httpx.get(local + "/api/status", timeout=5).status_code == 401
        pointer = json.loads((tmp_path / "agent.json").read_text())
        assert (tmp_path / "agent.json").stat().st_mode & 0o077 == 0  # owner-only: it holds the token
        answer = httpx.get(local + "/api/status", headers={"Authorization": f"Bearer {pointer['token']}"}, timeout=5)
        assert answer.status_code == 200
        assert "reachable from the network" in caplog.text
        from dsagent.cli import app

        shown = CliRunner().invoke(app, ["status", "--json", "--data-dir", str(tmp_path), "--url", local])
        assert shown.exit_code == 0, shown.output
    finally:
        agent.stop()
