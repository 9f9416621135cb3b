"""Store: per-series bounds (capacity and retention), selection by matchers, range and instant queries."""

from __future__ import annotations

import threading

import pytest
from dsagent.samples import Sample, make_labels
from dsagent.store import LabelMatcher, RingSeries, TimeSeriesStore
from hypothesis import given, settings
from hypothesis import strategies as st


def gauge(name: str, value: float, t: float, **labels: str) -> Sample:
    return Sample(name, make_labels(labels), value, t)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 20), gaps=st.lists(st.floats(0, 5, allow_nan=False), max_size=80))
def test_ring_never_exceeds_capacity_and_keeps_the_newest_in_order(capacity: int, gaps: list[float]) -> None:
    ring = RingSeries(capacity)
    times = []
    t = 0.0
    for gap in gaps:
        t += gap
        ring.append(t, t * 2)
        times.append(t)
    assert len(ring) == min(capacity, len(times))
    kept = [ring.time_at(i) for i in range(len(ring))]
    assert kept == times[len(times) - len(ring):]
    assert all(ring.value_at(i) == ring.time_at(i) * 2 for i in range(len(ring)))


@settings(max_examples=200, deadline=None)
@given(
    retention=st.floats(0.5, 50),
    capacity=st.integers(1, 30),
    times=st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=60).map(sorted),
)
def test_store_bounds_hold_for_any_sequence(retention: float, capacity: int, times: list[float]) -> None:
    store = TimeSeriesStore(retention_seconds=retention, max_samples_per_series=capacity)
    for t in times:
        store.append([gauge("m", t, t, gpu="0")])
    newest = times[-1]
    windows = store.range_query("m", [], -1, newest + 1)
    points = windows[0].points if windows else []
    assert len(points) <= capacity
    assert all(newest - retention <= pt <= newest for pt, _ in points)
    assert points[-1][0] == newest  # the newest sample is always kept
    expected = [t for t in times if t >= newest - retention][-capacity:]
    assert [pt for pt, _ in points] == expected


@settings(max_examples=100, deadline=None)
@given(
    times=st.lists(st.integers(0, 100), min_size=1, max_size=50).map(sorted),
    start=st.integers(-5, 105), width=st.integers(0, 50),
)
def test_range_query_returns_exactly_the_samples_in_the_closed_window(times: list[int], start: int, width: int) -> None:
    store = TimeSeriesStore(retention_seconds=10_000, max_samples_per_series=1000)
    store.append([gauge("m", t, t) for t in times])
    end = start + width
    windows = store.range_query("m", [], start, end)
    got = [pt for pt, _ in windows[0].points] if windows else []
    assert got == [t for t in times if start <= t <= end]


def test_ring_wraps_after_retention_drop_and_refill() -> None:
    ring = RingSeries(4)
    for t in range(6):
        ring.append(t, t)
    assert ring.drop_older_than(4) == 2
    for t in range(6, 10):
        ring.append(t, t)
    assert [ring.time_at(i) for i in range(len(ring))] == [6, 7, 8, 9]


def test_instant_query_respects_lookback_and_time() -> None:
    store = TimeSeriesStore(retention_seconds=1000)
    store.append([gauge("m", 1, 100, gpu="0"), gauge("m", 2, 110, gpu="0"), gauge("m", 5, 50, gpu="1")])
    at_110 = {s.label("gpu"): s.value for s in store.instant_query("m", [], 110, lookback_seconds=30)}
    assert at_110 == {"0": 2.0}  # gpu 1 is too old for the lookback
    at_105 = store.instant_query("m", [], 105, lookback_seconds=300)
    assert {(s.label("gpu"), s.value) for s in at_105} == {("0", 1.0), ("1", 5.0)}
    assert store.instant_query("m", [], 40, lookback_seconds=300) == []


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        (LabelMatcher("gpu", "=", "0"), {"0"}),
        (LabelMatcher("gpu", "!=", "0"), {"1", "10"}),
        (LabelMatcher("gpu", "=~", "1.*"), {"1", "10"}),
        (LabelMatcher("gpu", "=~", "1"), {"1"}),  # anchored like PromQL
        (LabelMatcher("gpu", "!~", "1|10"), {"0"}),
    ],
)
def test_label_matchers(matcher: LabelMatcher, expected: set[str]) -> None:
    store = TimeSeriesStore()
    store.append([gauge("m", 1, 1, gpu=g) for g in ("0", "1", "10")] + [gauge("other", 1, 1, gpu="0")])
    assert {dict(labels)["gpu"] for _, labels in store.series("m", [matcher])} == expected


def test_name_matcher_selects_across_names_and_missing_label_matches_empty() -> None:
    store = TimeSeriesStore()
    store.append([gauge("a_total", 1, 1), gauge("b_total", 1, 1, x="1"), gauge("c", 1, 1)])
    names = {name for name, _ in store.series(None, [LabelMatcher("__name__", "=~", ".*_total")])}
    assert names == {"a_total", "b_total"}
    assert {name for name, _ in store.series(None, [LabelMatcher("x", "=", "")])} == {"a_total", "c"}


def test_bad_regex_matcher_names_itself() -> None:
    with pytest.raises(ValueError, match=r"gpu=~'\('.*bad regex"):
        LabelMatcher("gpu", "=~", "(")


def test_out_of_order_samples_are_dropped_and_counted() -> None:
    store = TimeSeriesStore()
    assert store.append([gauge("m", 1, 10), gauge("m", 2, 5), gauge("m", 3, 10)]) == 2
    assert store.stats()["out_of_order_dropped"] == 1


def test_expired_series_disappear_from_selection() -> None:
    store = TimeSeriesStore(retention_seconds=10)
    store.append([gauge("old", 1, 0), gauge("new", 1, 5)])
    store.expire(now_seconds=12)
    assert store.names() == ["new"]
    assert store.latest("old") == []


def test_latest_returns_newest_with_kind_and_unit() -> None:
    store = TimeSeriesStore()
    store.append([Sample("c_total", (), 3, 1, "counter", "requests"), Sample("c_total", (), 4, 2, "counter")])
    (latest,) = store.latest("c_total")
    assert (latest.value, latest.timestamp_seconds, latest.kind) == (4.0, 2, "counter")


def test_concurrent_writers_and_readers_stay_consistent() -> None:
    store = TimeSeriesStore(retention_seconds=1e9, max_samples_per_series=50)
    errors: list[BaseException] = []

    def writer(series: str) -> None:
        try:
            for t in range(2000):
                store.append([gauge("m", t, t, s=series)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(500):
                for window in store.range_query("m", [], 0, 1e9):
                    times = [t for t, _ in window.points]
                    assert times == sorted(times) and len(times) <= 50
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(str(i),)) for i in range(3)] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.stats()["samples"] == 150


def test_invalid_bounds_are_rejected() -> None:
    with pytest.raises(ValueError, match="retention_seconds"):
        TimeSeriesStore(retention_seconds=0)
    with pytest.raises(ValueError, match="max_samples_per_series"):
        TimeSeriesStore(max_samples_per_series=0)
