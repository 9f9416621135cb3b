"""The collection tick: every source once into the store; a failing source is logged once per state change
and its partial samples (engine up 0) are still stored; request records are counted once."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from dsagent.app import Agent
from dsagent.config import load_config
from dsagent.samples import RequestRecord, Sample
from dsagent.sources.base import SourceError


class FlakySource:
    name = "engine-like"

    def __init__(self) -> None:
        self.failing = False

    def collect(self) -> list[Sample]:
        if self.failing:
            raise SourceError("engine unreachable", [Sample("dsagent_engine_up", (), 0.0, time.time())])
        return [Sample("dsagent_engine_up", (), 1.0, time.time()), Sample("x_ratio", (), 0.5, time.time())]

    def close(self) -> None:
        pass


class BrokenSource:
    name = "broken"

    def collect(self) -> list[Sample]:
        raise RuntimeError("bug")

    def close(self) -> None:
        pass


@pytest.fixture()
def agent(tmp_path: Path) -> Agent:
    return Agent(load_config(None, environ={}, overrides={"data_dir": str(tmp_path)}))


def test_failures_are_logged_once_per_state_change(agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    flaky = FlakySource()
    agent.sources = [flaky, BrokenSource()]  # type: ignore[list-item]
    with caplog.at_level(logging.INFO, logger="dsagent"):
        agent.collect_once()
        flaky.failing = True
        for _ in range(5):
            agent.collect_once()
        flaky.failing = False
        agent.collect_once()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("source engine-like failing" in m for m in messages) == 1
    assert sum("source engine-like recovered" in m for m in messages) == 1
    assert sum("source broken failing: RuntimeError: bug" in m for m in messages) == 1
    broken = agent.status()["sources"]["broken"]
    assert {key: broken[key] for key in ("ok", "error")} == {"ok": False, "error": "RuntimeError: bug"}
    assert broken["last_success_age_seconds"] >= 0  # never succeeded: counted from the agent's start


def test_partial_samples_of_a_failed_source_are_stored(agent: Agent) -> None:
    flaky = FlakySource()
    flaky.failing = True
    agent.sources = [flaky]  # type: ignore[list-item]
    agent.collect_once()
    (up,) = agent.store.latest("dsagent_engine_up")
    assert up.value == 0.0
    assert agent.store.latest("dsagent_up")[0].value == 1.0
    assert agent.store.latest("x_ratio") == []


def test_request_records_are_counted_once(agent: Agent) -> None:
    record = RequestRecord("r1", 1.0, generation_time_seconds=0.1)
    agent.on_request_records([record])
    agent.on_request_records([record, RequestRecord("r2", 1.0)])
    assert agent.requests_received_total == 2
    assert agent.duplicate_requests_dropped == 1
    assert agent.request_stats.snapshot()["requests_total"] == 2


def test_status_without_gpu_samples_says_why(agent: Agent) -> None:
    gpus = agent.status()["gpus"]
    assert gpus["devices"] == [] and gpus["none_reason"]
