"""An injected KV-pool allocation failure on the real server: retried smaller, counted, nobody fails."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from knob_server import KnobServer, free_port, metric_samples, run_streams


@pytest.fixture(scope="module")
def oom_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnobServer]:
    server = KnobServer(
        tiny_model_dir, free_port(), tmp_path_factory.mktemp("oom-logs"), "--max-batch-size", "16",
        env={"DSSIDECAR_INJECT_OOM_ABOVE_BATCH": "2", "DSSIDECAR_INJECT_OOM_COUNT": "3"},
    )  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_injected_oom_lowers_batch_and_fails_no_request(oom_server: KnobServer) -> None:
    report = asyncio.run(run_streams(oom_server.base_url, oom_server.model_name(), num_streams=8, max_tokens=16))
    assert report.failed == [] and len(report.results) == 8
    samples = metric_samples(oom_server.metrics_text())
    assert samples[("dssidecar_oom_events_total", ())] >= 1
    assert samples[("dssidecar_effective_max_batch_size", ())] <= 2
    status = oom_server.knobs()["status"]
    assert status["oom_events_total"] >= 1 and status["effective_max_batch_size"] <= 2
    # the knob itself is unchanged; setting it again restores the effective limit
    assert oom_server.knobs()["knobs"]["max_batch_size"]["value"] == 16
    assert httpx.get(f"{oom_server.base_url}/readyz", timeout=10).status_code == 200
    assert asyncio.run(oom_server.put_knobs({"max_batch_size": 8})).status_code == 200
    assert oom_server.knobs()["status"]["effective_max_batch_size"] == 8
