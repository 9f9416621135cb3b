"""SLO signals from request records: qps, quantiles, histograms; missing data is omitted, never 0."""

from __future__ import annotations

import pytest
from dsagent.samples import RequestRecord
from dsagent.slo import RequestStats, quantile
from hypothesis import given
from hypothesis import strategies as st


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(i: int, latency: float | None = 0.2, ttft: float | None = 0.01, tokens: int = 10) -> RequestRecord:
    return RequestRecord(f"r{i}", 0.0, model="m", tokens_generated=tokens, generation_time_seconds=latency,
                         time_to_first_token_seconds=ttft, finish_reason="stop")


def test_qps_and_quantiles_over_the_window() -> None:
    clock = Clock()
    stats = RequestStats(window_seconds=10, clock=clock)
    clock.now += 10
    stats.record([record(i, latency=0.1 * (i + 1)) for i in range(10)])
    snap = stats.snapshot()
    assert snap["qps"] == pytest.approx(1.0)
    assert snap["latency_p50_seconds"] == pytest.approx(0.55)
    assert snap["latency_p99_seconds"] == pytest.approx(0.991)
    assert snap["output_tokens_per_second"] == pytest.approx(10.0)
    clock.now += 11  # the window moves past them
    later = stats.snapshot()
    assert later["qps"] == 0 and later["latency_p99_seconds"] is None
    assert later["requests_total"] == 10


def test_no_requests_means_no_quantile_samples() -> None:
    stats = RequestStats(clock=Clock())
    names = {s.name for s in stats.samples(1000.0)}
    assert "inference_qps" in names
    assert "inference_latency_p99_seconds" not in names and "inference_ttft_p50_seconds" not in names


def test_histogram_samples_are_cumulative_with_inf_bucket() -> None:
    stats = RequestStats(buckets=(0.1, 1.0), clock=Clock())
    stats.record([record(1, latency=0.05), record(2, latency=0.5), record(3, latency=5.0), record(4, latency=None)])
    samples = {(s.name, s.label("le")): s.value for s in stats.samples(1000.0)}
    assert samples[("inference_latency_seconds_bucket", "0.1")] == 1
    assert samples[("inference_latency_seconds_bucket", "1.0")] == 2
    assert samples[("inference_latency_seconds_bucket", "+Inf")] == 3
    assert samples[("inference_latency_seconds_count", "")] == 3  # the record without latency is not observed
    assert samples[("inference_latency_seconds_sum", "")] == pytest.approx(5.55)
    finished = [s for s in stats.samples(1000.0) if s.name == "inference_requests_total"]
    assert [(s.label("finish_reason"), s.value) for s in finished] == [("stop", 4.0)]


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=50), st.floats(0, 1))
def test_quantile_lies_between_min_and_max(values: list[float], q: float) -> None:
    ordered = sorted(values)
    assert ordered[0] <= quantile(ordered, q) <= ordered[-1]


def test_quantile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        quantile([], 0.5)
