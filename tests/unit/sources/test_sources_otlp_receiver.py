"""OTLP/HTTP receiver router: protobuf and JSON, gzip, status codes per the OTLP/HTTP spec, dedupe."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from dsagent.samples import RequestRecord
from dsagent.sources.otlp_receiver import build_otlp_router
from fastapi import FastAPI
from fastapi.testclient import TestClient
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def request_attributes(request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "gen_ai.request.model": "demo",
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ["stop"],
        "generation_time": 0.25,
        "time_to_first_token": 0.05,
        "http.response.status_code": 200,
        "dssidecar.knob.max_batch_size": 8,
    }


def logs_request(*request_ids: str, extra_records: int = 0) -> logs_service_pb2.ExportLogsServiceRequest:
    records = [
        LogRecord(time_unix_nano=1_700_000_000_000_000_000, attributes=key_values(request_attributes(r)))
        for r in request_ids
    ]
    records += [LogRecord(body=AnyValue(string_value="unrelated log line"))] * extra_records
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=key_values({"service.name": "dssidecar"})),
                scope_logs=[ScopeLogs(log_records=records)],
            )
        ]
    )


def traces_request(request_id: str, with_generation_time: bool = True) -> trace_service_pb2.ExportTraceServiceRequest:
    attributes = request_attributes(request_id)
    if not with_generation_time:
        del attributes["generation_time"]
    span = Span(
        trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"),
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        name="chat demo",
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_002_000_000_000,
        attributes=key_values(attributes),
    )
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )


class Receiver:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[RequestRecord] = []
        self.fail = fail
        app = FastAPI()
        app.include_router(build_otlp_router(self.on_records, max_body_bytes=64 * 1024))
        self.client = TestClient(app)

    def on_records(self, records: list[RequestRecord]) -> None:
        if self.fail:
            raise RuntimeError("store is full")
        self.records.extend(records)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


def test_protobuf_logs_become_request_records(receiver: Receiver) -> None:
    response = receiver.client.post("/v1/logs", content=logs_request("a", "b", extra_records=2).SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    logs_service_pb2.ExportLogsServiceResponse().ParseFromString(response.content)
    assert [r.request_id for r in receiver.records] == ["a", "b"]  # the unrelated lines are not requests
    record = receiver.records[0]
    assert (record.model, record.prompt_length, record.tokens_generated, record.finish_reason) == ("demo", 7, 3, "stop")
    assert record.timestamp_seconds == pytest.approx(1_700_000_000.0)
    assert record.knobs == {"max_batch_size": 8}
    assert record.attributes["service.name"] == "dssidecar"


def test_json_logs_are_accepted_and_answered_in_json(receiver: Receiver) -> None:
    body = json_format.MessageToJson(logs_request("j1"))
    response = receiver.client.post("/v1/logs", content=body, headers=JSON)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {}
    assert [r.request_id for r in receiver.records] == ["j1"]


def test_otlp_json_with_hex_ids_and_string_int64(receiver: Receiver) -> None:
    # as the OTLP spec encodes it: hex trace/span ids, int64 as strings, unknown fields ignored
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "vllm"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "llm_request",
                                "kind": 2,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000001500000000",
                                "someFutureField": 1,
                                "attributes": [
                                    {"key": "gen_ai.request.id", "value": {"stringValue": "cmpl-1"}},
                                    {"key": "gen_ai.usage.prompt_tokens", "value": {"intValue": "42"}},
                                ],
                            }
                        ]
                    }
                ],
            }
        ]
    }
    response = receiver.client.post("/v1/traces", content=json.dumps(body), headers=JSON)
    assert response.status_code == 200, response.text
    (record,) = receiver.records
    assert record.request_id == "cmpl-1" and record.prompt_length == 42
    assert record.generation_time_seconds == pytest.approx(1.5)  # from the span's duration
    assert record.attributes["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert record.attributes["service.name"] == "vllm"


def test_protobuf_traces_and_span_duration(receiver: Receiver) -> None:
    body = traces_request("t1", with_generation_time=False).SerializeToString()
    response = receiver.client.post("/v1/traces", content=body, headers=PROTOBUF)
    assert response.status_code == 200
    trace_service_pb2.ExportTraceServiceResponse().ParseFromString(response.content)
    (record,) = receiver.records
    assert record.generation_time_seconds == pytest.approx(2.0)
    assert record.timestamp_seconds == pytest.approx(1_700_000_002.0)


def test_log_and_span_of_the_same_request_give_one_record(receiver: Receiver) -> None:
    receiver.client.post("/v1/logs", content=logs_request("same").SerializeToString(), headers=PROTOBUF)
    receiver.client.post("/v1/traces", content=traces_request("same").SerializeToString(), headers=PROTOBUF)
    receiver.client.post("/v1/logs", content=logs_request("same").SerializeToString(), headers=PROTOBUF)
    assert [r.request_id for r in receiver.records] == ["same"]


def test_gzip_bodies(receiver: Receiver) -> None:
    body = gzip.compress(logs_request("g").SerializeToString())
    response = receiver.client.post("/v1/logs", content=body, headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 200
    assert [r.request_id for r in receiver.records] == ["g"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"\xff\xff\xff", PROTOBUF, 400, "protobuf"),
        (b"{not json", JSON, 400, "not JSON"),
        (b"[1, 2]", JSON, 400, "object"),
        (b'{"resourceLogs": 5}', JSON, 400, "OTLP JSON"),
        (b"plain", {"Content-Type": "text/plain"}, 415, "application/x-protobuf"),
        (b"abc", {**PROTOBUF, "Content-Encoding": "gzip"}, 400, "gzip"),
        (b"abc", {**PROTOBUF, "Content-Encoding": "br"}, 400, "Content-Encoding"),
        (b"x" * (64 * 1024 + 1), PROTOBUF, 413, "limit"),
    ],
)
def test_bad_requests_get_the_spec_status_and_a_reason(
    receiver: Receiver, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    response = receiver.client.post("/v1/logs", content=body, headers=headers)
    assert response.status_code == status
    decoded = status_pb2.Status()
    if response.headers["content-type"] == "application/json":
        json_format.Parse(response.text, decoded)
    else:
        decoded.ParseFromString(response.content)
    assert message in decoded.message
    assert receiver.records == []


def test_a_failing_consumer_answers_503_so_the_exporter_retries() -> None:
    failing = Receiver(fail=True)
    response = failing.client.post("/v1/logs", content=logs_request("x").SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 503
    failing.fail = False  # the exporter's retry must not be dropped as a duplicate
    response = failing.client.post("/v1/logs", content=logs_request("x").SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200
    assert [r.request_id for r in failing.records] == ["x"]


def test_an_empty_export_is_ok(receiver: Receiver) -> None:
    response = receiver.client.post("/v1/logs", content=b"", headers=PROTOBUF)
    assert response.status_code == 200 and receiver.records == []
