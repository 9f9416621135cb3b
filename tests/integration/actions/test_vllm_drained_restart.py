"""A vLLM knob is applied by a drained restart with new arguments through the supervisor (fake vLLM
process on loopback): the new process runs with the new arguments; a refused start puts the old ones back."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dsagent.actions import ActionsConfig, ActuatorRegistry, Guard
from dsagent.actions.actuators.engine_knobs import EngineKnobActuator
from dsagent.actions.decision import Reason
from dsagent.actions.dispatcher import Dispatcher
from dsagent.actions.spec import parse_actions
from dsagent.config import EngineConfig, SupervisorConfig
from dsagent.engines import adapter_for
from dsagent.supervisor import EngineSupervisor

from tests.conftest import REPO_ROOT, free_port

FAKE_VLLM = str(REPO_ROOT / "tests" / "fakes" / "fake_vllm.py")


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[EngineSupervisor, Dispatcher, str]]:
    port = free_port()
    engine = EngineConfig(kind="vllm", port=port,
                          command=[sys.executable, FAKE_VLLM, "serve", "m", "--port", str(port), "--max-num-seqs", "256"])
    supervisor = EngineSupervisor(engine, SupervisorConfig(readiness_poll_seconds=0.05, drain_grace_seconds=5,
                                                           backoff_initial_seconds=0.2, backoff_max_seconds=0.5,
                                                           readiness_timeout_seconds=20), tmp_path)
    supervisor.start()
    assert supervisor.wait_ready(30), supervisor.status()
    adapter = adapter_for(engine, tmp_path, restart=supervisor.restart_with_command)
    guard = Guard(ActionsConfig(cooldown_seconds=0, hysteresis_seconds=0), ActuatorRegistry([EngineKnobActuator(adapter)]))
    yield supervisor, Dispatcher(guard), f"http://127.0.0.1:{port}"
    supervisor.stop()


def submit(dispatcher: Dispatcher, item: dict[str, object]) -> object:
    [spec] = parse_actions([item], "test")
    return dispatcher.submit_spec(spec, Reason("rule", rule="QueueTooLong", value=40.0))


def test_knob_change_restarts_vllm_with_the_new_arguments(supervised: tuple[EngineSupervisor, Dispatcher, str]) -> None:
    supervisor, dispatcher, url = supervised
    pid_before = supervisor.pid()
    outcome = submit(dispatcher, {"set_knob": {"knob": "max_num_seqs", "factor": 0.5}})
    assert outcome.status == "applied", outcome.reason  # type: ignore[attr-defined]
    assert outcome.detail["apply_mode"] == "restart"  # type: ignore[attr-defined]
    assert supervisor.pid() != pid_before and supervisor.restarts_total == 1
    assert httpx.get(url + "/engine_args").json()["max_num_seqs"] == 128
    assert supervisor.status()["state"] == "ready" and supervisor.consecutive_failures == 0


def test_refused_start_restores_the_previous_arguments(supervised: tuple[EngineSupervisor, Dispatcher, str]) -> None:
    supervisor, dispatcher, url = supervised
    outcome = submit(dispatcher, {"set_knob": {"knob": "gpu_memory_utilization", "value": 1.5}})
    assert outcome.status == "failed"  # type: ignore[attr-defined]
    assert "did not come back ready" in outcome.reason  # type: ignore[attr-defined]
    assert supervisor.wait_ready(20)
    args = httpx.get(url + "/engine_args").json()
    assert args["gpu_memory_utilization"] == 0.9 and args["max_num_seqs"] == 256
