"""OpenTelemetry SDK exporters whose only job is to put data into every destination's durable spool.

The SDK (MeterProvider, LoggerProvider) does aggregation, histograms and resource attributes; these
exporters turn its batches into documents once, let each destination encode them (JSON document or OTLP
protobuf), append them to that destination's spool in one transaction and wake its drainer. Like every
OTel exporter they report success or failure and never raise into the SDK.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
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
from dsagent.export.documents import Document, documents_from_logs, documents_from_metrics
from dsagent.export.drainer import SpoolDrainer
from dsagent.export.spool import Spool, SpoolRecord

log = logging.getLogger(__name__)


@dataclass
class SpoolTarget:
    """A destination with its spool and drainer: where exporters append, what wakes the drainer."""

    destination: Destination
    spool: Spool
    drainer: SpoolDrainer


def spool_everywhere(
    targets: Sequence[SpoolTarget],
    what: str,
    make_documents: Callable[[], list[Document]],
    encode: Callable[[Destination, list[Document]], list[SpoolRecord]],
) -> bool:
    """Documents once, then each destination's encoding appended to its spool; False if any step failed."""
    try:
        documents = make_documents()
    except Exception:  # noqa: BLE001 - never raise into the SDK
        log.exception("turning %s into documents failed", what)
        return False
    ok = True
    for target in targets:
        try:
            target.spool.append(encode(target.destination, documents))
            target.drainer.wake()
        except Exception:  # noqa: BLE001 - one destination's spool failing must not stop the others
            log.exception("spooling %s for %s failed", what, target.destination.name)
            ok = False
    return ok


class SpoolingMetricExporter(MetricExporter):
    """Histograms go out as DELTA (what Elasticsearch aggregates best); counters stay cumulative."""

    def __init__(self, targets: Sequence[SpoolTarget]) -> None:
        super().__init__(preferred_temporality={HistogramInstrument: AggregationTemporality.DELTA})
        self._targets = list(targets)
        self.failed_exports = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        ok = spool_everywhere(
            self._targets, "metrics", lambda: documents_from_metrics(metrics_data),
            lambda destination, documents: destination.records_from_metrics(metrics_data, documents),
        )
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
        ok = spool_everywhere(
            self._targets, "log records", lambda: documents_from_logs(batch),
            lambda destination, documents: destination.records_from_logs(batch, documents),
        )
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
    Records whose flush failed (a full disk) stay pending for the next flush, at most `max_pending` of
    them: past that the oldest are dropped and counted in `dropped_records` (memory stays bounded), and a
    caller that can have its records sent again (the OTLP receiver answering 503) takes its own back with
    `discard_newest`.
    """

    def __init__(self, exporter: LogRecordExporter, max_pending: int = 10_000) -> None:
        self._exporter = exporter
        self._pending: list[ReadableLogRecord] = []
        self._lock = threading.Lock()
        self._shutdown = False
        self.max_pending = max_pending
        self.dropped_records = 0

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
            excess = len(self._pending) - self.max_pending
            if excess > 0:
                del self._pending[:excess]
                self.dropped_records += excess
                log.warning("the spools keep failing: dropped the %d oldest unspooled log records", excess)
            return False

    def discard_newest(self, count: int) -> None:
        """Forget the last `count` pending records (their sender was told to send them again)."""
        with self._lock:
            if count > 0:
                del self._pending[-count:]

    @property
    def pending_records(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        if not self._shutdown:
            self.force_flush()
            self._shutdown = True
            self._exporter.shutdown()
