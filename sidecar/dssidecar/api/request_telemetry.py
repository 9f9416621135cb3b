"""One record per finished request: a JSON access-log line and, when configured, an OTLP log + span.

The agent learns about individual requests only through this record (it never sees the engine's
internals), so the record carries what a rule or a dashboard needs - sizes, timings, finish reason, the
knob values in force - and nothing of the prompt or completion text.

OTLP attribute names follow the OpenTelemetry GenAI semantic conventions where they exist
(`gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...) plus our own plain names (`request_id`,
`prompt_length`, `tokens_generated`, `generation_time`, `time_to_first_token`) that the agent's receiver
reads. `otel_attributes()` is the single place those names are defined.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

import dssidecar

access_logger = logging.getLogger("dssidecar.access")
logger = logging.getLogger("dssidecar.api")

EVENT_NAME = "dssidecar.request"
KNOB_ATTRIBUTE_PREFIX = "dssidecar.knob."


@dataclass
class RequestRecord:
    """What happened to one request. Times in seconds; None where it did not happen (no first token)."""

    request_id: str
    model: str
    operation: str  # "chat" or "text_completion" (gen_ai.operation.name)
    stream: bool
    arrival_unix_nano: int
    status_code: int = 200
    prompt_length: int = 0
    tokens_generated: int = 0
    generation_time: float | None = None
    time_to_first_token: float | None = None
    finish_reason: str | None = None
    error_type: str | None = None
    knobs: dict[str, Any] = field(default_factory=dict)

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "event": "request",
            "request_id": self.request_id,
            "model": self.model,
            "operation": self.operation,
            "stream": self.stream,
            "status_code": self.status_code,
            "prompt_length": self.prompt_length,
            "tokens_generated": self.tokens_generated,
            "generation_time": _rounded(self.generation_time),
            "time_to_first_token": _rounded(self.time_to_first_token),
            "finish_reason": self.finish_reason,
        }
        if self.error_type is not None:
            fields["error_type"] = self.error_type
        if self.knobs:
            fields["knobs"] = self.knobs
        return fields

    def otel_attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.request.model": self.model,
            "gen_ai.response.model": self.model,
            "gen_ai.response.id": self.request_id,
            "gen_ai.usage.input_tokens": self.prompt_length,
            "gen_ai.usage.output_tokens": self.tokens_generated,
            "request_id": self.request_id,
            "model": self.model,
            "prompt_length": self.prompt_length,
            "tokens_generated": self.tokens_generated,
            "stream": self.stream,
            "http.response.status_code": self.status_code,
        }
        if self.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [self.finish_reason]
            attributes["finish_reason"] = self.finish_reason
        if self.generation_time is not None:
            attributes["generation_time"] = float(self.generation_time)
        if self.time_to_first_token is not None:
            attributes["time_to_first_token"] = float(self.time_to_first_token)
        if self.error_type is not None:
            attributes["error.type"] = self.error_type
        for name, value in self.knobs.items():
            if isinstance(value, bool | int | float | str):
                attributes[KNOB_ATTRIBUTE_PREFIX + name] = value
        return attributes


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


class RequestTelemetry:
    """Writes the access log and ships records over OTLP. Never raises into the request path."""

    def __init__(
        self,
        *,
        access_log: bool = True,
        log_exporter: LogRecordExporter | None = None,
        span_exporter: SpanExporter | None = None,
        resource_attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.access_log = access_log
        resource = Resource.create(
            {"service.name": "dssidecar", "service.version": dssidecar.__version__, **(resource_attributes or {})}
        )
        self._logger_provider: LoggerProvider | None = None
        self._tracer_provider: TracerProvider | None = None
        if log_exporter is not None:
            self._logger_provider = LoggerProvider(resource=resource)
            self._logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
            self._otel_logger = self._logger_provider.get_logger("dssidecar.requests", dssidecar.__version__)
        if span_exporter is not None:
            self._tracer_provider = TracerProvider(resource=resource)
            self._tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
            self._tracer = self._tracer_provider.get_tracer("dssidecar.requests", dssidecar.__version__)
        self._closed = False

    @classmethod
    def from_endpoint(
        cls,
        endpoint: str | None,
        *,
        access_log: bool = True,
        timeout_seconds: float = 5.0,
        export_spans: bool = True,
        resource_attributes: Mapping[str, str] | None = None,
    ) -> RequestTelemetry:
        """OTLP/HTTP (protobuf) exporters to <endpoint>/v1/logs and <endpoint>/v1/traces; None: access log only."""
        if not endpoint:
            return cls(access_log=access_log, resource_attributes=resource_attributes)
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = endpoint.rstrip("/")
        for suffix in ("/v1/logs", "/v1/traces"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        log_exporter = OTLPLogExporter(endpoint=f"{base}/v1/logs", timeout=timeout_seconds)
        span_exporter = OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=timeout_seconds) if export_spans else None
        return cls(
            access_log=access_log,
            log_exporter=log_exporter,
            span_exporter=span_exporter,
            resource_attributes=resource_attributes,
        )

    @property
    def exporting(self) -> bool:
        return self._logger_provider is not None or self._tracer_provider is not None

    def record(self, record: RequestRecord) -> None:
        if self.access_log:
            try:
                access_logger.info(json.dumps(record.log_fields(), separators=(",", ":"), default=str))
            except Exception:
                logger.exception("access log line for %s failed", record.request_id)
        if self._closed:
            return
        try:
            self._export(record)
        except Exception:
            logger.exception("OTLP export of request %s failed", record.request_id)

    def _export(self, record: RequestRecord) -> None:
        attributes = record.otel_attributes()
        end_unix_nano = time.time_ns()
        if record.generation_time is not None:
            end_unix_nano = record.arrival_unix_nano + int(record.generation_time * 1e9)
        if self._tracer_provider is not None:
            span = self._tracer.start_span(
                f"{record.operation} {record.model}",
                kind=SpanKind.SERVER,
                start_time=record.arrival_unix_nano,
                attributes=attributes,
            )
            if record.status_code >= 500 or record.error_type is not None:
                span.set_status(Status(StatusCode.ERROR, record.error_type))
            span.end(end_time=max(end_unix_nano, record.arrival_unix_nano))
        if self._logger_provider is not None:
            from opentelemetry._logs import SeverityNumber

            failed = record.status_code >= 400
            self._otel_logger.emit(
                timestamp=end_unix_nano,
                severity_number=SeverityNumber.WARN if failed else SeverityNumber.INFO,
                severity_text="WARN" if failed else "INFO",
                body=f"request {record.request_id} finished: {record.finish_reason or record.error_type}",
                attributes=attributes,
                event_name=EVENT_NAME,
            )

    def force_flush(self, timeout_seconds: float = 5.0) -> bool:
        ok = True
        millis = int(timeout_seconds * 1000)
        if self._logger_provider is not None:
            ok = self._logger_provider.force_flush(millis) and ok
        if self._tracer_provider is not None:
            ok = self._tracer_provider.force_flush(millis) and ok
        return ok

    def shutdown(self) -> None:
        """Flush and stop the exporters; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for provider in (self._logger_provider, self._tracer_provider):
            if provider is None:
                continue
            try:
                provider.shutdown()
            except Exception:
                logger.exception("shutting down an OTLP exporter failed")
