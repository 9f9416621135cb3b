"""OpenTelemetry SDK exporters whose only job is to put data into every destination's durable spool.

The SDK (MeterProvider, LoggerProvider) does aggregation, histograms and resource attributes; these
exporters turn its batches into documents once, let each destination encode them (JSON document or OTLP
protobuf), append them to that destination's spool in one transaction and wake its drainer. Like every
OTel exporter they report success or failure and never raise into the SDK.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk._logs import LogRecordProcessor, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource

from dsagent.export.destination import Destination
from dsagent.export.documents import documents_from_logs, documents_from_metrics
from dsagent.export.drainer import SpoolDrainer
from dsagent.export.spool import Spool

log = logging.getLogger(__name__)


@dataclass
class SpoolTarget:
    """A destination with its spool and drainer: where exporters append, what wakes the drainer."""

    destination: Destination
    spool: Spool
    drainer: SpoolDrainer


class SpoolingMetricExporter(MetricExporter):
    """Histograms go out as DELTA (what Elasticsearch aggregates best); counters stay cumulative."""

    def __init__(self, targets: Sequence[SpoolTarget]) -> None:
        super().__init__(preferred_temporality={HistogramInstrument: AggregationTemporality.DELTA})
        self._targets = list(targets)
        self.failed_exports = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            documents = documents_from_metrics(metrics_data)
        except Exception:  # noqa: BLE001 - never raise into the SDK
            log.exception("turning metrics into documents failed")
            self.failed_exports += 1
            return MetricExportResult.FAILURE
        ok = True
        for target in self._targets:
            try:
                target.spool.append(target.destination.records_from_metrics(metrics_data, documents))
                target.drainer.wake()
            except Exception:  # noqa: BLE001
                log.exception("spooling metrics for %s failed", target.destination.name)
                ok = False
        if not ok:
            self.failed_exports += 1
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class SpoolingLogExporter(LogRecordExporter):
    def __init__(self, targets: Sequence[SpoolTarget]) -> None:
        self._targets = list(targets)
        self.failed_exports = 0

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            documents = documents_from_logs(batch)
        except Exception:  # noqa: BLE001
            log.exception("turning log records into documents failed")
            self.failed_exports += 1
            return LogRecordExportResult.FAILURE
        ok = True
        for target in self._targets:
            try:
                target.spool.append(target.destination.records_from_logs(batch, documents))
                target.drainer.wake()
            except Exception:  # noqa: BLE001
                log.exception("spooling log records for %s failed", target.destination.name)
                ok = False
        if not ok:
            self.failed_exports += 1
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class BufferedLogRecordProcessor(LogRecordProcessor):
    """Holds emitted records until `force_flush`, then exports them as one batch, synchronously.

    The pipeline flushes after each `record_requests` / `record_action` call, so when that call returns
    its records are committed to every spool (durable) in one transaction per spool - unlike the SDK's
    BatchLogRecordProcessor, which may drop records when its queue fills and holds them in memory.
    """

    def __init__(self, exporter: LogRecordExporter) -> None:
        self._exporter = exporter
        self._pending: list[ReadableLogRecord] = []
        self._lock = threading.Lock()
        self._shutdown = False

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        if self._shutdown:
            return
        resource = log_record.resource if log_record.resource is not None else Resource.create({})
        readable = ReadableLogRecord(
            log_record=log_record.log_record,
            resource=resource,
            instrumentation_scope=log_record.instrumentation_scope,
            limits=log_record.limits,
        )
        with self._lock:
            self._pending.append(readable)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return True
            if self._exporter.export(batch) == LogRecordExportResult.SUCCESS:
                return True
            # keep them for the next flush: a spool that failed (e.g. disk full) may accept them later
            self._pending = batch + self._pending
            return False

    def shutdown(self) -> None:
        if not self._shutdown:
            self.force_flush()
            self._shutdown = True
            self._exporter.shutdown()
