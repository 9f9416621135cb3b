"""Per-request records: the JSON access log line and the OTLP log record + span, without any text."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from dssidecar.api.app import set_knob_values
from dssidecar.api.request_telemetry import RequestRecord, RequestTelemetry
from fastapi import FastAPI
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

MODEL = "fake-model"
SECRET_PROMPT = "my secret prompt"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "dssidecar.access"]


async def test_access_log_has_one_json_line_per_request(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dssidecar.access")
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": SECRET_PROMPT, "max_tokens": 4})
    (line,) = access_lines(caplog)
    assert line["request_id"] == response.json()["id"]
    assert line["model"] == MODEL and line["operation"] == "text_completion" and line["stream"] is False
    assert line["prompt_length"] == len(SECRET_PROMPT)
    assert line["tokens_generated"] == 4
    assert line["finish_reason"] == "length"
    assert line["status_code"] == 200
    assert isinstance(line["generation_time"], float) and line["generation_time"] >= 0
    assert isinstance(line["time_to_first_token"], float)
    assert line["time_to_first_token"] <= line["generation_time"]
    assert SECRET_PROMPT not in json.dumps(line)


async def test_refused_requests_are_logged_with_status(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dssidecar.access")
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "a", "n": 4})
    (line,) = access_lines(caplog)
    assert line["status_code"] == 400 and line["error_type"] == "unsupported_parameter"
    assert line["tokens_generated"] == 0


async def test_otlp_log_record_and_span_use_gen_ai_names(
    app: FastAPI,
    client: httpx.AsyncClient,
    log_exporter: InMemoryLogRecordExporter,
    span_exporter: InMemorySpanExporter,
) -> None:
    set_knob_values(app, lambda: {"max_batch_size": 16, "precision": "fp32"})
    payload = {"model": MODEL, "messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 3, "stream": True}
    await client.post("/v1/chat/completions", json=payload)
    assert app.state.serving.telemetry.force_flush(5.0)
    (exported,) = log_exporter.get_finished_logs()
    record = exported.log_record
    attributes = dict(record.attributes or {})
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert attributes["gen_ai.usage.input_tokens"] == attributes["prompt_length"] > len(SECRET_PROMPT)
    assert tuple(attributes["gen_ai.response.finish_reasons"]) == ("length",)
    assert attributes["request_id"].startswith("chatcmpl-")
    assert attributes["tokens_generated"] == 3
    assert attributes["generation_time"] >= attributes["time_to_first_token"] >= 0
    assert attributes["dssidecar.knob.max_batch_size"] == 16
    assert attributes["dssidecar.knob.precision"] == "fp32"
    assert record.event_name == "dssidecar.request"
    assert exported.resource.attributes["service.name"] == "dssidecar"
    everything = json.dumps({k: str(v) for k, v in attributes.items()}) + str(record.body)
    assert SECRET_PROMPT not in everything
    (span,) = span_exporter.get_finished_spans()
    assert span.name == f"chat {MODEL}"
    assert span.attributes is not None and span.attributes["request_id"] == attributes["request_id"]
    assert span.end_time is not None and span.start_time is not None and span.end_time >= span.start_time


def test_no_endpoint_means_access_log_only() -> None:
    telemetry = RequestTelemetry.from_endpoint(None)
    assert telemetry.exporting is False
    telemetry.record(RequestRecord("r1", "m", "chat", False, 0))  # no exporter: nothing raises
    telemetry.shutdown()
    telemetry.shutdown()


def test_endpoint_builds_otlp_http_exporters_on_the_v1_paths() -> None:
    telemetry = RequestTelemetry.from_endpoint("http://127.0.0.1:9/v1/logs", timeout_seconds=0.2)
    try:
        assert telemetry.exporting
        processors = telemetry._logger_provider._multi_log_record_processor._log_record_processors  # type: ignore[union-attr]
        exporter = processors[0]._batch_processor._exporter
        assert exporter._endpoint == "http://127.0.0.1:9/v1/logs"
    finally:
        telemetry.shutdown()


def test_exporter_failure_never_reaches_the_caller() -> None:
    class Exploding(InMemoryLogRecordExporter):
        def export(self, batch):  # type: ignore[no-untyped-def]
            raise RuntimeError("collector down")

    telemetry = RequestTelemetry(log_exporter=Exploding())
    telemetry.record(RequestRecord("r1", "m", "chat", False, 0, tokens_generated=1))
    telemetry.force_flush(1.0)
    telemetry.shutdown()
