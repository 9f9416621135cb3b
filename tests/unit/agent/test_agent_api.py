"""The agent's /metrics text (parsed back with Prometheus' own parser), /api/status and /healthz."""

from __future__ import annotations

import math

import httpx
import pytest
from dsagent.api import ApiServer, build_api, render_prometheus
from dsagent.samples import Sample, make_labels
from dsagent.slo import RequestStats
from dsagent.store import TimeSeriesStore
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families


def parse(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_histogram_counter_and_gauge_families_round_trip() -> None:
    stats = RequestStats(buckets=(0.1, 1.0), clock=lambda: 100.0)
    from dsagent.samples import RequestRecord

    stats.record([RequestRecord("a", 0, generation_time_seconds=0.05, time_to_first_token_seconds=0.01),
                  RequestRecord("b", 0, generation_time_seconds=2.0)])
    samples = stats.samples(100.0) + [
        Sample("dsagent_gpu_utilization_ratio", make_labels({"gpu_index": "0", "gpu_name": 'A "quoted" \\ name'}), 0.5, 100),
        Sample("dsagent_engine_restarts_total", (), 2, 100, "counter"),
    ]
    families = parse(render_prometheus(samples))
    latency = families["inference_latency_seconds"]
    assert latency.type == "histogram"  # type: ignore[attr-defined]
    buckets = {s.labels["le"]: s.value for s in latency.samples if s.name.endswith("_bucket")}  # type: ignore[attr-defined]
    assert buckets == {"0.1": 1.0, "1.0": 1.0, "+Inf": 2.0}
    assert families["dsagent_engine_restarts"].type == "counter"  # type: ignore[attr-defined]
    gpu = families["dsagent_gpu_utilization_ratio"].samples[0]  # type: ignore[attr-defined]
    assert gpu.labels["gpu_name"] == 'A "quoted" \\ name' and gpu.value == 0.5
    assert families["inference_qps"].samples[0].value == pytest.approx(2 / 1.0)  # type: ignore[attr-defined]


@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True),
                          st.text(max_size=10), st.floats(allow_nan=False)), max_size=20))
def test_any_gauges_render_to_parseable_text(rows: list[tuple[str, str, float]]) -> None:
    samples = [Sample(f"m_{name}", make_labels({"l": label}), value, 1.0) for name, label, value in rows]
    latest = {(s.name, s.labels): s for s in samples}  # one sample per series, as the store gives
    families = parse(render_prometheus(list(latest.values())))
    parsed = {(s.name, s.labels["l"]): s.value for f in families.values() for s in f.samples}  # type: ignore[attr-defined]
    for (name, labels), sample in latest.items():
        value = parsed[(name, dict(labels)["l"])]
        assert value == sample.value or (math.isinf(value) and math.isinf(sample.value))


def test_api_endpoints_over_real_http() -> None:
    store = TimeSeriesStore()
    import time

    store.append([Sample("inference_qps", (), 3.5, time.time())])
    app = build_api(store, lambda: {"engine": {"state": "ready"}})
    server = ApiServer(app, "127.0.0.1", 0)
    server.start()
    try:
        assert server.port != 0
        with httpx.Client(base_url=server.url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/api/status").json() == {"engine": {"state": "ready"}}
            response = client.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert parse(response.text)["inference_qps"].samples[0].value == 3.5  # type: ignore[attr-defined]
    finally:
        server.stop()


def test_stale_series_are_not_exposed() -> None:
    store = TimeSeriesStore(retention_seconds=10_000)
    import time

    now = time.time()
    store.append([Sample("old_gauge", (), 1, now - 600), Sample("new_gauge", (), 1, now)])
    app = build_api(store, dict, metrics_lookback_seconds=60)
    transport = httpx.ASGITransport(app=app)

    async def fetch() -> str:
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return (await client.get("/metrics")).text

    import asyncio

    text = asyncio.run(fetch())
    assert "new_gauge" in text and "old_gauge" not in text


def test_busy_port_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ApiServer(build_api(TimeSeriesStore(), dict), "127.0.0.1", port)
        with pytest.raises(OSError, match=f"could not listen on 127.0.0.1:{port}"):
            server.start()
