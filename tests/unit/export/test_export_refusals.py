"""Issue 12 items 1-3: an auth or config refusal never empties the spool into the dead-letter file, a
document is dead-lettered only for its own mapping error, a stuck head-of-line document moves aside, and
a spool write that fails is refused to the sender (never acknowledged and then lost)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from dsagent.export.config import ElasticsearchConfig, ExportConfig, OtlpExportConfig
from dsagent.export.destination import DeadLetterFile
from dsagent.export.drainer import Backoff, SpoolDrainer
from dsagent.export.elasticsearch import ElasticsearchDestination
from dsagent.export.otlp import OtlpDestination
from dsagent.export.pipeline import ExportUnavailable, TelemetryPipeline
from dsagent.export.spool import ACTION, REQUEST, Spool, SpoolRecord
from dsagent.samples import RequestRecord

from tests.fakes.elasticsearch import FakeElasticsearch

REQUESTS = "logs-dsagent.requests-default"
ACTIONS = "logs-dsagent.actions-default"


def request_record(n: int, stream: str = REQUESTS, kind: str = REQUEST) -> SpoolRecord:
    doc = {"@timestamp": "2026-11-23T00:00:00.000000Z", "request_id": f"r{n}", "prompt_length": n}
    return SpoolRecord(kind, stream, f"id-{n}", json.dumps(doc).encode())


def es_drainer(fake: FakeElasticsearch, tmp_path: Path, records: list[SpoolRecord], batch: int = 100,
               **overrides: object) -> SpoolDrainer:
    spool = Spool(tmp_path / "es.sqlite3", max_bytes=10**9)
    spool.append(records)
    destination = ElasticsearchDestination(ElasticsearchConfig.model_validate({"url": fake.url, **overrides}))
    return SpoolDrainer(destination, spool, DeadLetterFile(tmp_path / "dead.ndjson"), batch, Backoff(0.001, 0.002),
                        move_aside_after_attempts=3)


# ---- 1. OTLP -------------------------------------------------------------------------------------------


class Collector:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.bodies.append(len(request.content))
        return httpx.Response(status, text="" if status == 200 else "refused")


def otlp_pipeline(tmp_path: Path, collector: Collector) -> TelemetryPipeline:
    config = ExportConfig.model_validate({"file": {"enabled": False},
                                          "spool": {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.02}})
    destination = OtlpDestination(OtlpExportConfig.model_validate({"endpoint": "http://collector:4318"}),
                                  transport=httpx.MockTransport(collector))
    return TelemetryPipeline(config, tmp_path, {"host.name": "node-1"}, destinations=[destination])


@pytest.mark.parametrize("status", [401, 403, 404])
def test_otlp_auth_and_not_found_are_retried_and_surfaced_never_dead_lettered(tmp_path: Path, status: int) -> None:
    collector = Collector([status] * 5)
    telemetry = otlp_pipeline(tmp_path, collector)
    telemetry.start()
    try:
        telemetry.record_requests([RequestRecord(f"r{i}", time.time()) for i in range(20)])
        deadline = time.monotonic() + 5
        while telemetry.stats()["otlp.refused_retries"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert telemetry.stats()["otlp.refused_retries"] >= 2
        assert telemetry.force_flush(10)  # the collector came back: everything arrives
        deadline = time.monotonic() + 5  # the counter follows the acknowledgement by a moment
        while telemetry.stats()["otlp.sent_documents"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = telemetry.stats()
        assert stats["otlp.dead_lettered_documents"] == 0 and stats["otlp.sent_documents"] >= 1
        assert telemetry.destination_status()["otlp"]["state"] == "ok"
    finally:
        telemetry.shutdown()
    assert not (tmp_path / "dead-letter" / "otlp.ndjson").exists()


def test_otlp_refusal_shows_in_the_destination_status(tmp_path: Path) -> None:
    telemetry = otlp_pipeline(tmp_path, Collector([401] * 1000))
    telemetry.start()
    try:
        telemetry.record_requests([RequestRecord("r1", time.time())])
        deadline = time.monotonic() + 5
        while telemetry.destination_status()["otlp"]["state"] != "refused" and time.monotonic() < deadline:
            time.sleep(0.01)
        status = telemetry.destination_status()["otlp"]
        assert status["state"] == "refused" and "401" in status["last_error"]
    finally:
        telemetry.shutdown(drain_timeout_seconds=0.1)


def test_otlp_413_splits_the_post_and_delivers_everything(tmp_path: Path) -> None:
    collector = Collector([413])
    destination = OtlpDestination(OtlpExportConfig.model_validate({"endpoint": "http://collector:4318"}),
                                  transport=httpx.MockTransport(collector))
    spool = Spool(tmp_path / "otlp.sqlite3", 10**9)
    spool.append([SpoolRecord("log", "/v1/logs", f"p{i}", b"\x0a\x00") for i in range(4)])
    outcome = destination.send(spool.peek(10))
    assert len(outcome.acked) == 4 and not outcome.dead and not outcome.retry
    assert collector.bodies == [4, 4]  # two halves after the 413


# ---- 2. Elasticsearch ----------------------------------------------------------------------------------


def test_es_per_item_403_is_retried_not_dead_lettered(fake_es: FakeElasticsearch, tmp_path: Path) -> None:
    drainer = es_drainer(fake_es, tmp_path, [request_record(i) for i in range(50)])
    fake_es.set_faults(item_status=403, items=50)
    drainer.drain_once()
    assert drainer.dead_lettered_documents == 0 and drainer.spool.depth_documents == 50
    assert drainer.state == "refused" and "security_exception" in drainer.last_error
    assert drainer.drain_once()  # the key got its rights back
    assert fake_es.count(REQUESTS) == 50 and drainer.dead_lettered_documents == 0


@pytest.mark.parametrize("status", [400, 401, 403])
def test_es_whole_request_refusal_is_one_retried_call_not_a_bisection(
        fake_es: FakeElasticsearch, tmp_path: Path, status: int) -> None:
    drainer = es_drainer(fake_es, tmp_path, [request_record(i) for i in range(50)])
    drainer.destination.prepare()
    fake_es.set_faults(status=status, requests=1)
    before = fake_es.requests_seen.get("/_bulk", 0)
    drainer.drain_once()
    assert fake_es.requests_seen.get("/_bulk", 0) - before == 1
    assert drainer.dead_lettered_documents == 0 and drainer.spool.depth_documents == 50
    assert drainer.refused_retries == 1
    assert drainer.drain_once() and fake_es.count(REQUESTS) == 50


def test_es_mapping_error_on_every_item_is_retried_not_dead_lettered(
        fake_es: FakeElasticsearch, tmp_path: Path) -> None:
    drainer = es_drainer(fake_es, tmp_path, [request_record(i) for i in range(5)])
    fake_es.set_faults(item_status=400, items=5)  # a broken template: every item fails
    drainer.drain_once()
    assert drainer.dead_lettered_documents == 0 and drainer.spool.depth_documents == 5


def test_es_missing_stream_moves_aside_and_does_not_block_later_documents(
        fake_es: FakeElasticsearch, tmp_path: Path) -> None:
    """auto_create_index: false for the actions stream: its documents fail 404 forever at the head."""
    records = [request_record(i, ACTIONS, ACTION) for i in range(3)] + [request_record(i) for i in range(3, 10)]
    drainer = es_drainer(fake_es, tmp_path, records, batch=4, install_templates=False)
    fake_es.set_faults(missing_streams=(ACTIONS,))
    for _ in range(12):
        drainer.drain_once()
    assert fake_es.count(REQUESTS) == 7  # everything behind the stuck documents arrived
    assert drainer.moved_aside_documents >= 3 and drainer.dead_lettered_documents == 0
    assert drainer.spool.depth_documents == 3  # the stuck ones are still kept, at the tail
    fake_es.clear_faults()  # the operator creates the data stream
    for _ in range(3):
        drainer.drain_once()
    assert fake_es.count(ACTIONS) == 3 and drainer.spool.depth_documents == 0


def test_es_template_install_403_still_sends_and_says_why(fake_es: FakeElasticsearch, tmp_path: Path) -> None:
    fake_es.set_faults(status=403, paths=("/_index_template",))
    drainer = es_drainer(fake_es, tmp_path, [request_record(i) for i in range(5)])
    assert drainer.drain_once()
    assert fake_es.count(REQUESTS) == 5
    assert "not installed" in drainer.destination.templates_status  # type: ignore[attr-defined]
    assert "403" in drainer.destination.templates_status  # type: ignore[attr-defined]


# ---- 3. a failed spool write is refused, memory bounded --------------------------------------------


def file_pipeline(tmp_path: Path) -> TelemetryPipeline:
    config = ExportConfig.model_validate({"file": {"directory": str(tmp_path / "out")}})
    return TelemetryPipeline(config, tmp_path, {"host.name": "node-1"})


def fill_disk(telemetry: TelemetryPipeline) -> None:
    """SQLite's own 'database or disk is full': cap the spool file at its current page count."""
    spool = telemetry.targets[0].spool
    (pages,) = spool._db.execute("PRAGMA page_count").fetchone()
    spool._db.execute(f"PRAGMA max_page_count = {pages}")


def test_failed_spool_write_raises_and_keeps_nothing_in_memory(tmp_path: Path) -> None:
    telemetry = file_pipeline(tmp_path)
    telemetry.start()
    try:
        fill_disk(telemetry)
        big = [RequestRecord(f"r{i}", time.time(), model="x" * 2000) for i in range(200)]
        with pytest.raises(ExportUnavailable, match="could not be written"):
            telemetry.record_requests(big)
        assert telemetry._log_processor.pending_records == 0
    finally:
        telemetry.shutdown(drain_timeout_seconds=0.1)


def test_records_after_shutdown_are_refused_not_dropped_silently(tmp_path: Path) -> None:
    telemetry = file_pipeline(tmp_path)
    telemetry.start()
    telemetry.shutdown(drain_timeout_seconds=0.1)
    with pytest.raises(ExportUnavailable, match="shut down"):
        telemetry.record_requests([RequestRecord("late", time.time())])


def test_unspooled_action_records_are_bounded(tmp_path: Path) -> None:
    telemetry = file_pipeline(tmp_path)
    telemetry._log_processor.max_pending = 5
    telemetry.start()
    try:
        fill_disk(telemetry)
        for i in range(20):
            telemetry.record_action({"timestamp": time.time(), "rule": "r" * 3000, "knob": "k", "old": i,
                                     "new": i + 1, "outcome": "applied", "reason": "test"})
        assert telemetry._log_processor.pending_records <= 5
        assert telemetry.stats()["unspooled_records_dropped"] >= 1
    finally:
        telemetry.shutdown(drain_timeout_seconds=0.1)
