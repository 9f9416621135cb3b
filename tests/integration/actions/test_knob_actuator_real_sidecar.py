"""The builtin knob actuator against the real sidecar process: the token file the agent creates unlocks
/control, a knob Decision lands in the engine (and its change log), a refused one is a failed Decision
with the sidecar's reason, and a wrong token is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dsagent.actions import ActionsConfig, ActuatorRegistry, Guard
from dsagent.actions.actuators.engine_knobs import EngineKnobActuator
from dsagent.actions.decision import Reason
from dsagent.actions.dispatcher import Dispatcher
from dsagent.actions.spec import parse_actions
from dsagent.engines.builtin import BuiltinEngineAdapter, ensure_control_token

from tests.conftest import free_port
from tests.sidecar_process import SidecarProcess


@pytest.fixture(scope="module")
def sidecar(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SidecarProcess, str]]:
    data_dir = tmp_path_factory.mktemp("agent-data")
    token_path = data_dir / "control.token"
    token = ensure_control_token(token_path)
    process = SidecarProcess(tiny_model_dir, free_port(), data_dir / "logs", "--num-threads", "1",
                             env={"DSSIDECAR_CONTROL_TOKEN_FILE": str(token_path)}).start()
    yield process, token
    process.stop()


def dispatch(url: str, token: str) -> Dispatcher:
    adapter = BuiltinEngineAdapter(url, token, timeout_seconds=60)
    return Dispatcher(Guard(ActionsConfig(cooldown_seconds=0, hysteresis_seconds=0),
                            ActuatorRegistry([EngineKnobActuator(adapter)])))


def submit(dispatcher: Dispatcher, item: dict[str, object]) -> object:
    [spec] = parse_actions([item], "test")
    return dispatcher.submit_spec(spec, Reason("rule", rule="HighP99", value=2.0))


def test_knob_decision_reaches_the_engine(sidecar: tuple[SidecarProcess, str]) -> None:
    process, token = sidecar
    dispatcher = dispatch(process.base_url, token)
    outcome = submit(dispatcher, {"set_knob": {"knob": "max_batch_size", "factor": 0.5, "min": 1}})
    assert outcome.status == "applied", outcome.reason  # type: ignore[attr-defined]
    old, new = outcome.decision.old_value, outcome.decision.new_value  # type: ignore[attr-defined]
    assert new == max(1, old // 2)
    headers = {"Authorization": f"Bearer {token}"}
    knobs = httpx.get(f"{process.base_url}/control/knobs", headers=headers, timeout=10).json()["knobs"]
    assert knobs["max_batch_size"]["value"] == new
    changes = httpx.get(f"{process.base_url}/control/changes", headers=headers, timeout=10).json()["changes"]
    assert changes[-1]["result"] == "applied"


def test_refused_knob_is_a_failed_decision_with_the_engines_reason(sidecar: tuple[SidecarProcess, str]) -> None:
    process, token = sidecar
    outcome = submit(dispatch(process.base_url, token), {"set_knob": {"knob": "precision", "value": "fp8"}})
    assert outcome.status == "failed"  # type: ignore[attr-defined]
    assert "engine refused (409)" in outcome.reason  # type: ignore[attr-defined]


def test_wrong_token_is_refused(sidecar: tuple[SidecarProcess, str]) -> None:
    process, _ = sidecar
    outcome = submit(dispatch(process.base_url, "not-the-token"), {"set_knob": {"knob": "max_batch_size", "value": 2}})
    assert outcome.status == "failed" and "401" in outcome.reason  # type: ignore[attr-defined]
