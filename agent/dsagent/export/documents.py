"""Turns OpenTelemetry SDK data (metric points, log records) into destination-neutral documents.

Why a separate step: every destination (Elasticsearch, NDJSON files) stores the same JSON document under
the same deterministic id, so a retry, a replay after a crash or a second destination never invents a
new identity for the same observation. The id is a hash of the stream, the timestamp and the series (or
request / action) identity, plus the resource (host) so two nodes never collide.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property, lru_cache
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricsData,
    NumberDataPoint,
    Sum,
)

from dsagent.export.spool import ACTION, METRIC, REQUEST

REQUEST_EVENT = "dsagent.request"
ACTION_EVENT = "dsagent.action"

METRICS = "metrics"
LOGS = "logs"


#: one encoder for every document: `json.dumps` with options builds a new encoder per call. Output is the
#: same as `json.dumps(body, separators=(",", ":"), default=str)`; bodies are plain trees built here, never
#: cyclic, so the circular-reference check is skipped.
_ENCODE_JSON = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False).encode


@dataclass(frozen=True)
class Document:
    """One JSON document for a stream `<data_type>-<prefix>.<dataset>-<namespace>`."""

    kind: str
    data_type: str
    dataset: str
    doc_id: str
    body: dict[str, Any]

    @cached_property
    def encoded(self) -> bytes:
        """The body as compact JSON, serialized once however many destinations store it."""
        return _ENCODE_JSON(self.body).encode()

    def json_bytes(self) -> bytes:
        return self.encoded


def _length_prefixed(parts: Iterable[str]) -> str:
    """An injective encoding of a sequence of strings: each as `<length>:<text>` (a netstring without the
    trailer), so no text, whatever characters it holds, can shift into the next part."""
    return "".join(f"{len(part)}:{part}" for part in parts)


def deterministic_id(*parts: str) -> str:
    """128-bit hex id from the parts; equal parts always give the equal id, different parts a different one
    (up to a hash collision)."""
    return hashlib.sha256(_length_prefixed(parts).encode()).hexdigest()[:32]


@lru_cache(maxsize=256)  # every point of one collection shares its timestamp
def iso_timestamp(time_unix_nano: int) -> str:
    """RFC 3339 UTC with microseconds (Elasticsearch `date` keeps milliseconds; ids keep nanoseconds)."""
    seconds, nanos = divmod(int(time_unix_nano), 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos // 1000:06d}Z"


def metric_dataset(metric_name: str) -> str:
    """Which `metrics-dsagent.<dataset>` stream a metric belongs to, from its name."""
    name = metric_name.lower()
    if name.startswith("gen_ai."):
        return "requests"
    for prefix, dataset in (
        ("dsagent_gpu_", "gpu"),
        ("gpu_", "gpu"),
        ("dsagent_host_", "host"),
        ("host_", "host"),
        ("dsagent_engine_", "engine"),
        ("vllm:", "engine"),
        ("dssidecar_", "engine"),
        ("dsagent_", "agent"),
    ):
        if name.startswith(prefix):
            return dataset
    return "engine"


def _series_key(attributes: Mapping[str, Any]) -> str:
    """Canonical text of a label set: sorted pairs, length-prefixed, so label text cannot collide."""
    return _length_prefixed(part for pair in sorted((str(k), str(v)) for k, v in attributes.items()) for part in pair)


def _identity_attributes(resource_attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Resource attributes that name the node/service: not the SDK's own nor the per-process instance id,
    so the same observation recorded after a restart keeps its id."""
    return {
        str(k): v
        for k, v in resource_attributes.items()
        if not str(k).startswith("telemetry.") and k != "service.instance.id"
    }


def _resource_fields(resource_attributes: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    identity = _identity_attributes(resource_attributes)
    fields: dict[str, Any] = {}
    if identity:
        fields["resource"] = identity
        host_name = identity.get("host.name")
        if host_name is not None:
            fields["host"] = {"name": str(host_name)}
    return fields, _series_key(identity)


def documents_from_metrics(metrics_data: MetricsData) -> list[Document]:
    documents: list[Document] = []
    for resource_metrics in metrics_data.resource_metrics:
        resource_fields, resource_key = _resource_fields(dict(resource_metrics.resource.attributes))
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                dataset = metric_dataset(metric.name)
                data = metric.data
                if isinstance(data, Gauge):
                    metric_type = "gauge"
                elif isinstance(data, Sum):
                    metric_type = "counter" if data.is_monotonic else "sum"
                elif isinstance(data, Histogram):
                    metric_type = "histogram"
                else:  # exponential histograms are not configured by this pipeline
                    continue
                for point in data.data_points:
                    documents.append(
                        _metric_document(metric.name, metric.unit or "", metric_type, dataset, point,
                                         resource_fields, resource_key)
                    )
    return documents


def _metric_document(
    name: str,
    unit: str,
    metric_type: str,
    dataset: str,
    point: Any,
    resource_fields: dict[str, Any],
    resource_key: str,
) -> Document:
    labels = {str(k): _label_value(v) for k, v in (point.attributes or {}).items()}
    body: dict[str, Any] = {
        "@timestamp": iso_timestamp(point.time_unix_nano),
        "metric": {"name": name, "type": metric_type, "unit": unit},
        "labels": labels,
    }
    if isinstance(point, NumberDataPoint):
        body["value"] = point.value
    elif isinstance(point, HistogramDataPoint):
        histogram: dict[str, Any] = {
            "count": point.count,
            "sum": point.sum,
            "bounds": list(point.explicit_bounds),
            "counts": list(point.bucket_counts),
        }
        if point.count:
            histogram["min"] = point.min
            histogram["max"] = point.max
        body["histogram"] = histogram
        body["start_timestamp"] = iso_timestamp(point.start_time_unix_nano)
    body.update(resource_fields)
    doc_id = deterministic_id(METRICS, dataset, name, str(point.time_unix_nano), _series_key(labels), resource_key)
    return Document(METRIC, METRICS, dataset, doc_id, body)


def _label_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def documents_from_logs(batch: Iterable[Any]) -> list[Document]:
    """From SDK `ReadableLogRecord`s whose body is the record's mapping (see `pipeline.py`)."""
    documents: list[Document] = []
    for readable in batch:
        record = readable.log_record
        body_in = record.body if isinstance(record.body, Mapping) else {"message": record.body}
        timestamp_ns = int(record.timestamp or record.observed_timestamp or 0)
        resource_fields, resource_key = _resource_fields(dict(readable.resource.attributes))
        body: dict[str, Any] = {"@timestamp": iso_timestamp(timestamp_ns)}
        body.update(_plain(body_in))
        body.update(resource_fields)
        event_name = record.event_name or ""
        if event_name == REQUEST_EVENT:
            kind, dataset = REQUEST, "requests"
            identity: Sequence[str] = (str(body_in.get("request_id", "")),)
        elif event_name == ACTION_EVENT:
            kind, dataset = ACTION, "actions"
            identity = tuple(
                str(body_in.get(key, "")) for key in ("rule", "knob", "outcome", "old", "new", "reason")
            )
        else:
            kind, dataset = ACTION, "events"
            identity = (json.dumps(body_in, sort_keys=True, default=str),)
        doc_id = deterministic_id(LOGS, dataset, str(timestamp_ns), *identity, resource_key)
        documents.append(Document(kind, LOGS, dataset, doc_id, body))
    return documents


def _plain(value: Any) -> Any:
    """OTel AnyValue (tuples, bytes, mapping proxies) as plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value
