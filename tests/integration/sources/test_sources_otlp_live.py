"""The OTLP receiver on a real loopback port, fed by the real OpenTelemetry SDK exporters (protobuf over
HTTP, gzip too) and by the sidecar's own request telemetry, so attribute names agree end to end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from dsagent.otlp_listener import OtlpReceiverServer
from dsagent.samples import RequestRecord
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


class Collected:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def __call__(self, records: list[RequestRecord]) -> None:
        with self._lock:
            self.records.extend(records)

    def wait_for(self, count: int, timeout_seconds: float = 10.0) -> list[RequestRecord]:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.records) >= count:
                    return list(self.records)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} records, got {len(self.records)}")


@pytest.fixture
def receiver() -> Iterator[tuple[OtlpReceiverServer, Collected]]:
    collected = Collected()
    server = OtlpReceiverServer(collected, "127.0.0.1", 0)
    server.start()
    try:
        yield server, collected
    finally:
        server.stop()


ATTRIBUTES = {
    "request_id": "sdk-1",
    "gen_ai.request.model": "demo",
    "gen_ai.usage.input_tokens": 11,
    "gen_ai.usage.output_tokens": 4,
    "gen_ai.response.finish_reasons": ["stop"],
    "generation_time": 0.4,
    "time_to_first_token": 0.1,
}


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_log_exporter_delivers_request_records(
    receiver: tuple[OtlpReceiverServer, Collected], compression: Compression
) -> None:
    server, collected = receiver
    exporter = OTLPLogExporter(endpoint=f"{server.endpoint}/v1/logs", compression=compression, timeout=5)
    provider = LoggerProvider(resource=Resource.create({"service.name": "dssidecar"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("test")
    for index in range(3):
        logger.emit(body="request finished", attributes={**ATTRIBUTES, "request_id": f"sdk-{index}"})
    logger.emit(body="not a request", attributes={"component": "scheduler"})
    provider.shutdown()

    records = collected.wait_for(3)
    assert sorted(r.request_id for r in records) == ["sdk-0", "sdk-1", "sdk-2"]
    record = records[0]
    assert (record.model, record.prompt_length, record.tokens_generated, record.finish_reason) == ("demo", 11, 4, "stop")
    assert record.generation_time_seconds == pytest.approx(0.4)
    assert record.time_to_first_token_seconds == pytest.approx(0.1)
    assert record.attributes["service.name"] == "dssidecar"


def test_sdk_span_exporter_delivers_request_records(receiver: tuple[OtlpReceiverServer, Collected]) -> None:
    server, collected = receiver
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{server.endpoint}/v1/traces", timeout=5)))
    tracer = provider.get_tracer("test")
    start = time.time_ns()
    span = tracer.start_span("chat demo", start_time=start, attributes={"request_id": "span-1", "gen_ai.usage.output_tokens": 9})
    span.end(end_time=start + 1_500_000_000)
    provider.shutdown()
    (record,) = collected.wait_for(1)
    assert record.request_id == "span-1" and record.tokens_generated == 9
    assert record.generation_time_seconds == pytest.approx(1.5)
    assert len(record.attributes["trace_id"]) == 32


def test_the_sidecars_request_telemetry_maps_completely(receiver: tuple[OtlpReceiverServer, Collected]) -> None:
    telemetry_module = pytest.importorskip("dssidecar.api.request_telemetry")
    server, collected = receiver
    telemetry = telemetry_module.RequestTelemetry.from_endpoint(server.endpoint, access_log=False)
    telemetry.record(
        telemetry_module.RequestRecord(
            request_id="side-1",
            model="demo",
            operation="chat",
            stream=False,
            arrival_unix_nano=time.time_ns(),
            prompt_length=17,
            tokens_generated=6,
            generation_time=0.6,
            time_to_first_token=0.1,
            finish_reason="length",
            knobs={"max_batch_size": 8},
        )
    )
    telemetry.shutdown()
    (record,) = collected.wait_for(1)  # the log and the span of the request arrive; one record is kept
    time.sleep(0.2)
    assert len(collected.records) == 1
    assert record.request_id == "side-1" and record.model == "demo"
    assert (record.prompt_length, record.tokens_generated, record.finish_reason) == (17, 6, "length")
    assert record.generation_time_seconds == pytest.approx(0.6)
    assert record.time_to_first_token_seconds == pytest.approx(0.1)
    assert record.time_per_output_token_seconds == pytest.approx(0.1)
    assert record.status_code == 200
    assert record.knobs == {"max_batch_size": 8}


def test_a_taken_port_is_refused_with_the_address() -> None:
    first = OtlpReceiverServer(lambda records: None, "127.0.0.1", 0)
    first.start()
    try:
        second = OtlpReceiverServer(lambda records: None, "127.0.0.1", first.port)
        with pytest.raises(OSError, match=f"OTLP receiver cannot listen on http://127.0.0.1:{first.port}"):
            second.start()
    finally:
        first.stop()


def test_stop_is_idempotent() -> None:
    server = OtlpReceiverServer(lambda records: None, "127.0.0.1", 0)
    server.start()
    server.stop()
    server.stop()
