"""`dsagent tune apply` runs its own guard (a stage rollback must never wait for the rules' cooldown), so its
audit events reach the running agent through POST /api/actions/audit: they join `recent_actions` (dsagent
status), the audit stream (logs-dsagent.actions) and dsagent_actions_total, and need the control token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dsagent.actions import ActionsConfig
from dsagent.actions.runtime import ActionRuntime
from dsagent.api import ApiServer
from dsagent.config import EngineConfig
from dsagent.tune.apply_cli import AgentAuditRelay
from fastapi import FastAPI

EVENT = {"decision_id": "d1", "outcome": "applied", "action": "set_knob", "target": "knob:max_batch_size",
         "old": 32, "new": 16, "source": "tuner", "rule": "tune-apply"}


@pytest.fixture()
def agent_on_data_dir(tmp_path: Path) -> Any:
    recorded: list[dict[str, Any]] = []
    actions = ActionRuntime(ActionsConfig(), EngineConfig(), tmp_path, audit=recorded.append)
    actions.engine_config()  # creates data_dir/control.token as `dsagent run` does
    app = FastAPI()
    app.include_router(actions.router())
    server = ApiServer(app, "127.0.0.1", 0)
    server.start()
    (tmp_path / "agent.json").write_text(json.dumps({"url": server.url, "pid": 1}))
    yield actions, recorded, tmp_path
    server.stop()


def test_relayed_events_join_the_agents_audit_and_counters(agent_on_data_dir: Any) -> None:
    actions, recorded, data_dir = agent_on_data_dir
    relay = AgentAuditRelay.for_data_dir(data_dir)
    assert relay.send(EVENT) and relay.sent == 1
    assert recorded == [EVENT]
    counts = {s.labels: s.value for s in actions.samples(0.0) if s.name == "dsagent_actions_total"}
    assert counts[(("action", "set_knob"), ("outcome", "applied"))] == 1.0


def test_audit_endpoint_needs_the_token_and_a_well_formed_event(agent_on_data_dir: Any) -> None:
    import httpx

    actions, recorded, data_dir = agent_on_data_dir
    url = json.loads((data_dir / "agent.json").read_text())["url"]
    assert httpx.post(f"{url}/api/actions/audit", json={"events": [EVENT]}).status_code == 401
    bad = httpx.post(f"{url}/api/actions/audit", json={"events": [{"outcome": "applied"}]},
                     headers={"Authorization": f"Bearer {actions.api_token}"})
    assert bad.status_code == 422 and "decision_id" in bad.json()["error"]
    assert recorded == []


def test_no_agent_on_the_data_dir_keeps_the_events_local(tmp_path: Path) -> None:
    relay = AgentAuditRelay.for_data_dir(tmp_path)
    assert relay.send(EVENT) is False and relay.failure is None


def test_an_agent_that_went_away_is_said_once(tmp_path: Path) -> None:
    (tmp_path / "agent.json").write_text(json.dumps({"url": "http://127.0.0.1:9"}))
    (tmp_path / "control.token").write_text("t")
    relay = AgentAuditRelay.for_data_dir(tmp_path)
    assert relay.send(EVENT) is False and relay.failure and "127.0.0.1:9" in relay.failure
    assert relay.send(EVENT) is False  # not tried again
