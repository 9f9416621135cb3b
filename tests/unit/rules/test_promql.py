"""The PromQL evaluator: each function and operator on small series, reference checks with hypothesis,
refusal of what is not implemented, and the Prometheus API shapes (query_instant / query_range)."""

from __future__ import annotations

import math

import pytest
from dsagent.rules.promql import (
    PromQLError,
    bucket_quantile,
    evaluate,
    parse,
    quantile_of,
    query_instant,
    query_range,
)
from dsagent.rules.testrunner import TestStorage
from dsagent.samples import Sample, make_labels
from dsagent.store import TimeSeriesStore
from hypothesis import given, settings
from hypothesis import strategies as st


def storage(**series: list[float | None]) -> TestStorage:
    """Each keyword `name__label_value` (or `name`) -> values at 0, 60, 120, ... seconds."""
    st_ = TestStorage()
    for key, values in series.items():
        name, _, rest = key.partition("__")
        labels = {"__name__": name}
        if rest:
            label, _, value = rest.partition("_")
            labels[label] = value
        for i, v in enumerate(values):
            if v is not None:
                st_.append(labels, i * 60_000, float(v))
    return st_


def values(result) -> dict[tuple, float]:  # type: ignore[no-untyped-def]
    return {tuple(sorted(s.labels.items())): s.value for s in result}


def one(result) -> float:  # type: ignore[no-untyped-def]
    [sample] = result
    return sample.value


def test_rate_extrapolates_like_prometheus() -> None:
    s = storage(c=[0, 10, 20, 30, 40, 50, 60])
    assert one(evaluate(s, "rate(c[5m])", 360)) == pytest.approx(1 / 6)
    assert one(evaluate(s, "increase(c[5m])", 360)) == pytest.approx(50.0)
    # window [90, 330] holds 120..300 (+30 over 180 s); 30 s to each edge is under 1.1 sample intervals, so
    # it extrapolates to the whole 240 s window: 30 * 240 / 180
    assert one(evaluate(s, "increase(c[4m])", 330)) == pytest.approx(40.0, rel=1e-12)


def test_rate_handles_counter_resets() -> None:
    s = storage(c=[0, 10, 20, 5, 15])
    # 20 -> 5 is a reset: the increase is 10 + 10 + 5 + 10 = 35 over 4 minutes, extrapolated to 0 at the start
    assert one(evaluate(s, "increase(c[4m])", 240)) == pytest.approx(35.0)
    assert one(evaluate(s, "resets(c[4m])", 240)) == 1.0
    assert one(evaluate(s, "irate(c[4m])", 240)) == pytest.approx(10 / 60)
    assert one(evaluate(s, "idelta(c[4m])", 240)) == 10.0
    assert one(evaluate(s, "delta(c[4m])", 240)) == 15.0


def test_rate_needs_two_samples() -> None:
    assert evaluate(storage(c=[1]), "rate(c[5m])", 60) == []


def test_deriv_and_predict_linear() -> None:
    s = storage(g=[0, 2, 4, 6])
    assert one(evaluate(s, "deriv(g[3m])", 180)) == pytest.approx(2 / 60)
    assert one(evaluate(s, "predict_linear(g[3m], 60)", 180)) == pytest.approx(8.0)


def test_over_time_functions() -> None:
    s = storage(g=[1, 5, 3, 7])
    assert one(evaluate(s, "avg_over_time(g[3m])", 180)) == 4.0
    assert one(evaluate(s, "min_over_time(g[3m])", 180)) == 1.0
    assert one(evaluate(s, "max_over_time(g[3m])", 180)) == 7.0
    assert one(evaluate(s, "sum_over_time(g[3m])", 180)) == 16.0
    assert one(evaluate(s, "count_over_time(g[3m])", 180)) == 4.0
    assert one(evaluate(s, "last_over_time(g[3m])", 180)) == 7.0
    assert one(evaluate(s, "present_over_time(g[3m])", 180)) == 1.0
    assert one(evaluate(s, "quantile_over_time(0.5, g[3m])", 180)) == 4.0
    assert one(evaluate(s, "changes(g[3m])", 180)) == 3.0
    assert one(evaluate(s, "stdvar_over_time(g[3m])", 180)) == pytest.approx(5.0)


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.7, buckets) == pytest.approx(0.1 + 0.4 * (20 / 40))
    assert bucket_quantile(0.99, buckets) == pytest.approx(0.5 + 0.5 * 9 / 10)
    assert math.isnan(bucket_quantile(0.5, [(0.1, 1.0)]))  # no +Inf bucket
    assert bucket_quantile(0.99, [(0.1, 1.0), (math.inf, 10.0)]) == 0.1  # rank in +Inf: the highest finite bound
    assert bucket_quantile(-1, buckets) == -math.inf and bucket_quantile(2, buckets) == math.inf


def test_histogram_quantile_groups_by_labels_without_le() -> None:
    s = TestStorage()
    for route, counts in (("/a", (5, 10)), ("/b", (1, 10))):
        for le, count in zip(("0.5", "+Inf"), counts, strict=True):
            s.append({"__name__": "h_bucket", "le": le, "route": route}, 0, float(count))
    got = values(evaluate(s, "histogram_quantile(0.5, h_bucket)", 0))
    assert got == {(("route", "/a"),): 0.5, (("route", "/b"),): 0.5}


def test_aggregations() -> None:
    s = TestStorage()
    for i, (node, v) in enumerate((("a", 1.0), ("a", 3.0), ("b", 10.0))):
        s.append({"__name__": "m", "node": node, "i": str(i)}, 0, v)
    assert one(evaluate(s, "sum(m)", 0)) == 14.0
    assert values(evaluate(s, "avg by (node) (m)", 0)) == {(("node", "a"),): 2.0, (("node", "b"),): 10.0}
    assert values(evaluate(s, "count without (i) (m)", 0)) == {(("node", "a"),): 2.0, (("node", "b"),): 1.0}
    assert [x.value for x in evaluate(s, "topk(2, m)", 0)] == [10.0, 3.0]
    assert [x.value for x in evaluate(s, "bottomk(1, m)", 0)] == [1.0]
    assert one(evaluate(s, "quantile(0.5, m)", 0)) == 3.0
    assert values(evaluate(s, 'count_values("v", m)', 0)) == {(("v", "1"),): 1.0, (("v", "3"),): 1.0, (("v", "10"),): 1.0}
    assert one(evaluate(s, "max(m)", 0)) == 10.0 and one(evaluate(s, "min(m)", 0)) == 1.0


def test_binary_operators_and_matching() -> None:
    s = TestStorage()
    s.append({"__name__": "req", "job": "api", "code": "200"}, 0, 80.0)
    s.append({"__name__": "req", "job": "api", "code": "500"}, 0, 20.0)
    s.append({"__name__": "total", "job": "api"}, 0, 100.0)
    ratio = values(evaluate(s, "req / on(job) group_left total", 0))
    assert ratio == {(("code", "200"), ("job", "api")): 0.8, (("code", "500"), ("job", "api")): 0.2}
    assert values(evaluate(s, "req > 50", 0)) == {(("__name__", "req"), ("code", "200"), ("job", "api")): 80.0}
    assert values(evaluate(s, "req > bool 50", 0)) == {(("code", "200"), ("job", "api")): 1.0,
                                                        (("code", "500"), ("job", "api")): 0.0}
    assert len(evaluate(s, 'req and on(code) req{code="500"}', 0)) == 1
    assert len(evaluate(s, 'req unless on(code) req{code="500"}', 0)) == 1
    assert len(evaluate(s, "req or total", 0)) == 3
    with pytest.raises(PromQLError, match="many-to-many|multiple matches"):
        evaluate(s, "total / on(job) req", 0)
    assert evaluate(s, "2 * 3 + 1", 0).value == 7.0  # type: ignore[union-attr]
    assert evaluate(s, "1 / 0", 0).value == math.inf  # type: ignore[union-attr]


def test_lookback_staleness_and_offset() -> None:
    s = storage(g=[1, 2, None, None, None, None, None, None])
    assert one(evaluate(s, "g", 60)) == 2.0
    assert one(evaluate(s, "g", 360)) == 2.0  # 5 minutes of lookback
    assert evaluate(s, "g", 361) == []
    assert one(evaluate(s, "g offset 1m", 60)) == 1.0
    stale = TestStorage()
    stale.append({"__name__": "g"}, 0, 1.0)
    stale.append_stale({"__name__": "g"}, 60_000)
    assert evaluate(stale, "g", 120) == []


def test_functions_on_values_and_labels() -> None:
    s = TestStorage()
    s.append({"__name__": "m", "a": "x-1"}, 0, -2.5)
    assert one(evaluate(s, "abs(m)", 0)) == 2.5
    assert one(evaluate(s, "clamp(m, -1, 1)", 0)) == -1.0
    assert one(evaluate(s, "clamp_min(m, 0)", 0)) == 0.0
    assert one(evaluate(s, "clamp_max(m, -3)", 0)) == -3.0
    assert evaluate(s, "scalar(m)", 0).value == -2.5  # type: ignore[union-attr]
    assert one(evaluate(s, "vector(4)", 0)) == 4.0
    assert evaluate(s, "time()", 42).value == 42.0  # type: ignore[union-attr]
    [absent] = evaluate(s, 'absent(nothing{job="j"})', 0)  # type: ignore[misc]
    assert absent.labels == {"job": "j"} and absent.value == 1.0
    assert evaluate(s, "absent(m)", 0) == []
    [replaced] = evaluate(s, 'label_replace(m, "b", "$1", "a", "x-(.*)")', 0)  # type: ignore[misc]
    assert replaced.labels["b"] == "1"


@pytest.mark.parametrize("expr", ["holt_winters(m[5m], 0.5, 0.5)", "m[5m:1m]", "max_over_time(m[5m:1m])"])
def test_unsupported_is_refused_by_name(expr: str) -> None:
    with pytest.raises(PromQLError) as error:
        parse(expr)
    assert "holt_winters" in str(error.value) or "subquer" in str(error.value)


def test_parse_errors_name_the_problem() -> None:
    with pytest.raises(PromQLError, match="parse error"):
        parse("sum(m")
    with pytest.raises(PromQLError, match="unknown function"):
        parse("bogus(m)")
    with pytest.raises(PromQLError, match="expected type matrix"):
        parse("rate(m)")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=30))
def test_over_time_matches_a_plain_reference(points: list[float]) -> None:
    s = storage(g=points)
    at = (len(points) - 1) * 60
    window = f"{len(points) * 60}s"
    assert one(evaluate(s, f"max_over_time(g[{window}])", at)) == max(points)
    assert one(evaluate(s, f"min_over_time(g[{window}])", at)) == min(points)
    assert one(evaluate(s, f"count_over_time(g[{window}])", at)) == len(points)
    assert one(evaluate(s, f"avg_over_time(g[{window}])", at)) == pytest.approx(sum(points) / len(points), rel=1e-9, abs=1e-6)
    assert one(evaluate(s, f"sum_over_time(g[{window}])", at)) == pytest.approx(math.fsum(points), rel=1e-9, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1000), min_size=2, max_size=30))
def test_increase_of_a_monotonic_counter_matches_the_reference(steps: list[int]) -> None:
    cumulative = []
    total = 0
    for step in steps:
        total += step
        cumulative.append(float(total))
    s = storage(c=cumulative)
    end = (len(cumulative) - 1) * 60
    raw = cumulative[-1] - cumulative[0]
    got = evaluate(s, f"increase(c[{end}s])", end)
    # the samples span the whole window [0, end] exactly: nothing to extrapolate
    assert one(got) == pytest.approx(raw, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=1, max_size=20),
       st.floats(min_value=0, max_value=1))
def test_quantile_matches_numpy(values_: list[float], q: float) -> None:
    import numpy

    assert quantile_of(q, values_) == pytest.approx(float(numpy.quantile(values_, q)), rel=1e-9, abs=1e-9)


def test_query_instant_and_range_over_the_agent_store() -> None:
    store = TimeSeriesStore(3600, 1000)
    store.append([Sample("m", make_labels({"a": "1"}), float(i), 1000.0 + i * 10, "counter") for i in range(31)])
    data = query_instant(store, "m", 1300)
    assert data == {"resultType": "vector", "result": [{"metric": {"__name__": "m", "a": "1"}, "value": [1300, "30"]}]}
    assert query_instant(store, "1 + 1", 1300) == {"resultType": "scalar", "result": [1300, "2"]}
    matrix = query_instant(store, "m[20s]", 1300)
    assert matrix["resultType"] == "matrix" and [p[1] for p in matrix["result"][0]["values"]] == ["28", "29", "30"]
    ranged = query_range(store, "rate(m[1m])", 1100, 1300, 100)
    assert ranged["resultType"] == "matrix"
    [series] = ranged["result"]
    assert series["metric"] == {"a": "1"} and [t for t, _ in series["values"]] == [1100, 1200, 1300]
    assert all(float(v) == pytest.approx(0.1) for _, v in series["values"])
    with pytest.raises(PromQLError):
        query_instant(store, "sum(", 1300)
