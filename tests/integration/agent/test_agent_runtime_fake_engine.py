"""The whole agent runtime in-process against a fake engine process: no torch, seconds to run.

Proves the wiring: supervisor -> ready; sources (8 simulated GPUs, host, engine scrape) -> store ->
/metrics and /api/status; OTLP request logs POSTed to the agent's receiver -> SLO signals and NDJSON request
documents; stop drains the engine and flushes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pytest
from dsagent.app import Agent
from dsagent.config import load_config
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port

FAKE_ENGINE = Path(__file__).resolve().parents[2] / "fakes" / "fake_engine.py"


def otlp_json_logs(request_ids: list[str]) -> dict:
    def attr(key: str, value: object) -> dict:
        if isinstance(value, str):
            return {"key": key, "value": {"stringValue": value}}
        if isinstance(value, int):
            return {"key": key, "value": {"intValue": str(value)}}
        return {"key": key, "value": {"doubleValue": value}}

    records = [{
        "timeUnixNano": str(time.time_ns()),
        "attributes": [attr("request_id", rid), attr("gen_ai.request.model", "demo"), attr("prompt_length", 12),
                       attr("tokens_generated", 8), attr("generation_time", 0.25 + i / 100),
                       attr("time_to_first_token", 0.02), attr("gen_ai.response.finish_reasons", "stop")],
    } for i, rid in enumerate(request_ids)]
    return {"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}


@pytest.fixture()
def agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine_port = free_port()
    config = load_config(None, environ={}, overrides={
        "data_dir": str(tmp_path),
        "engine.kind": "vllm",
        "engine.port": engine_port,
        "engine.command": [sys.executable, str(FAKE_ENGINE), "--port", str(engine_port)],
        "supervisor.readiness_poll_seconds": 0.05,
        "supervisor.drain_grace_seconds": 2,
        "sources.gpu.backend": "fake",
        "sources.gpu.fake_gpu_count": 8,
        "server.port": 0,
        "intervals.collect_seconds": 0.2,
        "export.metric_export_interval_seconds": 0.5,
    })
    running = Agent(config)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def wait_for(predicate, timeout_seconds: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_agent_serves_metrics_status_and_receives_request_records(agent: Agent, tmp_path: Path) -> None:
    assert agent.supervisor is not None and agent.supervisor.wait_ready(15)
    assert agent.api is not None
    base = agent.api.url
    with httpx.Client(base_url=base, timeout=5) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert agent.receiver is not None
        receiver = agent.receiver.endpoint + "/v1/logs"  # its own listener, with the token the engine got
        response = client.post(receiver, json=otlp_json_logs([f"req-{i}" for i in range(5)]),
                               headers=agent.receiver_headers())
        assert response.status_code == 200, response.text
        assert client.post(receiver, json=otlp_json_logs(["forged"])).status_code == 401  # no token
        # the same records again (e.g. a retrying exporter) are not counted twice
        assert client.post(receiver, json=otlp_json_logs(["req-0"]),
                           headers=agent.receiver_headers()).status_code == 200

        def engine_scraped() -> bool:
            return agent.store.latest("dsagent_engine_requests_running") != [] and len(
                agent.store.latest("dsagent_gpu_utilization_ratio")) == 8

        assert wait_for(engine_scraped)
        assert wait_for(lambda: agent.store.latest("inference_latency_p99_seconds") != [])

        text = client.get("/metrics").text
        families = {family.name: family for family in text_string_to_metric_families(text)}
        assert families["inference_qps"].samples[0].value > 0
        assert families["inference_latency_seconds"].type == "histogram"
        count = [s for s in families["inference_latency_seconds"].samples if s.name.endswith("_count")]
        assert count[0].value == 5
        assert families["dsagent_engine_ready"].samples[0].value == 1
        assert "dsagent_engine_restarts" in families  # counter family name drops _total
        assert len({s.labels["gpu_index"] for s in families["dsagent_gpu_utilization_ratio"].samples}) == 8

        status = client.get("/api/status").json()
    assert status["engine"]["state"] == "ready"
    assert status["engine"]["requests_running"] == 2
    assert status["engine"]["kv_cache_usage_ratio"] == 0.25
    assert len(status["gpus"]["devices"]) == 8
    assert status["slo"]["requests_total"] == 5
    assert status["slo"]["latency_p50_seconds"] == pytest.approx(0.27)
    assert status["agent"]["requests_received_total"] == 5
    assert json.loads((tmp_path / "agent.json").read_text())["url"] == base


def test_stop_drains_engine_and_writes_request_documents(agent: Agent, tmp_path: Path) -> None:
    assert agent.supervisor is not None and agent.supervisor.wait_ready(15)
    pid = agent.supervisor.pid()
    assert agent.api is not None
    assert agent.receiver is not None
    httpx.post(agent.receiver.endpoint + "/v1/logs", json=otlp_json_logs(["only-one"]), timeout=5,
               headers=agent.receiver_headers()).raise_for_status()
    agent.stop()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    exported = "\n".join(p.read_text() for p in (tmp_path / "export").rglob("*") if p.is_file())
    assert "only-one" in exported
    assert not (tmp_path / "agent.json").exists()


def test_every_metric_the_agent_derives_is_documented(agent: Agent) -> None:
    from dsagent.agent_metrics import AGENT_METRICS_BY_NAME, family_name
    from dsagent.sources.metric_metadata import METRICS_BY_NAME as SOURCE_METRICS

    assert agent.supervisor is not None and agent.supervisor.wait_ready(15)
    assert agent.api is not None
    assert agent.receiver is not None
    httpx.post(agent.receiver.endpoint + "/v1/logs", json=otlp_json_logs(["doc-1"]), timeout=5,
               headers=agent.receiver_headers()).raise_for_status()
    samples = agent.collect_once()
    source_names = {s.name for source in agent.sources for s in source.collect()}
    own = {family_name(s.name) for s in samples} - source_names - set(SOURCE_METRICS)
    undocumented = sorted(name for name in own if name not in AGENT_METRICS_BY_NAME)
    assert not undocumented, f"add these to dsagent.agent_metrics.AGENT_METRICS: {undocumented}"
    assert {"inference_qps", "inference_latency_seconds", "dsagent_engine_restarts_total"} <= own
