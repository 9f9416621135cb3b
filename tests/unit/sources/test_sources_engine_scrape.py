"""Engine scrape: vLLM/sidecar names -> stable dsagent_engine_* samples, histograms keep le, up 0/1."""

from __future__ import annotations

import math

import httpx
import pytest
from dsagent.samples import Sample
from dsagent.sources.base import SourceError
from dsagent.sources.engine_scrape import EngineScrapeSource, parse_prometheus_text, passthrough_name
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def source_serving(body: str | None, status: int = 200) -> EngineScrapeSource:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/metrics"
        if body is None:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(status, text=body)

    return EngineScrapeSource("http://127.0.0.1:9", transport=httpx.MockTransport(handler), clock=lambda: 50.0)


def one(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.label(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_vllm_scrape_maps_to_stable_names(vllm_metrics_text: str) -> None:
    samples = source_serving(vllm_metrics_text).collect()
    assert one(samples, "dsagent_engine_up") == 1.0
    assert one(samples, "dsagent_engine_requests_running") == 5.0
    assert one(samples, "dsagent_engine_requests_waiting") == 2.0
    assert one(samples, "dsagent_engine_kv_cache_usage_ratio") == 0.4375  # once, though vLLM exports it twice
    assert one(samples, "dsagent_engine_prompt_tokens_total") == 18231.0
    assert one(samples, "dsagent_engine_generation_tokens_total") == 40960.0
    assert one(samples, "dsagent_engine_preemptions_total") == 3.0
    assert one(samples, "dsagent_engine_requests_finished_total", finished_reason="length") == 40.0
    assert one(samples, "dsagent_engine_time_to_first_token_seconds_bucket", le="0.5") == 150.0
    assert one(samples, "dsagent_engine_time_to_first_token_seconds_bucket", le="+Inf") == 160.0
    assert one(samples, "dsagent_engine_e2e_request_latency_seconds_count") == 160.0
    assert one(samples, "dsagent_engine_inter_token_latency_seconds_sum") == pytest.approx(409.6)
    assert one(samples, "dsagent_engine_requests_running", model_name="meta-llama/Llama-3.1-8B-Instruct") == 5.0
    # unmapped names are kept behind engine_; NaN (no data) is omitted, not 0
    assert one(samples, "engine_vllm_cache_config_info", num_gpu_blocks="27000") == 1.0
    assert not any("spec_decode" in s.name for s in samples)
    assert not any(s.name.endswith("_created") for s in samples)
    assert all(s.timestamp_seconds == 50.0 for s in samples)
    kinds = {s.name: s.kind for s in samples}
    assert kinds["dsagent_engine_prompt_tokens_total"] == "counter"
    assert kinds["dsagent_engine_time_to_first_token_seconds_bucket"] == "counter"
    assert kinds["dsagent_engine_requests_running"] == "gauge"


def test_old_vllm_kv_name_is_used_when_it_is_the_only_one() -> None:
    text = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\n"
    assert one(parse_prometheus_text(text, 0.0), "dsagent_engine_kv_cache_usage_ratio") == 0.25


def test_untyped_counters_still_map_and_count_as_counters() -> None:
    samples = parse_prometheus_text("vllm:prompt_tokens_total 12\n", 0.0)
    (sample,) = samples
    assert sample.name == "dsagent_engine_prompt_tokens_total" and sample.kind == "counter"


def test_sidecar_knobs_and_pool_gauges_map(vllm_metrics_text: str) -> None:
    text = (
        "# TYPE dssidecar_knob_value gauge\n"
        'dssidecar_knob_value{knob="max_batch_size"} 16\n'
        "# TYPE dssidecar_knob_info gauge\n"
        'dssidecar_knob_info{knob="precision",value="int8"} 1\n'
        "# TYPE dssidecar_kv_cache_free_blocks gauge\n"
        "dssidecar_kv_cache_free_blocks 100\n"
        "# TYPE dssidecar_runner_swap_seconds gauge\n"
        "dssidecar_runner_swap_seconds 0.5\n"
    )
    source = source_serving(vllm_metrics_text + text)
    samples = source.collect()
    assert one(samples, "dsagent_engine_knob_value", knob="max_batch_size") == 16.0
    assert one(samples, "dsagent_engine_knob_info", knob="precision", value="int8") == 1.0
    assert one(samples, "dsagent_engine_kv_cache_free_blocks") == 100.0
    assert one(samples, "engine_dssidecar_runner_swap_seconds") == 0.5
    load = source.last_load()
    assert (load.requests_running, load.kv_cache_usage_ratio, load.max_batch_size) == (5.0, 0.4375, 16.0)


def test_keep_unmapped_false_drops_unknown_names(vllm_metrics_text: str) -> None:
    samples = parse_prometheus_text(vllm_metrics_text, 0.0, keep_unmapped=False)
    assert samples and all(s.name.startswith("dsagent_engine_") for s in samples)


@pytest.mark.parametrize(("body", "status"), [(None, 200), ("oops", 500), ("this is { not prometheus", 200)])
def test_engine_down_raises_source_error_with_up_zero(body: str | None, status: int) -> None:
    with pytest.raises(SourceError) as raised:
        source_serving(body, status).collect()
    assert "http://127.0.0.1:9/metrics" in str(raised.value)
    (up,) = raised.value.samples
    assert (up.name, up.value) == ("dsagent_engine_up", 0.0)


def test_timeout_is_a_source_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    source = EngineScrapeSource("http://127.0.0.1:9", transport=httpx.MockTransport(handler))
    with pytest.raises(SourceError, match="timed out"):
        source.collect()


def test_bad_engine_url_names_the_input() -> None:
    with pytest.raises(ValueError, match="127.0.0.1:8000"):
        EngineScrapeSource("127.0.0.1:8000")


def test_passthrough_name_is_a_valid_prometheus_name() -> None:
    assert passthrough_name("vllm:cache_config_info") == "engine_vllm_cache_config_info"
    assert passthrough_name("a.b-c") == "engine_a_b_c"


_metric_names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
    lambda n: not n.endswith(("_total", "_created", "_sum", "_count", "_bucket", "_info"))
)
_finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    gauges=st.dictionaries(_metric_names, _finite, max_size=5),
    counter_increments=st.lists(st.floats(min_value=0, max_value=1e6), max_size=5),
    observations=st.lists(st.floats(min_value=0, max_value=100), max_size=20),
)
def test_text_written_by_prometheus_client_round_trips(
    gauges: dict[str, float], counter_increments: list[float], observations: list[float]
) -> None:
    registry = CollectorRegistry()
    for name, value in gauges.items():
        Gauge(f"vllm:g_{name}", "g", registry=registry).set(value)
    counter = Counter("vllm:prompt_tokens", "prompt tokens", ["model_name"], registry=registry)
    for increment in counter_increments:
        counter.labels("m").inc(increment)
    histogram = Histogram(
        "vllm:e2e_request_latency_seconds", "e2e", ["model_name"], registry=registry, buckets=(0.1, 0.5, 1, 2, 5)
    )
    for observation in observations:
        histogram.labels("m").observe(observation)

    samples = parse_prometheus_text(generate_latest(registry).decode(), 1.0)

    for name, value in gauges.items():
        assert one(samples, f"engine_vllm_g_{name}") == pytest.approx(value, rel=1e-9, abs=1e-9)
    if counter_increments:
        assert one(samples, "dsagent_engine_prompt_tokens_total") == pytest.approx(sum(counter_increments))
    if observations:
        buckets = {s.label("le"): s.value for s in samples if s.name == "dsagent_engine_e2e_request_latency_seconds_bucket"}
        assert set(buckets) == {"0.1", "0.5", "1.0", "2.0", "5.0", "+Inf"}
        for le, count in buckets.items():
            bound = math.inf if le == "+Inf" else float(le)
            assert count == sum(1 for o in observations if o <= bound)
        assert one(samples, "dsagent_engine_e2e_request_latency_seconds_count") == len(observations)
    assert not any(s.name.endswith("_created") for s in samples)
