"""Maps the agent's records onto OpenTelemetry instruments.

Samples (already aggregated by their sources, base units) become gauge and cumulative counter points
with the newest value of each series once per collection (built directly, see SampleInstruments): a series with no fresh sample since the last
collection is omitted, never repeated or reported as 0. Request records feed the GenAI semantic-
convention histograms with explicit buckets (`gen_ai.server.request.duration`, `..time_to_first_token`,
`..time_per_output_token`, `gen_ai.client.token.usage`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from dsagent.export.config import HistogramBuckets
from dsagent.samples import Labels, RequestRecord, Sample

REQUEST_DURATION = "gen_ai.server.request.duration"
TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"
TOKEN_USAGE = "gen_ai.client.token.usage"

# Per instrument; more label sets than this means churn, not a fixed fleet of series.
_MAX_CACHED_LABEL_SETS = 10_000
_OTEL_UNITS = {"seconds": "s", "bytes": "By", "ratio": "1", "watts": "W", "hertz": "Hz", "celsius": "Cel"}


def histogram_views(buckets: HistogramBuckets) -> list[View]:
    """Explicit bucket boundaries for the four GenAI histograms."""
    return [
        View(instrument_name=REQUEST_DURATION,
             aggregation=ExplicitBucketHistogramAggregation(boundaries=buckets.latency_seconds)),
        View(instrument_name=TIME_TO_FIRST_TOKEN,
             aggregation=ExplicitBucketHistogramAggregation(boundaries=buckets.latency_seconds)),
        View(instrument_name=TIME_PER_OUTPUT_TOKEN,
             aggregation=ExplicitBucketHistogramAggregation(boundaries=buckets.token_time_seconds)),
        View(instrument_name=TOKEN_USAGE,
             aggregation=ExplicitBucketHistogramAggregation(boundaries=buckets.token_count)),
    ]


def otel_unit(sample: Sample) -> str:
    """UCUM-ish unit for a sample: its declared unit, else guessed from the name's suffix."""
    unit = sample.unit or sample.name.rsplit("_", 1)[-1]
    return _OTEL_UNITS.get(unit, sample.unit)


class SampleInstruments:
    """Latest-value tables of the agent's samples, turned into OpenTelemetry MetricsData at each collection.

    Why not the SDK's observable instruments: the samples are already aggregated (one last value per
    series), and the SDK's measurement path (a Measurement and an attribute hash per series per collection,
    then an aggregation that keeps the last value) was about half of the export job's CPU. The points built
    here are the ones those instruments produced: gauges as Gauge points without a start time, counters as
    cumulative monotonic Sum points whose start time is the first collection that saw the series. A series
    with no fresh sample since the last collection is omitted, never repeated or reported as 0.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fresh: dict[str, dict[Labels, float]] = {}
        self._kinds: dict[str, str] = {}
        self._units: dict[str, str] = {}
        # label tuple -> attribute dict, built once per series (the exporters only read it)
        self._attributes: dict[str, dict[Labels, dict[str, str]]] = {}
        self._counter_start_ns: dict[str, dict[Labels, int]] = {}

    def record(self, samples: Iterable[Sample]) -> None:
        fresh_by_name = self._fresh  # hot path (hundreds of samples per tick): locals, one dict lookup each
        with self._lock:
            for sample in samples:
                fresh = fresh_by_name.get(sample.name)
                if fresh is None:
                    if sample.name not in self._kinds:
                        if sample.kind not in ("gauge", "counter"):
                            raise ValueError(
                                f"sample {sample.name!r} has kind {sample.kind!r}; expected 'gauge' or 'counter'"
                            )
                        self._kinds[sample.name] = sample.kind
                        self._units[sample.name] = otel_unit(sample)
                    fresh = fresh_by_name[sample.name] = {}
                fresh[sample.labels] = sample.value

    def collect(self, resource: Resource, scope: InstrumentationScope, time_unix_nano: int) -> MetricsData | None:
        """The fresh series as one MetricsData (None when nothing was recorded since the last collection)."""
        with self._lock:
            taken, self._fresh = self._fresh, {}
        metrics = []
        for name, fresh in taken.items():
            attributes_by_labels = self._attributes.setdefault(name, {})
            if len(attributes_by_labels) > _MAX_CACHED_LABEL_SETS:
                attributes_by_labels.clear()  # label churn (e.g. a knob's value label): start over
            points = []
            counter = self._kinds[name] == "counter"
            starts = self._counter_start_ns.setdefault(name, {}) if counter else {}
            if counter and len(starts) > _MAX_CACHED_LABEL_SETS:
                starts.clear()
            for labels, value in fresh.items():
                attributes = attributes_by_labels.get(labels)
                if attributes is None:
                    attributes = attributes_by_labels[labels] = dict(labels)
                start = starts.setdefault(labels, time_unix_nano) if counter else None
                points.append(NumberDataPoint(attributes=attributes, start_time_unix_nano=start,  # type: ignore[arg-type]
                                              time_unix_nano=time_unix_nano, value=value, exemplars=[]))
            data: Gauge | Sum = Sum(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE,
                                    is_monotonic=True) if counter else Gauge(data_points=points)
            metrics.append(Metric(name=name, description="", unit=self._units[name], data=data))
        if not metrics:
            return None
        return MetricsData(resource_metrics=[ResourceMetrics(
            resource=resource, scope_metrics=[ScopeMetrics(scope=scope, metrics=metrics, schema_url="")],
            schema_url="")])


class RequestInstruments:
    def __init__(self, meter: Meter) -> None:
        self._duration = meter.create_histogram(REQUEST_DURATION, unit="s",
                                                description="Time from request arrival to last token")
        self._ttft = meter.create_histogram(TIME_TO_FIRST_TOKEN, unit="s",
                                            description="Time to generate the first token")
        self._tpot = meter.create_histogram(TIME_PER_OUTPUT_TOKEN, unit="s",
                                            description="Time per output token after the first")
        self._tokens = meter.create_histogram(TOKEN_USAGE, unit="{token}",
                                              description="Input and output tokens per request")

    def record(self, records: Sequence[RequestRecord]) -> None:
        for record in records:
            attributes: dict[str, Any] = {"gen_ai.operation.name": str(record.attributes.get(
                "gen_ai.operation.name", "chat"))}
            if record.model:
                attributes["gen_ai.request.model"] = record.model
            if record.status_code is not None and record.status_code >= 400:
                attributes["error.type"] = str(record.status_code)
            if record.generation_time_seconds is not None:
                self._duration.record(record.generation_time_seconds, attributes)
            if record.time_to_first_token_seconds is not None:
                self._ttft.record(record.time_to_first_token_seconds, attributes)
            if record.time_per_output_token_seconds is not None:
                self._tpot.record(record.time_per_output_token_seconds, attributes)
            if record.prompt_length is not None:
                self._tokens.record(record.prompt_length, {**attributes, "gen_ai.token.type": "input"})
            if record.tokens_generated is not None:
                self._tokens.record(record.tokens_generated, {**attributes, "gen_ai.token.type": "output"})
