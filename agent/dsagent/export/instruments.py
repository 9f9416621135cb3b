"""Maps the agent's records onto OpenTelemetry instruments.

Samples (already aggregated by their sources, base units) become observable gauges and counters that
report the newest value of each series once per collection: a series with no fresh sample since the last
collection is omitted, never repeated or reported as 0. Request records feed the GenAI semantic-
convention histograms with explicit buckets (`gen_ai.server.request.duration`, `..time_to_first_token`,
`..time_per_output_token`, `gen_ai.client.token.usage`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

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
    """Latest-value tables behind observable instruments, one instrument per metric name."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._lock = threading.Lock()
        self._fresh: dict[str, dict[Labels, float]] = {}
        self._kinds: dict[str, str] = {}

    def record(self, samples: Iterable[Sample]) -> None:
        new_instruments: list[Sample] = []
        fresh_by_name = self._fresh  # hot path (hundreds of samples per tick): locals, one dict lookup each
        with self._lock:
            for sample in samples:
                fresh = fresh_by_name.get(sample.name)
                if fresh is None:
                    if sample.kind not in ("gauge", "counter"):
                        raise ValueError(
                            f"sample {sample.name!r} has kind {sample.kind!r}; expected 'gauge' or 'counter'"
                        )
                    self._kinds[sample.name] = sample.kind
                    fresh = fresh_by_name[sample.name] = {}
                    new_instruments.append(sample)
                fresh[sample.labels] = sample.value
        for sample in new_instruments:
            callback = self._callback_for(sample.name)
            if sample.kind == "counter":
                self._meter.create_observable_counter(sample.name, [callback], unit=otel_unit(sample))
            else:
                self._meter.create_observable_gauge(sample.name, [callback], unit=otel_unit(sample))

    def _callback_for(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        # Label tuple -> attribute dict, built once per series: the SDK only reads the attributes.
        attributes_by_labels: dict[Labels, dict[str, str]] = {}

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                fresh, self._fresh[name] = self._fresh[name], {}
            if len(attributes_by_labels) > _MAX_CACHED_LABEL_SETS:
                attributes_by_labels.clear()  # label churn (e.g. a knob's value label): start over
            observations = []
            for labels, value in fresh.items():
                attributes = attributes_by_labels.get(labels)
                if attributes is None:
                    attributes = attributes_by_labels[labels] = dict(labels)
                observations.append(Observation(value, attributes))
            return observations

        return observe


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
