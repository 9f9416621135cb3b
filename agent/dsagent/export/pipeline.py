"""The one facade the agent runtime uses to ship telemetry: OpenTelemetry SDK -> spools -> destinations.

    pipeline = TelemetryPipeline(config.export, data_dir, {"host.name": node})
    pipeline.start()
    pipeline.record_samples(samples)      # each collection tick
    pipeline.record_requests(records)     # committed to every spool when this returns
    pipeline.record_action(audit_event)
    pipeline.shutdown()

Samples become OTel meters (collected every `metric_export_interval_seconds`, or by `collect_metrics()`),
request records and action events become OTel log records after redaction. Our SDK exporters append them
to one durable SQLite spool per destination; one drainer thread per destination empties it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from dsagent.export.config import ExportConfig
from dsagent.export.destination import DeadLetterFile, Destination
from dsagent.export.documents import ACTION_EVENT, REQUEST_EVENT
from dsagent.export.drainer import Backoff, SpoolDrainer
from dsagent.export.instruments import RequestInstruments, SampleInstruments, histogram_views
from dsagent.export.ndjson import NdjsonDestination
from dsagent.export.otel_exporters import (
    BufferedLogRecordProcessor,
    SpoolingLogExporter,
    SpoolingMetricExporter,
    SpoolTarget,
)
from dsagent.export.spool import Spool
from dsagent.redaction import Redactor, glob_matcher, keep_allowed
from dsagent.samples import RequestRecord, Sample

log = logging.getLogger(__name__)

SCOPE_NAME = "dsagent"
EVENT = "dsagent.event"  # any event name but the request's and the action's lands in logs-dsagent.events


class ExportUnavailable(RuntimeError):
    """Records could not be committed to every durable spool (a full disk, or the pipeline is shut down):
    the caller must not acknowledge them (the OTLP receiver answers 503 and the engine sends again)."""


def build_destinations(config: ExportConfig, data_dir: Path) -> list[Destination]:
    destinations: list[Destination] = []
    if config.file.enabled:
        destinations.append(
            NdjsonDestination(config.file.directory or data_dir / "export", config.file.rotate_bytes,
                              config.file.keep_files)
        )
    if config.elasticsearch is not None:
        from dsagent.export.elasticsearch import ElasticsearchDestination

        destinations.append(ElasticsearchDestination(config.elasticsearch))
    if config.otlp is not None:
        from dsagent.export.otlp import OtlpDestination

        destinations.append(OtlpDestination(config.otlp))
    return destinations


class TelemetryPipeline:
    def __init__(
        self,
        config: ExportConfig,
        data_dir: Path,
        resource_attributes: dict[str, str],
        destinations: Sequence[Destination] | None = None,
    ) -> None:
        """`destinations` replaces the ones built from `config` (tests, benchmarks)."""
        self.config = config
        self.data_dir = Path(data_dir)
        self._redactor = Redactor.from_config(config.redaction)
        allow = config.redaction.request_attributes_allow
        self._allowed_attributes = glob_matcher(allow) if allow is not None else None
        spool_dir = config.spool.directory or self.data_dir / "spool"
        chosen = list(destinations) if destinations is not None else build_destinations(config, self.data_dir)
        names = [destination.name for destination in chosen]
        if len(set(names)) != len(names):
            raise ValueError(f"export destinations need distinct names, got {names}")
        self.targets: list[SpoolTarget] = []
        for destination in chosen:
            spool = Spool(spool_dir / f"{destination.name}.sqlite3", config.spool.max_bytes)
            drainer = SpoolDrainer(
                destination,
                spool,
                DeadLetterFile(self.data_dir / "dead-letter" / f"{destination.name}.ndjson",
                               config.dead_letter.max_bytes, config.dead_letter.keep_files),
                config.spool.batch_documents,
                Backoff(config.spool.retry_initial_seconds, config.spool.retry_max_seconds),
                move_aside_after_attempts=config.spool.move_aside_after_attempts,
            )
            self.targets.append(SpoolTarget(destination, spool, drainer))

        resource = Resource.create({"service.name": "dsagent", **resource_attributes})
        self._metric_exporter = SpoolingMetricExporter(self.targets)
        # interval inf: no SDK thread; our ticker (or the agent's export job) calls collect_metrics()
        self._metric_reader = PeriodicExportingMetricReader(self._metric_exporter, export_interval_millis=math.inf)
        self._meter_provider = MeterProvider(
            resource=resource, metric_readers=[self._metric_reader], views=histogram_views(config.buckets)
        )
        meter = self._meter_provider.get_meter(SCOPE_NAME)
        self._resource = resource
        self._scope = InstrumentationScope(SCOPE_NAME)
        self._samples = SampleInstruments()  # last-value series: MetricsData built directly, not via the SDK
        self._samples_lock = threading.Lock()
        self._requests = RequestInstruments(meter)

        self._log_exporter = SpoolingLogExporter(self.targets)
        self._log_processor = BufferedLogRecordProcessor(self._log_exporter)
        self._logger_provider = LoggerProvider(resource=resource)
        self._logger_provider.add_log_record_processor(self._log_processor)
        self._logger = self._logger_provider.get_logger(SCOPE_NAME)

        self._emit_lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._started = False
        self._shut_down = False

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, collect_periodically: bool = True) -> None:
        """Start the drainers and, unless the caller's scheduler calls `collect_metrics()` itself, a
        thread collecting the meters every `metric_export_interval_seconds`."""
        if self._started or self._shut_down:
            return
        self._started = True
        for target in self.targets:
            target.drainer.start()
        if collect_periodically:
            self._ticker = threading.Thread(target=self._tick, name="dsagent-export-collect", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.config.metric_export_interval_seconds):
            self.collect_metrics()

    def collect_metrics(self, timeout_seconds: float = 10.0) -> bool:
        """Collect every instrument now and spool the points (the periodic tick does this too)."""
        if self._shut_down:
            return False
        try:
            flushed = bool(self._metric_reader.force_flush(timeout_millis=timeout_seconds * 1000))  # histograms
            with self._samples_lock:
                samples_data = self._samples.collect(self._resource, self._scope, time.time_ns())
                if samples_data is not None:
                    flushed = self._metric_exporter.export(samples_data) is MetricExportResult.SUCCESS and flushed
            return flushed
        except Exception:  # noqa: BLE001 - collection problems must not reach the caller's job
            log.exception("collecting metrics failed")
            return False

    def force_flush(self, timeout_seconds: float = 10) -> bool:
        """Spool everything recorded so far and wait until every destination acknowledged it."""
        deadline = time.monotonic() + timeout_seconds
        flushed = self.collect_metrics(timeout_seconds)
        with self._emit_lock:
            flushed = self._log_processor.force_flush() and flushed
        if not self._started:
            return False
        for target in self.targets:
            remaining = max(0.0, deadline - time.monotonic())
            flushed = target.drainer.wait_empty(remaining) and flushed
        return flushed

    def shutdown(self, drain_timeout_seconds: float = 5.0) -> None:
        """Spool what is buffered, give destinations a short chance to drain, stop threads. Idempotent.

        What is not delivered stays in the spools and goes out after the next start."""
        if self._shut_down:
            return
        self.collect_metrics()
        with self._emit_lock:
            self._log_processor.force_flush()
        self._shut_down = True
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(5)
        if self._started:
            deadline = time.monotonic() + drain_timeout_seconds
            for target in self.targets:
                target.drainer.wait_empty(max(0.0, deadline - time.monotonic()))
        for target in self.targets:
            target.drainer.stop()
        self._meter_provider.shutdown()
        self._logger_provider.shutdown()
        for target in self.targets:
            target.destination.close()
            target.spool.close()

    # -- recording -----------------------------------------------------------------------------
    def record_samples(self, samples: list[Sample]) -> None:
        if self._shut_down:
            log.warning("record_samples after shutdown: %d samples ignored", len(samples))
            return
        self._samples.record(samples)

    def record_requests(self, records: list[RequestRecord]) -> None:
        """Histograms plus one log record per request; committed to every spool when this returns.

        Raises ExportUnavailable when they could not be committed (nothing of them is kept then: the
        sender retries), or after shutdown."""
        if self._shut_down:
            raise ExportUnavailable(f"the export pipeline is shut down; {len(records)} request records refused")
        with self._emit_lock:
            for record in records:
                self._logger.emit(
                    timestamp=_seconds_to_ns(record.timestamp_seconds),
                    body=self._redactor.redact(request_body(record, self._allowed_attributes)),
                    event_name=REQUEST_EVENT,
                    severity_number=SeverityNumber.INFO,
                )
            if not self._log_processor.force_flush():
                self._log_processor.discard_newest(len(records))
                raise ExportUnavailable(f"{len(records)} request records could not be written to the durable "
                                        "spool (see the log for the spool's error)")
        self._requests.record(records)  # histograms only for records that were accepted

    def record_action(self, event: dict[str, Any]) -> None:
        """An audit event (timestamp, rule, knob, old, new, outcome, reason); durable when this returns."""
        if self._shut_down:
            log.warning("record_action after shutdown: %s ignored", event)
            return
        body = {key: value for key, value in event.items() if key != "timestamp"}
        with self._emit_lock:
            self._logger.emit(
                timestamp=_event_time_ns(event.get("timestamp")),
                body=self._redactor.redact(_without_none(body)),
                event_name=ACTION_EVENT,
                severity_number=SeverityNumber.WARN if event.get("outcome") == "rolled_back" else SeverityNumber.INFO,
            )
            self._log_processor.force_flush()

    def record_event(self, event: dict[str, Any]) -> None:
        """A node event (a GPU XID error, ...) as one document in logs-dsagent.events; durable on return."""
        if self._shut_down:
            log.warning("record_event after shutdown: %s ignored", event)
            return
        body = {key: value for key, value in event.items() if key != "timestamp"}
        with self._emit_lock:
            self._logger.emit(
                timestamp=_event_time_ns(event.get("timestamp")),
                body=self._redactor.redact(_without_none(body)),
                event_name=EVENT,
                severity_number=SeverityNumber.WARN,
            )
            self._log_processor.force_flush()

    # -- observation ---------------------------------------------------------------------------
    def destination_status(self) -> dict[str, dict[str, Any]]:
        """Per destination: state (ok / retrying / refused) and the last error, for /api/status."""
        status: dict[str, dict[str, Any]] = {}
        for target in self.targets:
            entry: dict[str, Any] = {"state": target.drainer.state, "last_error": target.drainer.last_error or None}
            templates = getattr(target.destination, "templates_status", None)
            if templates is not None:
                entry["index_templates"] = templates
            status[target.destination.name] = entry
        return status

    def stats(self) -> dict[str, float]:
        totals = {"sent_documents": 0.0, "dropped_documents": 0.0, "dead_lettered_documents": 0.0,
                  "retries": 0.0, "spool_depth_documents": 0.0, "refused_retries": 0.0,
                  "moved_aside_documents": 0.0, "over_quota_appends": 0.0}
        figures: dict[str, float] = {}
        for target in self.targets:
            name = target.destination.name
            per = {
                "spool_depth_documents": float(target.spool.depth_documents),
                "spool_bytes": float(target.spool.size_bytes),
                "sent_documents": float(target.drainer.sent_documents),
                "dropped_documents": float(target.spool.dropped_metric_documents),
                "dead_lettered_documents": float(target.drainer.dead_lettered_documents),
                "retries": float(target.drainer.retries),
                "refused_retries": float(target.drainer.refused_retries),
                "moved_aside_documents": float(target.drainer.moved_aside_documents),
                "over_quota_appends": float(target.spool.over_quota_appends),
                "spool_disk_bytes": float(target.spool.disk_bytes()),
            }
            for key, value in per.items():
                figures[f"{name}.{key}"] = value
                if key in totals:
                    totals[key] += value
        figures.update(totals)
        figures["failed_exports"] = float(self._metric_exporter.failed_exports + self._log_exporter.failed_exports)
        figures["unspooled_records_dropped"] = float(self._log_processor.dropped_records)
        return figures


def request_body(record: RequestRecord, allowed_attributes: re.Pattern[str] | None = None) -> dict[str, Any]:
    """The request log document fields (DESIGN.md), omitting what was not measured; `attributes` cut to the
    allowlist (None: all)."""
    body = dataclasses.asdict(record)
    body["attributes"] = keep_allowed(body.get("attributes") or {}, allowed_attributes)
    body.pop("timestamp_seconds", None)
    if not body.get("knobs"):
        body.pop("knobs", None)
    if not body.get("attributes"):
        body.pop("attributes", None)
    return _without_none(body)


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(v) for v in value if v is not None]
    return value


def _seconds_to_ns(seconds: float) -> int:
    return int(round(seconds * 1_000_000_000))


def _event_time_ns(timestamp: Any) -> int:
    if timestamp is None:
        return time.time_ns()
    if isinstance(timestamp, (int, float)):
        return _seconds_to_ns(float(timestamp))
    if isinstance(timestamp, datetime):
        return _seconds_to_ns(timestamp.timestamp())
    if isinstance(timestamp, str):
        try:
            return _seconds_to_ns(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())
        except ValueError as error:
            raise ValueError(
                f"action event timestamp {timestamp!r} is not ISO 8601 or epoch seconds"
            ) from error
    raise ValueError(f"action event timestamp {timestamp!r} must be epoch seconds, ISO 8601 or datetime")
