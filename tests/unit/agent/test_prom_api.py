"""The agent's Prometheus HTTP API (/api/v1/*) over the store: selectors with all four matchers, lookback,
range selectors, query_range step alignment, resultType vector/matrix/scalar/string, Prometheus's error
envelope, POST form bodies, /series, /labels, /label/<name>/values, /rules and /alerts."""

from __future__ import annotations

import math
from typing import Any

import pytest
from dsagent.prom_api import (
    BadData,
    build_prom_router,
    fallback_query_instant,
    fallback_query_range,
    format_value,
    parse_duration,
    parse_time,
)
from dsagent.samples import Sample, make_labels
from dsagent.store import TimeSeriesStore
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

NOW = 10_000.0


def gpu(index: str, value: float, t: float, name: str = "dsagent_gpu_utilization_ratio") -> Sample:
    return Sample(name, make_labels({"gpu_index": index, "gpu_name": "sim"}), value, t)


@pytest.fixture()
def store() -> TimeSeriesStore:
    store = TimeSeriesStore(retention_seconds=3600, max_samples_per_series=5000)
    samples = []
    for second in range(0, 121):  # two minutes at 1 Hz ending at NOW
        t = NOW - 120 + second
        samples += [gpu("0", 0.25, t), gpu("1", 0.5 + second / 1000, t), gpu("10", 1.0, t)]
    samples.append(Sample("dsagent_up", (), 1.0, NOW - 1))
    samples.append(Sample("old_series", (), 7.0, NOW - 400))  # beyond the 5-minute lookback
    store.append(samples)
    return store


class FakeRules:
    def prometheus_rules(self) -> dict[str, Any]:
        return {"groups": [{"name": "slo", "file": "slo.yaml", "rules": [
            {"type": "alerting", "name": "P99High", "query": "x > 1", "duration": 300, "state": "pending",
             "alerts": [], "health": "ok", "labels": {}, "annotations": {}}]}]}

    def prometheus_alerts(self) -> dict[str, Any]:
        return {"alerts": [{"labels": {"alertname": "P99High"}, "state": "pending", "value": "2",
                            "activeAt": "2026-12-04T17:00:00Z", "annotations": {}}]}


def client_for(store: TimeSeriesStore, rules: Any = None) -> TestClient:
    app = FastAPI()
    app.include_router(build_prom_router(store, (lambda: rules) if rules is not None else None, clock=lambda: NOW))
    return TestClient(app)


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    return body["data"]


def error(response: Any) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == "error" and body["errorType"] == "bad_data" and body["error"]
    return str(body["error"])


def test_instant_selector_returns_a_vector_at_the_evaluation_time_with_name_and_labels(store: TimeSeriesStore) -> None:
    data = ok(client_for(store).get("/api/v1/query", params={"query": 'dsagent_gpu_utilization_ratio{gpu_index="0"}'}))
    assert data["resultType"] == "vector"
    assert data["result"] == [{"metric": {"__name__": "dsagent_gpu_utilization_ratio", "gpu_index": "0",
                                          "gpu_name": "sim"}, "value": [NOW, "0.25"]}]


@pytest.mark.parametrize(("matcher", "indexes"), [
    ('gpu_index="1"', {"1"}),
    ('gpu_index!="1"', {"0", "10"}),
    ('gpu_index=~"1.*"', {"1", "10"}),
    ('gpu_index=~"1"', {"1"}),  # anchored like PromQL: "10" does not match "1"
    ('gpu_index!~"1.*"', {"0"}),
])
def test_all_four_label_matchers_select_like_promql(store: TimeSeriesStore, matcher: str, indexes: set[str]) -> None:
    data = ok(client_for(store).get("/api/v1/query", params={"query": f"dsagent_gpu_utilization_ratio{{{matcher}}}"}))
    assert {r["metric"]["gpu_index"] for r in data["result"]} == indexes


def test_name_matcher_and_lookback_window(store: TimeSeriesStore) -> None:
    client = client_for(store)
    data = ok(client.get("/api/v1/query", params={"query": '{__name__=~"dsagent_up|old_series"}'}))
    assert [r["metric"]["__name__"] for r in data["result"]] == ["dsagent_up"]  # old_series is 400 s old
    data = ok(client.get("/api/v1/query", params={"query": "old_series", "time": str(NOW - 300)}))
    assert data["result"][0]["value"] == [NOW - 300, "7"]


def test_time_accepts_rfc3339(store: TimeSeriesStore) -> None:
    from datetime import datetime, timezone

    at = datetime.fromtimestamp(NOW - 60, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    data = ok(client_for(store).get("/api/v1/query", params={"query": 'dsagent_gpu_utilization_ratio{gpu_index="1"}',
                                                              "time": at}))
    assert data["result"][0]["value"] == [NOW - 60, format_value(0.5 + 60 / 1000)]


def test_range_selector_in_an_instant_query_is_a_closed_matrix(store: TimeSeriesStore) -> None:
    data = ok(client_for(store).get("/api/v1/query", params={"query": 'dsagent_gpu_utilization_ratio{gpu_index="0"}[10s]'}))
    assert data["resultType"] == "matrix"
    [series] = data["result"]
    # [NOW-10, NOW], both ends included: Prometheus 2.x (the promtool 2.42 the rules suite is proven against)
    assert [t for t, _ in series["values"]] == [NOW - 10 + i for i in range(11)]
    assert {v for _, v in series["values"]} == {"0.25"}


def test_query_range_steps_from_start_by_step_with_latest_sample_at_each_step(store: TimeSeriesStore) -> None:
    start, end = NOW - 100.5, NOW - 50
    data = ok(client_for(store).get("/api/v1/query_range", params={
        "query": 'dsagent_gpu_utilization_ratio{gpu_index="1"}', "start": start, "end": end, "step": "10s"}))
    assert data["resultType"] == "matrix"
    [series] = data["result"]
    times = [t for t, _ in series["values"]]
    assert times == [start + 10 * k for k in range(6)]  # start, start+step, ... <= end (not aligned to the step)
    # the sample at or before each step time: the one at floor(t)
    assert series["values"][0][1] == format_value(0.5 + (math.floor(start) - (NOW - 120)) / 1000)


def test_query_range_leaves_out_steps_beyond_the_lookback(store: TimeSeriesStore) -> None:
    data = ok(client_for(store).get("/api/v1/query_range", params={
        "query": "old_series", "start": NOW - 420, "end": NOW, "step": "60"}))
    [series] = data["result"]
    # sample at NOW-400: visible from NOW-400 to NOW-100 (5 minutes)
    assert [t for t, _ in series["values"]] == [NOW - 360, NOW - 300, NOW - 240, NOW - 180, NOW - 120]


def test_number_literal_is_a_scalar_and_string_literal_a_string(store: TimeSeriesStore) -> None:
    client = client_for(store)
    assert ok(client.get("/api/v1/query", params={"query": "1.5"})) == {"resultType": "scalar", "result": [NOW, "1.5"]}
    assert ok(client.get("/api/v1/query", params={"query": '"hello"'})) == {"resultType": "string", "result": [NOW, "hello"]}


def test_post_form_body_works_like_grafana_sends_it(store: TimeSeriesStore) -> None:
    response = client_for(store).post("/api/v1/query_range", data={
        "query": "dsagent_up", "start": str(NOW - 5), "end": str(NOW), "step": "1"})
    data = ok(response)
    assert [t for t, _ in data["result"][0]["values"]] == [NOW - 1, NOW]


@pytest.mark.parametrize(("params", "fragment"), [
    ({}, '"query"'),
    ({"query": "foo{"}, "parse error"),
    ({"query": "", "start": "1", "end": "2", "step": "1"}, "empty query"),
    ({"query": "up", "start": "10", "end": "5", "step": "1"}, "end timestamp must not be before start"),
    ({"query": "up", "start": "0", "end": "10", "step": "0"}, "zero or negative"),
    ({"query": "up", "start": "0", "end": "100000", "step": "1"}, "11,000 points"),
    ({"query": "up", "start": "0", "end": "10", "step": "ten"}, 'invalid parameter "step"'),
    ({"query": "up", "start": "yesterday", "end": "10", "step": "1"}, 'invalid parameter "start"'),
    ({"query": "up", "start": "0", "end": "10"}, 'invalid parameter "step"'),
])
def test_bad_requests_get_prometheus_error_envelope(store: TimeSeriesStore, params: dict[str, str], fragment: str) -> None:
    path = "/api/v1/query_range" if "start" in params or ("query" in params and params["query"] == "") else "/api/v1/query"
    assert fragment in error(client_for(store).get(path, params=params))


def test_range_vector_in_a_range_query_is_refused(store: TimeSeriesStore) -> None:
    message = error(client_for(store).get("/api/v1/query_range", params={
        "query": "dsagent_up[1m]", "start": NOW - 10, "end": NOW, "step": "1"}))
    assert "range vector" in message


def test_fallback_evaluator_refuses_what_it_cannot_answer_exactly(store: TimeSeriesStore) -> None:
    for text in ("rate(dsagent_up[1m])", "sum(dsagent_up)", "dsagent_up * 2", "dsagent_up @ 100"):
        with pytest.raises(BadData, match="PromQL evaluator"):
            fallback_query_instant(store, text, NOW)
        with pytest.raises(BadData, match="PromQL evaluator"):
            fallback_query_range(store, text, NOW - 10, NOW, 1)


def test_series_labels_and_label_values(store: TimeSeriesStore) -> None:
    client = client_for(store)
    series = ok(client.get("/api/v1/series", params=[("match[]", 'dsagent_gpu_utilization_ratio{gpu_index=~"1.*"}'),
                                                     ("match[]", "dsagent_up")]))
    assert series == [{"__name__": "dsagent_gpu_utilization_ratio", "gpu_index": "1", "gpu_name": "sim"},
                      {"__name__": "dsagent_gpu_utilization_ratio", "gpu_index": "10", "gpu_name": "sim"},
                      {"__name__": "dsagent_up"}]
    assert "match[]" in error(client.get("/api/v1/series"))
    # a time range leaves out series without samples in it
    recent = ok(client.get("/api/v1/series", params={"match[]": '{__name__=~".+"}', "start": NOW - 10, "end": NOW}))
    assert {s["__name__"] for s in recent} == {"dsagent_gpu_utilization_ratio", "dsagent_up"}
    assert ok(client.get("/api/v1/labels")) == ["__name__", "gpu_index", "gpu_name"]
    assert ok(client.get("/api/v1/label/gpu_index/values")) == ["0", "1", "10"]
    assert ok(client.get("/api/v1/label/__name__/values")) == ["dsagent_gpu_utilization_ratio", "dsagent_up",
                                                                "old_series"]
    assert ok(client.get("/api/v1/label/gpu_index/values", params={"match[]": "dsagent_up"})) == []


def test_rules_and_alerts_are_empty_without_rules_and_the_managers_data_with(store: TimeSeriesStore) -> None:
    assert ok(client_for(store).get("/api/v1/rules")) == {"groups": []}
    assert ok(client_for(store).get("/api/v1/alerts")) == {"alerts": []}
    client = client_for(store, FakeRules())
    assert ok(client.get("/api/v1/rules"))["groups"][0]["rules"][0]["state"] == "pending"
    assert ok(client.get("/api/v1/alerts"))["alerts"][0]["labels"]["alertname"] == "P99High"


def test_durations_and_times_parse_like_prometheus() -> None:
    assert parse_duration("15s", "step") == 15 and parse_duration("1m30s", "step") == 90
    assert parse_duration("500ms", "step") == 0.5 and parse_duration("2.5", "step") == 2.5
    for bad in ("", "1x", "s", "nan"):
        with pytest.raises(BadData, match="step"):
            parse_duration(bad, "step")
    assert parse_time("1700000000.5", "time") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20Z", "time") == 1700000000.0


def test_values_are_written_like_go_formats_floats() -> None:
    assert [format_value(v) for v in (1.0, 0.25, 100.0, 1e-05, -2.0, math.nan, math.inf, -math.inf)] == [
        "1", "0.25", "100", "0.00001", "-2", "NaN", "+Inf", "-Inf"]


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_formatted_values_parse_back_exactly(value: float) -> None:
    assert float(format_value(value)) == value


def test_fallback_range_selector_includes_both_ends_like_the_evaluator(store: TimeSeriesStore) -> None:
    data = fallback_query_instant(store, 'dsagent_gpu_utilization_ratio{gpu_index="0"}[10s]', NOW)
    assert [t for t, _ in data["result"][0]["values"]] == [NOW - 10 + i for i in range(11)]


def test_fallback_answers_selectors_the_same_as_the_api(store: TimeSeriesStore) -> None:
    client = client_for(store)
    for text in ('dsagent_gpu_utilization_ratio{gpu_index=~"1.*"}', "dsagent_up", "2.5"):
        assert fallback_query_instant(store, text, NOW) == ok(client.get("/api/v1/query", params={"query": text}))
    ranged = ok(client.get("/api/v1/query_range", params={
        "query": 'dsagent_gpu_utilization_ratio{gpu_index="1"}', "start": NOW - 30, "end": NOW, "step": "7"}))
    assert fallback_query_range(store, 'dsagent_gpu_utilization_ratio{gpu_index="1"}', NOW - 30, NOW, 7) == ranged


def test_metadata_and_exemplars_answer_what_grafana_asks(store: TimeSeriesStore) -> None:
    client = client_for(store)
    metadata = ok(client.get("/api/v1/metadata"))
    assert metadata["dsagent_gpu_utilization_ratio"][0]["type"] == "gauge"
    assert metadata["dsagent_gpu_utilization_ratio"][0]["help"]  # from the sources' metadata table
    assert metadata["old_series"] == [{"type": "gauge", "help": "", "unit": ""}]
    assert list(ok(client.get("/api/v1/metadata", params={"metric": "dsagent_up"}))) == ["dsagent_up"]
    assert ok(client.get("/api/v1/query_exemplars", params={"query": "dsagent_up", "start": 0, "end": 1})) == []
