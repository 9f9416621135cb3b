"""Compatibility: a Prometheus API client from PyPI (prometheus-api-client, the same HTTP calls Grafana's
Prometheus data source makes) reads the agent's API over HTTP and parses every answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from dsagent.api import ApiServer, build_api
from dsagent.samples import Sample, make_labels
from dsagent.store import TimeSeriesStore

prometheus_api_client = pytest.importorskip("prometheus_api_client", reason="dev extra: prometheus-api-client")


@pytest.fixture()
def prometheus() -> Iterator[object]:
    store = TimeSeriesStore(retention_seconds=3600, max_samples_per_series=2000)
    now = time.time()
    samples = []
    for second in range(300):
        t = now - 300 + second
        for index in ("0", "1"):
            samples.append(Sample("dsagent_gpu_utilization_ratio", make_labels({"gpu_index": index}),
                                  0.1 * (int(index) + 1), t))
        samples.append(Sample("inference_requests_total", make_labels({"finish_reason": "stop"}), float(second), t,
                              "counter"))
    store.append(samples)
    server = ApiServer(build_api(store, lambda: {}), port=0)
    server.start()
    try:
        yield prometheus_api_client.PrometheusConnect(url=server.url, disable_ssl=True)
    finally:
        server.stop()


def test_prometheus_api_client_parses_every_answer(prometheus: object) -> None:
    client = prometheus
    assert client.check_prometheus_connection()  # type: ignore[attr-defined]
    assert client.all_metrics() == ["dsagent_gpu_utilization_ratio", "inference_requests_total"]  # type: ignore[attr-defined]
    assert client.get_label_names() == ["__name__", "finish_reason", "gpu_index"]  # type: ignore[attr-defined]
    assert client.get_label_values("gpu_index") == ["0", "1"]  # type: ignore[attr-defined]

    current = client.get_current_metric_value("dsagent_gpu_utilization_ratio", label_config={"gpu_index": "1"})  # type: ignore[attr-defined]
    assert len(current) == 1 and current[0]["metric"]["gpu_index"] == "1" and float(current[0]["value"][1]) == 0.2

    end = datetime.now(timezone.utc)
    ranged = client.custom_query_range("dsagent_gpu_utilization_ratio", start_time=end - timedelta(seconds=60),  # type: ignore[attr-defined]
                                       end_time=end, step="10")
    assert {r["metric"]["gpu_index"] for r in ranged} == {"0", "1"}
    assert all(len(r["values"]) == 7 for r in ranged)  # start, start+10 s, ... end

    chunks = client.get_metric_range_data("inference_requests_total", start_time=end - timedelta(seconds=120),  # type: ignore[attr-defined]
                                          end_time=end, chunk_size=timedelta(seconds=60))
    values = [float(v) for chunk in chunks for _, v in chunk["values"]]
    assert values and values == sorted(values)  # a counter read back in order

    series = client.get_series(end - timedelta(minutes=10), end, params={"match[]": "inference_requests_total"})  # type: ignore[attr-defined]
    assert series == [{"__name__": "inference_requests_total", "finish_reason": "stop"}]

    with pytest.raises(prometheus_api_client.PrometheusApiClientException, match="bad_data|400"):
        client.custom_query("dsagent_gpu_utilization_ratio{")  # type: ignore[attr-defined]
