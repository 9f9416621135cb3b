"""SourcesConfig validation and build_sources: which sources a config gives, fake GPU following the engine."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from dsagent.otlp_listener import build_otlp_receiver
from dsagent.sources.base import Source
from dsagent.sources.config import SourcesConfig
from dsagent.sources.engine_scrape import EngineScrapeSource
from dsagent.sources.factory import build_sources, engine_driven_load
from dsagent.sources.gpu import GpuSource
from dsagent.sources.host import HostSource
from pydantic import ValidationError


def test_defaults_work_without_a_gpu() -> None:
    config = SourcesConfig()
    assert config.gpu.backend == "auto"
    assert (config.otlp_receiver.host, config.otlp_receiver.port) == ("127.0.0.1", 0)  # own port, loopback
    assert config.engine.metrics_path == "/metrics"
    sources = build_sources(config, "http://127.0.0.1:8000", lambda: None)
    assert [type(s) for s in sources] == [GpuSource, HostSource, EngineScrapeSource]
    assert all(isinstance(s, Source) for s in sources)
    for source in sources:
        source.close()


def test_gpu_off_and_no_engine_url() -> None:
    sources = build_sources(SourcesConfig.model_validate({"gpu": {"backend": "off"}}), None, lambda: None)
    assert [type(s) for s in sources] == [HostSource]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"gpu": {"backend": "cuda"}}, "backend"),
        ({"gpu": {"fake_gpu_count": 0}}, "fake_gpu_count"),
        ({"gpu": {"backend": "fake", "fake_trace": "/nonexistent/trace.jsonl"}}, "fake_trace"),
        ({"engine": {"metrics_path": "metrics"}}, "metrics_path"),
        ({"engine": {"timeout_seconds": 0}}, "timeout_seconds"),
        ({"otlp_receiver": {"port": 70000}}, "port"),
        ({"host": {"enabld": True}}, "enabld"),
    ],
)
def test_bad_config_names_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        SourcesConfig.model_validate(raw)


def test_fake_trace_replays_through_the_gpu_source(two_gpu_trace: Path) -> None:
    config = SourcesConfig.model_validate({"gpu": {"backend": "fake", "fake_trace": str(two_gpu_trace)}, "host": {"enabled": False}})
    (gpu,) = build_sources(config, None, lambda: None)
    assert {s.label("gpu_index") for s in gpu.collect()} == {"0", "1"}


def test_eight_simulated_gpus() -> None:
    config = SourcesConfig.model_validate({"gpu": {"backend": "fake", "fake_gpu_count": 8}, "host": {"enabled": False}})
    (gpu,) = build_sources(config, None, lambda: None)
    assert len({s.label("gpu_uuid") for s in gpu.collect()}) == 8


def test_simulated_gpu_follows_the_engines_running_requests() -> None:
    running = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            text=(
                f"vllm:num_requests_running {running[0]}\n"
                'dssidecar_knob_value{knob="max_batch_size"} 4\n'
                f"vllm:kv_cache_usage_perc {running[0] / 8}\n"
            ),
        )

    engine = EngineScrapeSource("http://127.0.0.1:9", transport=httpx.MockTransport(handler))
    load = engine_driven_load(engine)
    assert load().compute_ratio == 0.0  # nothing scraped yet: idle
    engine.collect()
    assert load().compute_ratio == 0.0
    running[0] = 2
    engine.collect()
    assert load().compute_ratio == pytest.approx(0.5) and load().memory_ratio == pytest.approx(0.25)
    running[0] = 9
    engine.collect()
    assert load().compute_ratio == 1.0


def test_build_sources_wires_the_engine_into_the_simulated_gpu() -> None:
    config = SourcesConfig.model_validate({"gpu": {"backend": "fake", "fake_gpu_count": 1}, "host": {"enabled": False}})
    gpu, engine = build_sources(config, "http://127.0.0.1:1", lambda: None)
    assert isinstance(engine, EngineScrapeSource)
    utilization = [s.value for s in gpu.collect() if s.name == "dsagent_gpu_utilization_ratio"]
    assert utilization == [0.0]  # the engine was never scraped: the simulated GPU idles
    engine.close()


def test_otlp_receiver_disabled_gives_none() -> None:
    config = SourcesConfig.model_validate({"otlp_receiver": {"enabled": False}})
    assert build_otlp_receiver(config.otlp_receiver, lambda records: None) is None
