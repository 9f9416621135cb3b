"""OTLP/HTTP (protobuf) to an upstream collector, behind the spool like every remote destination.

The OpenTelemetry SDK batches are encoded once into OTLP `Export*ServiceRequest` protobuf bytes and
spooled; the drainer POSTs them to `<endpoint>/v1/metrics` or `/v1/logs`. Consecutive spooled requests
for the same path are concatenated into one POST: protobuf concatenation of two messages merges their
repeated `resource_*` fields, which is exactly one bigger valid request.

Answers are classified as the OpenTelemetry collector's exporter does: 2xx delivered; 408/429/5xx retried;
401, 403 and 404 (an expired token, a wrong path) retried with backoff and surfaced as a refusal, never
dead-lettered, so a credential problem cannot empty the durable spool; 413 splits the POST into smaller
ones (a single spooled request still too large can never be sent and is dead-lettered); any other 4xx is
a payload the collector will never accept and is dead-lettered with its reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import MetricsData

from dsagent.export.config import OtlpExportConfig
from dsagent.export.destination import Destination, SendOutcome
from dsagent.export.documents import Document
from dsagent.export.spool import LOG, METRIC, SpoolEntry, SpoolRecord

METRICS_PATH = "/v1/metrics"
LOGS_PATH = "/v1/logs"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REFUSED_STATUSES = frozenset({401, 403, 404})
TOO_LARGE_STATUS = 413
MAX_POST_BYTES = 4 * 1024 * 1024


class OtlpDestination(Destination):
    def __init__(
        self,
        config: OtlpExportConfig,
        transport: httpx.BaseTransport | None = None,
        name: str = "otlp",
    ) -> None:
        self.name = name
        self.config = config
        headers = {key: value.get_secret_value() for key, value in config.headers.items()}
        headers["Content-Type"] = "application/x-protobuf"
        self._client = httpx.Client(headers=headers, timeout=config.timeout_seconds, transport=transport)

    def records_from_metrics(self, metrics_data: MetricsData, documents: Sequence[Document]) -> list[SpoolRecord]:
        if not documents:
            return []
        payload = encode_metrics(metrics_data).SerializeToString()
        return [SpoolRecord(METRIC, METRICS_PATH, _payload_id(payload), payload)]

    def records_from_logs(self, batch: Sequence[Any], documents: Sequence[Document]) -> list[SpoolRecord]:
        if not batch:
            return []
        payload = encode_logs(batch).SerializeToString()
        return [SpoolRecord(LOG, LOGS_PATH, _payload_id(payload), payload)]

    def send(self, entries: Sequence[SpoolEntry]) -> SendOutcome:
        outcome = SendOutcome()
        for group in _consecutive_groups(entries):
            self._post(group, outcome)
        return outcome

    def _post(self, group: Sequence[SpoolEntry], outcome: SendOutcome) -> None:
        path = group[0].stream
        body = b"".join(entry.payload for entry in group)
        seqs = [entry.seq for entry in group]
        try:
            response = self._client.post(self.config.endpoint + path, content=body)
        except httpx.HTTPError as error:
            outcome.retry.extend(seqs)
            outcome.retry_reason = f"POST {path} failed: {type(error).__name__}: {error}"
            return
        status = response.status_code
        if 200 <= status < 300:
            outcome.acked.extend(seqs)
        elif status in RETRY_STATUSES:
            outcome.retry.extend(seqs)
            outcome.retry_reason = f"POST {path} answered {status}"
        elif status in REFUSED_STATUSES:
            outcome.retry.extend(seqs)
            outcome.retry_reason = f"POST {self.config.endpoint}{path} answered {status}: {response.text[:200]}"
            outcome.refused = True
        elif status == TOO_LARGE_STATUS and len(group) > 1:
            half = len(group) // 2
            self._post(group[:half], outcome)
            self._post(group[half:], outcome)
        else:
            reason = f"POST {path} answered {status}: {response.text[:500]}"
            outcome.dead.extend((entry, reason) for entry in group)

    def close(self) -> None:
        self._client.close()


def _payload_id(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:32]


def _consecutive_groups(entries: Sequence[SpoolEntry]) -> list[list[SpoolEntry]]:
    groups: list[list[SpoolEntry]] = []
    size = 0
    for entry in entries:
        if groups and groups[-1][0].stream == entry.stream and size + len(entry.payload) <= MAX_POST_BYTES:
            groups[-1].append(entry)
            size += len(entry.payload)
        else:
            groups.append([entry])
            size = len(entry.payload)
    return groups
