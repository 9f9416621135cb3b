"""Issue 12 item 14: source ages, /readyz naming a stale required source, engine series absent (not
repeated) while the engine is down, XID errors as a counter per code plus an event."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dsagent.api import fresh_samples, render_prometheus
from dsagent.app import Agent
from dsagent.config import load_config
from dsagent.readiness import SourceFreshness, add_readiness_route
from dsagent.samples import Sample
from dsagent.sources.base import SourceError
from dsagent.sources.gpu import GpuSource
from dsagent.sources.gpu_backend import GpuReading
from dsagent.store import STALE_MARKER, TimeSeriesStore, is_stale_marker
from fastapi import FastAPI
from fastapi.testclient import TestClient


class Engine:
    name = "engine"

    def __init__(self) -> None:
        self.down = False

    def collect(self) -> list[Sample]:
        now = time.time()
        if self.down:
            raise SourceError("engine unreachable", [Sample("dsagent_engine_up", (), 0.0, now)])
        return [Sample("dsagent_engine_up", (), 1.0, now),
                Sample("dsagent_engine_requests_running", (("model", "m"),), 7.0, now)]

    def close(self) -> None:
        pass


def agent_with(tmp_path: Path, *sources: Any, **overrides: Any) -> Agent:
    agent = Agent(load_config(None, environ={}, overrides={"data_dir": str(tmp_path), **overrides}))
    agent.sources = list(sources)
    return agent


def test_engine_series_are_absent_not_repeated_while_the_engine_is_down(tmp_path: Path) -> None:
    engine = Engine()
    agent = agent_with(tmp_path, engine)
    agent.collect_once()
    assert "dsagent_engine_requests_running" in render_prometheus(fresh_samples(agent.store, time.time(), 60))
    engine.down = True
    agent.collect_once()
    text = render_prometheus(fresh_samples(agent.store, time.time(), 60))
    assert "dsagent_engine_requests_running" not in text  # was its last value (7) for the whole lookback
    assert "dsagent_engine_up 0.0" in text
    assert agent.store.latest("dsagent_engine_requests_running") == []
    engine.down = False
    agent.collect_once()
    assert agent.store.latest("dsagent_engine_requests_running")[0].value == 7.0


def test_stale_markers_are_not_samples_in_windows() -> None:
    store = TimeSeriesStore()
    store.append([Sample("x", (), 1.0, 100.0), Sample("x", (), STALE_MARKER, 101.0), Sample("x", (), 3.0, 102.0)])
    (points,) = [ring.window(0, 200) for ring in store._series.values()]
    assert points == [(100.0, 1.0), (102.0, 3.0)]
    assert is_stale_marker(STALE_MARKER) and not is_stale_marker(float("nan"))


def test_readyz_names_the_stale_required_source(tmp_path: Path) -> None:
    engine = Engine()
    agent = agent_with(tmp_path, engine, **{"server.readiness_max_source_age_seconds": 0.2})
    app = FastAPI()
    add_readiness_route(app, agent.freshness.verdict)
    client = TestClient(app)
    agent.collect_once()
    assert client.get("/readyz").status_code == 200
    engine.down = True
    agent.collect_once()
    time.sleep(0.3)
    response = client.get("/readyz")
    assert response.status_code == 503 and "engine: no good reading for" in response.json()["stale"][0]
    ages = {s.label("source"): s.value for s in agent.collect_once() if s.name == "dsagent_source_last_success_age_seconds"}
    assert ages["engine"] >= 0.3
    assert agent.status()["agent"]["readiness"]["ready"] is False


def test_a_source_that_never_succeeded_counts_from_start() -> None:
    freshness = SourceFreshness(["engine"], 30, started_seconds=1000.0)
    freshness.saw("engine")
    assert freshness.verdict(now_seconds=1020.0)["ready"]
    assert not freshness.verdict(now_seconds=1031.0)["ready"]
    freshness.saw("gpu:nvml")
    freshness.succeeded("engine", 1031.0)
    assert freshness.verdict(now_seconds=1040.0)["ready"]  # gpu not required here


class XidBackend:
    name = "scripted"

    def __init__(self) -> None:
        self.by_code: dict[int, int] = {}

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read_all(self) -> list[GpuReading]:
        total = sum(self.by_code.values())
        last = max(self.by_code, default=None)
        return [GpuReading(index=0, uuid="GPU-0", name="H100", xid_errors_total=total, last_xid=last,
                           xid_errors_by_code=dict(self.by_code))]


def test_xid_errors_are_a_counter_per_code_and_an_event(tmp_path: Path) -> None:
    backend = XidBackend()
    source = GpuSource(backend)  # type: ignore[arg-type]
    source.collect()
    backend.by_code = {79: 1}
    samples = source.collect()
    counters = {s.label("xid"): s.value for s in samples if s.name == "dsagent_gpu_xid_errors_total"}
    assert counters == {"79": 1.0}
    assert not [s for s in samples if s.name == "dsagent_gpu_last_xid"]
    (event,) = source.take_events()
    assert event["event"] == "gpu_xid_error" and event["xid"] == 79 and event["new_errors"] == 1
    assert source.take_events() == []

    agent = agent_with(tmp_path, source, **{"sources.gpu.backend": "off", "engine.kind": "external",
                                           "engine.url": "http://127.0.0.1:9", "server.port": 0})
    agent.start()
    try:
        agent.sources = [source]
        backend.by_code = {79: 1, 13: 2}
        agent.collect_once()
        assert agent.pipeline is not None and agent.pipeline.force_flush(10)
    finally:
        agent.stop()
    events = list((tmp_path / "export").glob("logs-dsagent.events*.ndjson"))
    assert events and '"gpu_xid_error"' in events[0].read_text()


def test_slo_quantiles_vanish_when_the_window_has_no_requests(tmp_path: Path) -> None:
    from dsagent.samples import RequestRecord

    agent = agent_with(tmp_path, **{"server.slo_window_seconds": 0.5})
    agent.on_request_records([RequestRecord("r1", time.time(), generation_time_seconds=2.0)])
    agent.collect_once()
    assert "inference_latency_p99_seconds" in render_prometheus(fresh_samples(agent.store, time.time(), 60))
    time.sleep(0.7)
    agent.collect_once()
    text = render_prometheus(fresh_samples(agent.store, time.time(), 60))
    assert "inference_latency_p99_seconds" not in text  # not its last value for the whole lookback
