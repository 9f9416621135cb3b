"""The panels show something: the agent runs (in-process, a vLLM-style fake engine with knob metrics, the
recorded two-GPU NVML trace, OTLP request records including failures, a few decisions) and ships into the
fake Elasticsearch; then every value column of every panel, with its filter and the fields its chart
buckets on, selects at least one document in the panel's data view, and the decision log's columns exist.

The queries are the panels' own: `metric.name : "x"` filters become `term` queries, `status_code >= 400`
a `range`, every field a column reads an `exists`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from dsagent.app import Agent
from dsagent.config import load_config
from dsagent.dashboards import catalog

from tests.conftest import REPO_ROOT, free_port
from tests.dashboard_queries import count, lens_panels, metric_names, value_columns
from tests.fakes.elasticsearch import FakeElasticsearch

FAKES = REPO_ROOT / "tests" / "fakes"
TRACE = REPO_ROOT / "tests" / "fixtures" / "nvml" / "two_gpu_trace.jsonl"
KNOB_METRICS = ('# TYPE dssidecar_knob_value gauge\n'
                'dssidecar_knob_value{knob="max_batch_size"} 8.0\n'
                'dssidecar_knob_value{knob="kv_cache_blocks"} 512.0\n')


def otlp_request_logs(count: int) -> dict[str, Any]:
    def attr(key: str, value: object) -> dict[str, Any]:
        if isinstance(value, str):
            return {"key": key, "value": {"stringValue": value}}
        if isinstance(value, int):
            return {"key": key, "value": {"intValue": str(value)}}
        return {"key": key, "value": {"doubleValue": value}}

    records = [{
        "timeUnixNano": str(time.time_ns()),
        "attributes": [attr("request_id", f"dash-{i}"), attr("gen_ai.request.model", "demo-model"),
                       attr("prompt_length", 10 + 7 * i), attr("tokens_generated", 4 + i),
                       attr("generation_time", 0.2 + i / 20), attr("time_to_first_token", 0.02 + i / 1000),
                       attr("finish_reason", "length" if i % 3 else "stop"),
                       attr("http.response.status_code", 500 if i % 5 == 0 else 200)],
    } for i in range(count)]
    return {"resourceLogs": [{"scopeLogs": [{"logRecords": records}]}]}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeElasticsearch]:
    cluster = FakeElasticsearch().start()
    engine_port = free_port()
    engine = (f"import sys; sys.path.insert(0, {str(FAKES)!r}); import fake_engine; "
              f"fake_engine.METRICS += {KNOB_METRICS!r}; sys.exit(fake_engine.main(['--port', '{engine_port}']))")
    config = load_config(None, environ={}, overrides={
        "data_dir": str(tmp_path_factory.mktemp("dash-data")),
        "engine.kind": "vllm",
        "engine.port": engine_port,
        "engine.command": [sys.executable, "-c", engine],
        "supervisor.readiness_poll_seconds": 0.05,
        "supervisor.drain_grace_seconds": 2,
        "sources.gpu.backend": "fake",
        "sources.gpu.fake_trace": str(TRACE),
        "server.port": 0,
        "intervals.collect_seconds": 0.25,
        "export.metric_export_interval_seconds": 0.5,
        "export.file.enabled": False,
        "export.elasticsearch.url": cluster.url,
        "export.spool.retry_initial_seconds": 0.1,
        "export.spool.retry_max_seconds": 0.5,
    })
    agent = Agent(config)
    agent.start()
    try:
        assert agent.supervisor is not None and agent.supervisor.wait_ready(20)
        assert agent.api is not None
        assert agent.receiver is not None
        httpx.post(agent.receiver.endpoint + "/v1/logs", json=otlp_request_logs(20), timeout=10,
                   headers=agent.receiver_headers()).raise_for_status()
        # decisions shaped like dsagent.actions.guard.audit_event: knob changes and scale events
        for index, outcome in enumerate(("applied", "skipped", "rolled_back")):
            agent.record_action({"decision_id": f"d{index}", "rule": "HighLatency", "action": "set_knob",
                                 "target": "engine.max_batch_size", "knob": "max_batch_size", "old": "8",
                                 "new": str(16 + index), "outcome": outcome, "dry_run": False, "source": "rule",
                                 "reason": "p99 latency above the SLO for 1m"})
            agent.record_action({"decision_id": f"s{index}", "rule": "QueueGrowing", "action": "scale",
                                 "target": "deployment/dsagent-inference", "knob": "replicas", "old": "4",
                                 "new": str(5 + index), "outcome": outcome, "dry_run": index == 1,
                                 "source": "rule", "reason": "requests waiting above 10 for 2m"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _all_metrics_arrived(cluster):
            time.sleep(0.5)
        time.sleep(1.0)  # one more export round so every series has several points
        yield cluster
    finally:
        agent.stop()
        cluster.stop()


def _all_metrics_arrived(cluster: FakeElasticsearch) -> bool:
    return all(count(cluster.url, "metrics-dsagent.*", {"term": {"metric.name": name}}) > 0
               for name in metric_names()) and \
        count(cluster.url, "logs-dsagent.requests-*", None) >= 20 and \
        count(cluster.url, "logs-dsagent.actions-*", None) >= 6


PANELS = lens_panels()


@pytest.mark.parametrize("panel", PANELS, ids=[panel["id"] for panel in PANELS])
def test_every_value_column_of_the_panel_selects_documents(shipped: FakeElasticsearch, panel: dict[str, Any]) -> None:
    columns = value_columns(panel)
    assert columns
    for layer, column, query in columns:
        assert count(shipped.url, layer["pattern"], query) > 0, \
            f"{panel['id']} column {column['label']!r} has no documents: {query}"


def test_decision_log_columns_have_documents(shipped: FakeElasticsearch) -> None:
    for column in catalog.DECISION_COLUMNS:
        assert count(shipped.url, "logs-dsagent.actions-*", {"exists": {"field": column}}) >= 6, column
