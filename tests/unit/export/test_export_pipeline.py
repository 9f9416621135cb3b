"""TelemetryPipeline end to end with the embedded default (NDJSON files through the spool)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from dsagent.export.config import ExportConfig
from dsagent.export.pipeline import TelemetryPipeline
from dsagent.samples import RequestRecord, Sample, make_labels


def read_stream(data_dir: Path, stream: str) -> list[dict[str, Any]]:
    path = data_dir / "export" / f"{stream}.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture()
def telemetry(tmp_path: Path):
    pipeline = TelemetryPipeline(ExportConfig(), tmp_path, {"host.name": "node-1"})
    pipeline.start()
    yield pipeline
    pipeline.shutdown()


def gpu_sample(value: float, gpu: str = "0", name: str = "dsagent_gpu_utilization_ratio", kind: str = "gauge") -> Sample:
    return Sample(name, make_labels({"gpu_index": gpu, "gpu_uuid": f"GPU-{gpu}"}), value, time.time(), kind=kind)


def test_gauges_report_the_latest_value_once_and_omit_stale_series(telemetry: TelemetryPipeline, tmp_path: Path) -> None:
    telemetry.record_samples([gpu_sample(0.1, "0"), gpu_sample(0.7, "0"), gpu_sample(0.3, "1")])
    telemetry.collect_metrics()
    telemetry.record_samples([gpu_sample(0.9, "1")])
    telemetry.collect_metrics()
    telemetry.collect_metrics()  # nothing fresh: nothing exported, never a 0
    assert telemetry.force_flush(5)
    docs = read_stream(tmp_path, "metrics-dsagent.gpu")
    points = [(d["labels"]["gpu_index"], d["value"]) for d in docs]
    assert points == [("0", 0.7), ("1", 0.3), ("1", 0.9)]
    assert docs[0]["metric"] == {"name": "dsagent_gpu_utilization_ratio", "type": "gauge", "unit": "1"}
    assert docs[0]["host"] == {"name": "node-1"}
    assert len({d["_id"] for d in docs}) == 3


def test_counters_are_exported_as_monotonic_totals(telemetry: TelemetryPipeline, tmp_path: Path) -> None:
    telemetry.record_samples([gpu_sample(3, name="dsagent_gpu_xid_errors_total", kind="counter")])
    telemetry.collect_metrics()
    assert telemetry.force_flush(5)
    (doc,) = read_stream(tmp_path, "metrics-dsagent.gpu")
    assert doc["metric"]["type"] == "counter" and doc["value"] == 3


def test_requests_become_documents_and_genai_histograms(telemetry: TelemetryPipeline, tmp_path: Path) -> None:
    now = time.time()
    telemetry.record_requests([
        RequestRecord("r1", now, model="demo", prompt_length=12, tokens_generated=30, generation_time_seconds=0.7,
                      time_to_first_token_seconds=0.05, time_per_output_token_seconds=0.02, finish_reason="stop",
                      status_code=200, knobs={"max_batch_size": 8},
                      attributes={"prompt": "very secret", "completion": "answer", "tenant": "t1"}),
        RequestRecord("r2", now, model="demo", generation_time_seconds=3.0),
    ])
    assert telemetry.force_flush(5)
    requests = read_stream(tmp_path, "logs-dsagent.requests")
    assert [d["request_id"] for d in requests] == ["r1", "r2"]
    first = requests[0]
    for key in ("prompt_length", "tokens_generated", "generation_time_seconds", "time_to_first_token_seconds",
                "finish_reason", "model", "knobs"):
        assert key in first
    assert "attributes" not in first  # text fields dropped, and `tenant` is not on the default allowlist
    assert "prompt_length" not in requests[1]  # not measured: omitted, not 0
    histograms = {d["metric"]["name"]: d for d in read_stream(tmp_path, "metrics-dsagent.requests")
                  if d["labels"].get("gen_ai.token.type") in (None, "output")}
    duration = histograms["gen_ai.server.request.duration"]["histogram"]
    assert {0.1, 0.5, 1.0, 2.0, 5.0} <= set(duration["bounds"]) and min(duration["bounds"]) < 0.1
    assert duration["count"] == 2 and duration["sum"] == pytest.approx(3.7)
    assert sum(duration["counts"]) == 2
    assert set(histograms) == {"gen_ai.server.request.duration", "gen_ai.server.time_to_first_token",
                               "gen_ai.server.time_per_output_token", "gen_ai.client.token.usage"}


def test_histograms_are_delta_so_a_quiet_interval_exports_nothing(telemetry: TelemetryPipeline, tmp_path: Path) -> None:
    telemetry.record_requests([RequestRecord("r1", time.time(), generation_time_seconds=0.2)])
    telemetry.collect_metrics()
    telemetry.collect_metrics()
    assert telemetry.force_flush(5)
    assert len(read_stream(tmp_path, "metrics-dsagent.requests")) == 1


def test_actions_are_documents_with_their_timestamp(telemetry: TelemetryPipeline, tmp_path: Path) -> None:
    telemetry.record_action({"timestamp": "2026-11-23T01:02:03.5Z", "rule": "HighLatency", "knob": "max_batch_size",
                             "old": 16, "new": 8, "outcome": "rolled_back", "reason": "p99 got worse"})
    assert telemetry.force_flush(5)
    (action,) = read_stream(tmp_path, "logs-dsagent.actions")
    assert action["@timestamp"] == "2026-11-23T01:02:03.500000Z"
    assert action["outcome"] == "rolled_back" and action["new"] == 8


def test_bad_action_timestamp_names_the_value(telemetry: TelemetryPipeline) -> None:
    with pytest.raises(ValueError, match="'yesterday'"):
        telemetry.record_action({"timestamp": "yesterday", "rule": "r"})


def test_records_are_in_the_spool_when_record_returns(tmp_path: Path) -> None:
    pipeline = TelemetryPipeline(ExportConfig(), tmp_path, {})  # not started: nothing drains
    pipeline.record_requests([RequestRecord(f"r{i}", time.time()) for i in range(5)])
    assert pipeline.stats()["file.spool_depth_documents"] == 5
    pipeline.shutdown()


def test_stats_and_idempotent_shutdown(tmp_path: Path) -> None:
    pipeline = TelemetryPipeline(ExportConfig(), tmp_path, {})
    pipeline.start()
    pipeline.record_requests([RequestRecord("r1", time.time())])
    assert pipeline.force_flush(5)
    stats = pipeline.stats()
    assert stats["file.sent_documents"] == 1 and stats["spool_depth_documents"] == 0
    pipeline.shutdown()
    pipeline.shutdown()
    from dsagent.export.pipeline import ExportUnavailable

    with pytest.raises(ExportUnavailable):  # refused (the receiver answers 503), never accepted and dropped
        pipeline.record_requests([RequestRecord("r2", time.time())])


def test_undelivered_documents_wait_in_the_spool_for_the_next_start(tmp_path: Path) -> None:
    first = TelemetryPipeline(ExportConfig(), tmp_path, {})
    first.record_requests([RequestRecord("r1", time.time())])
    first.shutdown()  # never started: nothing was delivered
    second = TelemetryPipeline(ExportConfig(), tmp_path, {})
    second.start()
    assert second.force_flush(5)
    second.shutdown()
    assert [d["request_id"] for d in read_stream(tmp_path, "logs-dsagent.requests")] == ["r1"]


def test_a_sample_with_an_unknown_kind_is_rejected(telemetry: TelemetryPipeline) -> None:
    with pytest.raises(ValueError, match="'histogram'.*'gauge' or 'counter'"):
        telemetry.record_samples([gpu_sample(1.0, name="dsagent_x", kind="histogram")])


def test_without_periodic_collection_only_explicit_collects_export(tmp_path: Path) -> None:
    config = ExportConfig.model_validate({"metric_export_interval_seconds": 0.05})
    pipeline = TelemetryPipeline(config, tmp_path, {})
    pipeline.start(collect_periodically=False)
    try:
        pipeline.record_samples([gpu_sample(0.5)])
        time.sleep(0.3)  # several ticker periods: nothing may be collected by itself
        assert pipeline.stats()["file.sent_documents"] == 0
        pipeline.collect_metrics()
        assert pipeline.force_flush(5)
        assert len(read_stream(tmp_path, "metrics-dsagent.gpu")) == 1
    finally:
        pipeline.shutdown()


def test_the_ticker_collects_by_itself(tmp_path: Path) -> None:
    pipeline = TelemetryPipeline(ExportConfig.model_validate({"metric_export_interval_seconds": 0.05}), tmp_path, {})
    pipeline.start()
    try:
        pipeline.record_samples([gpu_sample(0.5)])
        deadline = time.monotonic() + 10
        while not read_stream(tmp_path, "metrics-dsagent.gpu") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(read_stream(tmp_path, "metrics-dsagent.gpu")) == 1
    finally:
        pipeline.shutdown()
