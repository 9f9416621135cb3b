"""/control on the real server process: auth, validation, live knobs under load, swaps, metrics."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from knob_server import KnobServer, metric_samples, run_streams

pytestmark = pytest.mark.timeout(600)


def test_control_needs_the_bearer_token(knob_server: KnobServer) -> None:
    url = f"{knob_server.base_url}/control/knobs"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert httpx.put(url, json={"max_batch_size": 2}, timeout=10).status_code == 401
    assert knob_server.knobs()["knobs"]["max_batch_size"]["value"] == 32


def test_get_knobs_reports_values_ranges_and_modes(knob_server: KnobServer) -> None:
    knobs = knob_server.knobs()["knobs"]
    assert knobs["max_batch_size"]["apply"] == "live" and knobs["max_batch_size"]["min"] == 1
    assert knobs["kv_cache_blocks"]["value"] == 256
    assert knobs["precision"]["apply"] == "swap" and knobs["precision"]["value"] == "fp32"
    assert knobs["backend"]["value"] == "eager"


@pytest.mark.parametrize(
    "update",
    [{"max_batch_size": 0}, {"max_batch_size": "8"}, {"kv_cache_blocks": 10**12}, {"precision": "fp64"}, {"warp_speed": 9}],
)
def test_out_of_range_or_unknown_is_422_and_changes_nothing(knob_server: KnobServer, update: dict[str, object]) -> None:
    response = asyncio.run(knob_server.put_knobs({"max_num_batched_tokens": 999, **update}))
    assert response.status_code == 422, response.text
    assert knob_server.knobs()["knobs"]["max_num_batched_tokens"]["value"] != 999


@pytest.mark.parametrize(("update", "reason"), [({"precision": "fp8"}, "8.9"), ({"backend": "tensorrt"}, "TensorRT"),
                                                ({"kv_cache_memory_fraction": 0.5}, "GPU")])  # fmt: skip
def test_unsupported_on_this_device_is_409_with_reason(knob_server: KnobServer, update: dict[str, object], reason: str) -> None:
    response = asyncio.run(knob_server.put_knobs(update))
    assert response.status_code == 409, response.text
    assert reason in response.json()["error"]["reason"]


def test_live_knobs_change_under_load_without_failures(knob_server: KnobServer) -> None:
    model = knob_server.model_name()

    async def scenario() -> tuple[list[httpx.Response], list[object]]:
        load = asyncio.create_task(run_streams(knob_server.base_url, model, num_streams=16, max_tokens=24, rounds=2))
        answers = []
        for update in (
            {"max_batch_size": 4},
            {"max_num_batched_tokens": 48},
            {"kv_cache_blocks": 400},
            {"kv_cache_blocks": 200, "max_batch_size": 16},
            {"max_num_batched_tokens": 2048, "max_batch_size": 32, "kv_cache_blocks": 256},
        ):
            await asyncio.sleep(0.3)
            answers.append(await knob_server.put_knobs(update))
        report = await load
        return answers, report.failed

    answers, failed = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    assert answers[0].json()["applied"] == {"max_batch_size": 4}
    assert answers[0].json()["apply_seconds"] >= 0
    assert failed == []
    knobs = knob_server.knobs()
    assert knobs["knobs"]["max_batch_size"]["value"] == 32
    assert knobs["knobs"]["kv_cache_blocks"]["value"] == 256
    status = knobs["status"]
    assert status["kv_cache_blocks_allocated"] == 256 or status["kv_cache_blocks_pending_release"] > 0


def test_knob_changes_and_memory_are_in_metrics(knob_server: KnobServer) -> None:
    asyncio.run(knob_server.put_knobs({"max_batch_size": 31}))
    asyncio.run(knob_server.put_knobs({"max_batch_size": -3}))
    samples = metric_samples(knob_server.metrics_text())
    assert samples[("dssidecar_knob_changes_total", (("knob", "max_batch_size"), ("result", "applied")))] >= 1
    assert samples[("dssidecar_knob_changes_total", (("knob", "max_batch_size"), ("result", "invalid")))] >= 1
    assert samples[("dssidecar_knob_value", (("knob", "max_batch_size"),))] == 31
    fragmentation = samples[("dssidecar_memory_fragmentation_ratio", ())]
    assert 0.0 <= fragmentation <= 1.0
    assert 0.0 <= samples[("dssidecar_kv_cache_fragmentation_ratio", ())] <= 1.0
    assert samples[("dssidecar_kv_cache_pool_bytes", ())] > 0
    assert ("dssidecar_oom_events_total", ()) in samples
    asyncio.run(knob_server.put_knobs({"max_batch_size": 32}))


def test_fragmentation_is_measured_while_sequences_hold_blocks(knob_server: KnobServer) -> None:
    model = knob_server.model_name()

    async def scenario() -> list[float]:
        load = asyncio.create_task(run_streams(knob_server.base_url, model, num_streams=8, max_tokens=40))
        seen = []
        while not load.done():
            samples = metric_samples(await asyncio.to_thread(knob_server.metrics_text))
            seen.append(samples[("dssidecar_memory_fragmentation_ratio", ())])
            await asyncio.sleep(0.1)
        assert (await load).failed == []
        return seen

    seen = asyncio.run(scenario())
    assert all(0.0 <= value <= 1.0 for value in seen)
    assert any(value > 0.0 for value in seen)  # a half-filled last block shows up


@pytest.mark.parametrize("swaps", [[{"precision": "int8"}, {"precision": "bf16"}, {"precision": "fp32"}]],
                         ids=["int8-bf16-fp32"])  # fmt: skip
def test_precision_swaps_under_16_streams_fail_no_request(knob_server: KnobServer, swaps: list[dict[str, str]]) -> None:
    model = knob_server.model_name()

    async def scenario() -> tuple[list[httpx.Response], list[object], int]:
        load = asyncio.create_task(run_streams(knob_server.base_url, model, num_streams=16, max_tokens=32, rounds=2))
        answers = []
        for update in swaps:
            await asyncio.sleep(0.5)
            answers.append(await knob_server.put_knobs(update))
        report = await load
        return answers, report.failed, len(report.results)

    answers, failed, total = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200] * len(swaps), [a.text for a in answers]
    assert total == 32 and failed == []
    assert knob_server.knobs()["knobs"]["precision"]["value"] == "fp32"
    assert knob_server.knobs()["status"]["runner_swaps_total"] >= len(swaps)


@pytest.mark.slow
def test_backend_swap_to_torch_compile_under_16_streams_fails_no_request(knob_server: KnobServer) -> None:
    model = knob_server.model_name()

    async def scenario() -> tuple[list[httpx.Response], list[object]]:
        load = asyncio.create_task(run_streams(knob_server.base_url, model, num_streams=16, max_tokens=32, rounds=3))
        await asyncio.sleep(0.5)
        answers = [await knob_server.put_knobs({"backend": "torch.compile"})]
        answers.append(await knob_server.put_knobs({"backend": "eager"}))
        return answers, (await load).failed

    answers, failed = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert failed == []
    assert knob_server.knobs()["knobs"]["backend"]["value"] == "eager"


def test_accuracy_gate_refuses_a_failing_precision_with_figures(knob_server: KnobServer) -> None:
    assert asyncio.run(knob_server.put_knobs({"require_accuracy_check": True})).status_code == 200
    try:
        response = asyncio.run(knob_server.put_knobs({"precision": "int8"}))
        assert response.status_code == 409, response.text
        figures = response.json()["error"]["accuracy_check"]
        assert figures["passed"] is False and figures["precision"] == "int8"
        assert 0.0 <= figures["top1_agreement"] <= 1.0 and figures["mean_kl"] > 0.0
        assert knob_server.knobs()["knobs"]["precision"]["value"] == "fp32"
        samples = metric_samples(knob_server.metrics_text())
        assert samples[("dssidecar_knob_changes_total", (("knob", "precision"), ("result", "refused")))] >= 1
    finally:
        asyncio.run(knob_server.put_knobs({"require_accuracy_check": False}))
