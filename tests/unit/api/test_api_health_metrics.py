"""/healthz, /readyz and /metrics: readiness reasons and vLLM's metric names with real values."""

from __future__ import annotations

import httpx
from api_fake_engine import FakeEngine
from dssidecar.api.app import build_app, set_knob_values
from dssidecar.api.metrics import LATENCY_BUCKETS_SECONDS
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

MODEL = "fake-model"


def scrape(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_healthz_and_readyz_when_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"] == MODEL


async def test_readyz_is_503_with_reason_when_engine_loop_died(fake_engine: FakeEngine, client: httpx.AsyncClient) -> None:
    fake_engine.loop_alive = False
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert "engine loop" in response.json()["reason"]
    assert (await client.get("/healthz")).status_code == 200


async def test_readyz_is_503_before_the_engine_started(fake_engine: FakeEngine) -> None:
    app = build_app(fake_engine)  # lifespan not run: engine.start() not called
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert "not loaded" in response.json()["reason"]


EXPECTED_NAMES = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:num_preemptions_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:time_per_output_token_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_count",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
    "dssidecar_kv_cache_blocks",
    "dssidecar_kv_cache_free_blocks",
    "dssidecar_engine_loop_alive",
    "dssidecar_draining",
]


async def test_metrics_expose_vllm_names_with_values_after_requests(client: httpx.AsyncClient) -> None:
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "abcd", "max_tokens": 5})
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "ab", "max_tokens": 3, "stream": True})
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = scrape(response.text)
    missing = [name for name in EXPECTED_NAMES if name not in samples]
    assert missing == []
    model = (("model_name", MODEL),)
    assert samples["vllm:prompt_tokens_total"][model] == 6
    assert samples["vllm:generation_tokens_total"][model] == 8
    assert samples["vllm:request_success_total"][(("finished_reason", "length"), ("model_name", MODEL))] == 2
    assert samples["vllm:e2e_request_latency_seconds_count"][model] == 2
    assert samples["vllm:time_to_first_token_seconds_count"][model] == 2
    assert samples["vllm:inter_token_latency_seconds_count"][model] == 4 + 2  # tokens after the first
    assert samples["vllm:time_per_output_token_seconds_count"][model] == 2
    assert samples["vllm:num_requests_running"][model] == 0
    assert 0.0 <= samples["vllm:kv_cache_usage_perc"][model] <= 1.0


async def test_latency_buckets_include_the_design_bounds(client: httpx.AsyncClient) -> None:
    for bound in (0.1, 0.5, 1.0, 2.0, 5.0):
        assert bound in LATENCY_BUCKETS_SECONDS
    assert any(b < 0.1 for b in LATENCY_BUCKETS_SECONDS)
    await client.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 2})
    samples = scrape((await client.get("/metrics")).text)
    bounds = {dict(labels)["le"] for labels in samples["vllm:e2e_request_latency_seconds_bucket"]}
    assert {"0.1", "0.5", "1.0", "2.0", "5.0", "+Inf"} <= bounds


async def test_rejections_are_counted(client: httpx.AsyncClient) -> None:
    await client.post("/v1/completions", json={"model": "other", "prompt": "a"})
    samples = scrape((await client.get("/metrics")).text)
    assert samples["dssidecar_requests_rejected_total"][(("model_name", MODEL), ("reason", "invalid"))] == 1


async def test_knob_values_hook_feeds_gauges(app: FastAPI, client: httpx.AsyncClient) -> None:
    knobs: dict[str, object] = {"max_batch_size": 32, "max_num_batched_tokens": 2048, "precision": "fp32"}
    set_knob_values(app, lambda: knobs)
    samples = scrape((await client.get("/metrics")).text)
    assert samples["dssidecar_knob_value"][(("knob", "max_batch_size"),)] == 32
    assert samples["dssidecar_knob_value"][(("knob", "max_num_batched_tokens"),)] == 2048
    assert samples["dssidecar_knob_info"][(("knob", "precision"), ("value", "fp32"))] == 1
    knobs["max_batch_size"] = 8
    samples = scrape((await client.get("/metrics")).text)
    assert samples["dssidecar_knob_value"][(("knob", "max_batch_size"),)] == 8


async def test_broken_engine_stats_omit_engine_metrics_but_metrics_still_answer(fake_engine: FakeEngine, client: httpx.AsyncClient) -> None:
    def broken() -> None:
        raise RuntimeError("stats exploded")

    fake_engine.stats = broken  # type: ignore[assignment,method-assign]
    response = await client.get("/metrics")
    assert response.status_code == 200
    samples = scrape(response.text)
    assert "vllm:num_requests_running" not in samples
    assert "dssidecar_draining" in samples


def test_each_app_has_its_own_registry() -> None:
    first, second = build_app(FakeEngine()), build_app(FakeEngine(model_name="other"))
    assert first.state.metrics_registry is not second.state.metrics_registry
