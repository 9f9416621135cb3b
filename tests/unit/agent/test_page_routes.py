"""The live page's routes: the HTML and its packaged static files (uPlot and its licence included), and
the stream event's content (status, Prometheus-format answers, errors per query, rule state)."""

from __future__ import annotations

from typing import Any

from dsagent.page.routes import STATIC_FILES, build_page_router, page_event
from dsagent.samples import Sample, make_labels
from dsagent.store import TimeSeriesStore
from fastapi import FastAPI
from fastapi.testclient import TestClient


def store_with_gpu() -> TimeSeriesStore:
    store = TimeSeriesStore(600, 100)
    store.append([Sample("dsagent_gpu_utilization_ratio", make_labels({"gpu_index": "0"}), 0.5, 100.0)])
    return store


def test_index_and_every_static_file_are_served_from_the_package() -> None:
    app = FastAPI()
    app.include_router(build_page_router(store_with_gpu(), lambda: {}))
    client = TestClient(app)
    index = client.get("/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    for name, media_type in STATIC_FILES.items():
        response = client.get(f"/page/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == media_type, name
        assert f"/page/static/{name}" in index.text or name in ("page.js", "uPlot.LICENSE") or name.endswith(".css")
    assert "MIT" in client.get("/page/static/uPlot.LICENSE").text
    assert client.get("/page/static/../../api.py").status_code == 404
    assert client.get("/page/static/secret.txt").status_code == 404
    too_many = client.get("/api/page/events", params=[("query", "up")] * 40)
    assert too_many.status_code == 400 and too_many.json()["errorType"] == "bad_data"


def test_stream_event_holds_status_query_answers_and_per_query_errors() -> None:
    event = page_event(store_with_gpu(), lambda: {"engine": {"state": "ready"}}, None,
                       ["dsagent_gpu_utilization_ratio", "foo{"], True, 101.0)
    assert event["status"] == {"engine": {"state": "ready"}}
    answer = event["queries"]["dsagent_gpu_utilization_ratio"]
    assert answer["status"] == "success" and answer["data"]["resultType"] == "vector"
    assert answer["data"]["result"][0]["value"] == [101.0, "0.5"]
    assert event["queries"]["foo{"]["status"] == "error" and event["queries"]["foo{"]["errorType"] == "bad_data"
    assert event["rules"] is None  # "no rules loaded"
    assert event["retention_seconds"] == 600


def test_stream_event_reports_a_failing_status_and_rule_manager_instead_of_raising() -> None:
    def broken_status() -> dict[str, Any]:
        raise RuntimeError("pipeline closed")

    class BrokenRules:
        def prometheus_rules(self) -> dict[str, Any]:
            raise RuntimeError("reloading")

        def prometheus_alerts(self) -> dict[str, Any]:
            return {"alerts": []}

    event = page_event(store_with_gpu(), broken_status, lambda: BrokenRules(), [], True, 101.0)
    assert event["status_error"] == "RuntimeError: pipeline closed"
    assert event["rules"] == {"error": "RuntimeError: reloading"}
    assert "rules" not in page_event(store_with_gpu(), lambda: {}, None, [], False, 101.0)


def test_the_stream_needs_the_server_token_beyond_loopback_like_api_status() -> None:
    from dsagent.api import build_api
    from dsagent.api_access import require_token_beyond_loopback

    app = build_api(store_with_gpu(), lambda: {"agent": {"data_dir": "/secret"}})
    require_token_beyond_loopback(app, "t0ken", "http://0.0.0.0:9464")
    client = TestClient(app)
    assert client.get("/api/page/events").status_code == 401
    assert client.get("/").status_code == 200  # the page itself is static
