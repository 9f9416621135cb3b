"""Samples become the points the SDK's observable instruments produced, built without the SDK: gauges
without a start time, cumulative monotonic counters whose start time stays the first collection's, fresh
series only, one attribute dict per series, and the same OTLP encoding."""

from __future__ import annotations

import pytest
from dsagent.export.instruments import SampleInstruments
from dsagent.samples import Sample, make_labels
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import AggregationTemporality, Gauge, Sum
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

RESOURCE = Resource.create({"service.name": "dsagent"})
SCOPE = InstrumentationScope("dsagent")


def metrics_by_name(instruments: SampleInstruments, time_ns: int) -> dict[str, object]:
    data = instruments.collect(RESOURCE, SCOPE, time_ns)
    assert data is not None
    [resource_metrics] = data.resource_metrics
    assert resource_metrics.resource is RESOURCE
    [scope_metrics] = resource_metrics.scope_metrics
    assert scope_metrics.scope is SCOPE
    return {metric.name: metric for metric in scope_metrics.metrics}


def test_gauges_and_counters_look_like_the_sdks_points() -> None:
    instruments = SampleInstruments()
    gpu = make_labels({"gpu_index": "0"})
    instruments.record([Sample("dsagent_gpu_utilization_ratio", gpu, 0.5, 1.0),
                        Sample("dsagent_engine_restarts_total", (), 2.0, 1.0, "counter")])
    first = metrics_by_name(instruments, 1_000)
    gauge = first["dsagent_gpu_utilization_ratio"]
    assert isinstance(gauge.data, Gauge) and gauge.unit == "1" and gauge.description == ""  # type: ignore[attr-defined]
    [point] = gauge.data.data_points  # type: ignore[attr-defined]
    assert point.attributes == {"gpu_index": "0"} and point.value == 0.5
    assert point.start_time_unix_nano is None and point.time_unix_nano == 1_000
    counter = first["dsagent_engine_restarts_total"]
    assert isinstance(counter.data, Sum) and counter.data.is_monotonic  # type: ignore[attr-defined]
    assert counter.data.aggregation_temporality is AggregationTemporality.CUMULATIVE  # type: ignore[attr-defined]
    assert counter.data.data_points[0].start_time_unix_nano == 1_000  # type: ignore[attr-defined]

    instruments.record([Sample("dsagent_engine_restarts_total", (), 3.0, 2.0, "counter")])
    second = metrics_by_name(instruments, 2_000)
    assert list(second) == ["dsagent_engine_restarts_total"]  # the gauge had no fresh sample: omitted, not 0
    [point] = second["dsagent_engine_restarts_total"].data.data_points  # type: ignore[attr-defined]
    assert (point.start_time_unix_nano, point.time_unix_nano, point.value) == (1_000, 2_000, 3.0)
    assert instruments.collect(RESOURCE, SCOPE, 3_000) is None  # nothing fresh at all


def test_the_points_encode_as_otlp_and_kinds_are_checked() -> None:
    instruments = SampleInstruments()
    instruments.record([Sample("a_bytes", (), 1.0, 1.0), Sample("b_total", (), 1.0, 1.0, "counter")])
    data = instruments.collect(RESOURCE, SCOPE, 5_000)
    assert data is not None
    request = encode_metrics(data)
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert metrics["a_bytes"].unit == "By" and metrics["a_bytes"].gauge.data_points[0].as_double == 1.0
    assert metrics["b_total"].sum.is_monotonic and metrics["b_total"].sum.data_points[0].start_time_unix_nano == 5_000
    with pytest.raises(ValueError, match="expected 'gauge' or 'counter'"):
        instruments.record([Sample("c", (), 1.0, 1.0, "histogram")])
