"""Engine scrape over real HTTP on loopback against a prometheus_client exposition server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dsagent.sources.base import SourceError
from dsagent.sources.engine_scrape import EngineScrapeSource
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@pytest.fixture
def engine() -> Iterator[tuple[str, CollectorRegistry]]:
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}", registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_scrape_of_a_live_engine(engine: tuple[str, CollectorRegistry]) -> None:
    url, registry = engine
    Gauge("vllm:num_requests_running", "running", ["model_name"], registry=registry).labels("demo").set(3)
    Counter("vllm:generation_tokens", "tokens", ["model_name"], registry=registry).labels("demo").inc(42)
    ttft = Histogram(
        "vllm:time_to_first_token_seconds", "ttft", ["model_name"], registry=registry, buckets=(0.01, 0.1, 0.5, 1, 2, 5)
    )
    for seconds in (0.005, 0.05, 0.3, 3.0):
        ttft.labels("demo").observe(seconds)
    source = EngineScrapeSource(url, timeout_seconds=2)
    samples = source.collect()
    values = {(s.name, s.label("le")): s.value for s in samples}
    assert values[("dsagent_engine_up", "")] == 1.0
    assert values[("dsagent_engine_requests_running", "")] == 3.0
    assert values[("dsagent_engine_generation_tokens_total", "")] == 42.0
    assert values[("dsagent_engine_time_to_first_token_seconds_bucket", "0.1")] == 2.0
    assert values[("dsagent_engine_time_to_first_token_seconds_bucket", "+Inf")] == 4.0
    assert values[("dsagent_engine_scrape_duration_seconds", "")] > 0
    source.close()


def test_engine_that_went_away_is_a_source_error_with_up_zero(engine: tuple[str, CollectorRegistry]) -> None:
    url, _ = engine
    source = EngineScrapeSource(url.rsplit(":", 1)[0] + ":1", timeout_seconds=1)  # nothing listens on port 1
    with pytest.raises(SourceError) as raised:
        source.collect()
    assert [(s.name, s.value) for s in raised.value.samples] == [("dsagent_engine_up", 0.0)]
    source.close()
