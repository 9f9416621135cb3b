"""OTLP/HTTP: SDK batches are spooled as protobuf and POSTed; 503 retried, 400 dead-lettered."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from dsagent.export.config import ExportConfig, OtlpExportConfig
from dsagent.export.otlp import OtlpDestination
from dsagent.export.pipeline import TelemetryPipeline
from dsagent.samples import RequestRecord, Sample, make_labels
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest


class Collector:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[str, bytes, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.received.append((request.url.path, request.content, request.headers["authorization"]))
        return httpx.Response(status, text="" if status == 200 else "bad request")


def pipeline(tmp_path: Path, collector: Collector) -> TelemetryPipeline:
    config = ExportConfig.model_validate({
        "file": {"enabled": False},
        "spool": {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.02},
    })
    destination = OtlpDestination(
        OtlpExportConfig.model_validate({"endpoint": "http://collector:4318", "headers": {"authorization": "Bearer t"}}),
        transport=httpx.MockTransport(collector),
    )
    return TelemetryPipeline(config, tmp_path, {"host.name": "node-1"}, destinations=[destination])


def test_metrics_and_logs_arrive_as_valid_otlp_protobuf_after_a_503(tmp_path: Path) -> None:
    collector = Collector([503, 503])
    telemetry = pipeline(tmp_path, collector)
    telemetry.start()
    try:
        telemetry.record_samples([Sample("dsagent_gpu_power_watts", make_labels({"gpu_index": "0"}), 250.0, time.time())])
        telemetry.record_requests([RequestRecord("r1", time.time(), model="m", generation_time_seconds=0.2,
                                                 attributes={"prompt": "secret"})])
        assert telemetry.force_flush(10)
        assert telemetry.stats()["otlp.retries"] >= 1
    finally:
        telemetry.shutdown()
    paths = {path for path, _, _ in collector.received}
    assert paths == {"/v1/metrics", "/v1/logs"}
    assert all(auth == "Bearer t" for _, _, auth in collector.received)
    metrics = ExportMetricsServiceRequest()
    for path, body, _ in collector.received:
        if path == "/v1/metrics":
            metrics.MergeFromString(body)
    names = {m.name for rm in metrics.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {"dsagent_gpu_power_watts", "gen_ai.server.request.duration"} <= names
    logs = ExportLogsServiceRequest()
    logs.MergeFromString(next(body for path, body, _ in collector.received if path == "/v1/logs"))
    record = logs.resource_logs[0].scope_logs[0].log_records[0]
    body_keys = {kv.key for kv in record.body.kvlist_value.values}
    assert "request_id" in body_keys
    assert b"secret" not in collector.received[0][1] + collector.received[-1][1]


def test_a_400_is_dead_lettered_with_the_reason(tmp_path: Path) -> None:
    collector = Collector([400])
    telemetry = pipeline(tmp_path, collector)
    telemetry.start()
    try:
        telemetry.record_action({"timestamp": time.time(), "rule": "r", "knob": "k", "old": 1, "new": 2,
                                 "outcome": "applied", "reason": "test"})
        assert telemetry.force_flush(10)
        assert telemetry.stats()["otlp.dead_lettered_documents"] == 1
    finally:
        telemetry.shutdown()
    dead = (tmp_path / "dead-letter" / "otlp.ndjson").read_text()
    assert "/v1/logs answered 400" in dead and "payload_base64" in dead
