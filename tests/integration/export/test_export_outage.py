"""Elasticsearch outages lose nothing and duplicate nothing, even when the pipeline is SIGKILLed.

Every document is checked by id: the set of ids in the fake Elasticsearch equals the set the NDJSON
destination received through its own spool, and every request id appears exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dsagent.export.config import ExportConfig
from dsagent.export.pipeline import TelemetryPipeline
from dsagent.samples import RequestRecord, Sample, make_labels

from tests.fakes.elasticsearch import FakeElasticsearch

WORKER = Path(__file__).with_name("export_worker.py")
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def fake_es():
    with FakeElasticsearch() as cluster:
        yield cluster


def file_ids(data_dir: Path) -> set[str]:
    ids: set[str] = set()
    for path in (data_dir / "export").glob("*.ndjson*"):
        ids.update(json.loads(line)["_id"] for line in path.read_text().splitlines())
    return ids


def request_ids(cluster: FakeElasticsearch) -> list[str]:
    return [doc["request_id"] for doc in cluster.documents("logs-dsagent.requests-*").values()]


def wait_for(predicate: Any, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_503_outage_then_recovery_delivers_every_document_exactly_once(
    fake_es: FakeElasticsearch, tmp_path: Path
) -> None:
    config = ExportConfig.model_validate({
        "elasticsearch": {"url": fake_es.url},
        "spool": {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.2, "batch_documents": 50},
        "metric_export_interval_seconds": 3600,
    })
    pipeline = TelemetryPipeline(config, tmp_path, {"host.name": "node-1"})
    fake_es.set_faults(status=503)  # every bulk fails until cleared
    pipeline.start()
    try:
        for round_number in range(20):
            now = time.time()
            pipeline.record_samples([Sample("dsagent_gpu_power_watts", make_labels({"gpu_index": str(g)}),
                                            200.0 + g, now) for g in range(8)])
            pipeline.collect_metrics()
            pipeline.record_requests([RequestRecord(f"req-{round_number}-{i}", now, generation_time_seconds=0.1)
                                      for i in range(10)])
            pipeline.record_action({"timestamp": now, "rule": "r", "knob": "k", "old": round_number,
                                    "new": round_number + 1, "outcome": "applied", "reason": "test"})
        assert not pipeline.force_flush(1.0)  # Elasticsearch is down: not everything can be delivered
        assert fake_es.count() == 0
        stats = pipeline.stats()
        assert stats["elasticsearch.spool_depth_documents"] > 0 and stats["elasticsearch.retries"] > 0
        fake_es.clear_faults()
        assert pipeline.force_flush(30)
    finally:
        pipeline.shutdown()
    stored = fake_es.documents()
    assert set(stored) == file_ids(tmp_path)
    ids = request_ids(fake_es)
    assert sorted(ids) == sorted(f"req-{r}-{i}" for r in range(20) for i in range(10))
    assert len(fake_es.documents("logs-dsagent.actions-*")) == 20
    assert len(fake_es.documents("metrics-dsagent.gpu-*")) == 20 * 8
    assert pipeline.stats()["dropped_documents"] == 0


def _run_worker(data_dir: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--data-dir", str(data_dir), "--es-url", url, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )


def _kill(worker: subprocess.Popen[str]) -> list[str]:
    """SIGKILL, then the lines it printed that were not read yet (read through the same buffered file:
    communicate() with a timeout would read the raw pipe and miss lines already buffered here)."""
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    assert worker.stdout is not None
    return worker.stdout.read().splitlines()


@pytest.mark.slow
def test_sigkill_during_outage_and_during_recovery_still_exactly_once(
    fake_es: FakeElasticsearch, tmp_path: Path
) -> None:
    fake_es.set_faults(status=503)
    first = _run_worker(tmp_path, fake_es.url, "--requests", "200")
    confirmed: list[str] = []
    try:
        assert first.stdout is not None
        for line in first.stdout:
            confirmed.append(line.strip())
            if line.startswith("recorded 120"):
                break
        confirmed += _kill(first)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    recorded = {int(line.split()[1]) for line in confirmed if line.startswith("recorded")}
    assert len(recorded) >= 121 and fake_es.count() == 0

    # recovery, slowed down so the second process is killed half way through draining
    fake_es.set_faults(delay_seconds=0.05)
    second = _run_worker(tmp_path, fake_es.url, "--batch-documents", "40")
    try:
        assert wait_for(lambda: fake_es.count() > 300, 30), "the second worker never started draining"
        _kill(second)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    partially = fake_es.count()

    fake_es.clear_faults()
    third = _run_worker(tmp_path, fake_es.url, "--flush-timeout", "60")
    output, _ = third.communicate(timeout=120)
    assert "flushed True" in output and third.returncode == 0
    assert fake_es.count() > partially

    ids = request_ids(fake_es)
    assert len(ids) == len(set(ids))  # exactly once
    assert {f"req-{n}" for n in recorded} <= set(ids)  # every confirmed request arrived
    assert len(set(ids)) <= max(recorded) + 2  # at most the one in flight at the kill besides them
    gpu_points = fake_es.count("metrics-dsagent.gpu-*")  # 8 GPUs per collection, one collection per request
    assert 8 * len(recorded) <= gpu_points <= 8 * (max(recorded) + 2)
