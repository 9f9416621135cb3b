"""The agent creates the sidecar's control token (0600 in the data dir) and hands it over, so knob actions
work on the embedded default; an operator's own token (env or file) is used instead, never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from dsagent.actions import ActionsConfig
from dsagent.actions.runtime import ActionRuntime
from dsagent.config import EngineConfig
from fastapi.testclient import TestClient


def runtime(tmp_path: Path, engine: EngineConfig | None = None) -> ActionRuntime:
    return ActionRuntime(ActionsConfig(), engine or EngineConfig(), tmp_path, audit=lambda event: None)


def test_builtin_gets_a_private_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSSIDECAR_CONTROL_TOKEN", raising=False)
    actions = runtime(tmp_path)
    engine = actions.engine_config()
    path = Path(engine.environment["DSSIDECAR_CONTROL_TOKEN_FILE"])
    assert path == tmp_path / "control.token" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == actions.control_token == actions.api_token


def test_an_operators_token_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSSIDECAR_CONTROL_TOKEN", raising=False)
    own = tmp_path / "mine.token"
    own.write_text("operator-secret\n")
    engine = runtime(tmp_path, EngineConfig(environment={"DSSIDECAR_CONTROL_TOKEN_FILE": str(own)})).engine_config()
    assert engine.environment["DSSIDECAR_CONTROL_TOKEN_FILE"] == str(own) and own.read_text() == "operator-secret\n"
    inline = runtime(tmp_path, EngineConfig(environment={"DSSIDECAR_CONTROL_TOKEN": "inline"}))
    inline.engine_config()
    assert inline.control_token == "inline"


def test_external_engine_gets_no_token_but_act_still_needs_one(tmp_path: Path) -> None:
    actions = runtime(tmp_path, EngineConfig(kind="external", url="http://pod:8000"))
    engine = actions.engine_config()
    assert "DSSIDECAR_CONTROL_TOKEN_FILE" not in engine.environment and actions.api_token


def test_post_api_actions_needs_the_token(tmp_path: Path) -> None:
    from fastapi import FastAPI

    actions = runtime(tmp_path)
    actions.engine_config()
    app = FastAPI()
    app.include_router(actions.router())
    client = TestClient(app)
    body = {"actions": [{"notify": {"url": "http://127.0.0.1:9/x"}}]}
    assert client.post("/api/actions", json=body).status_code == 401
    assert client.post("/api/actions", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = client.post("/api/actions", json={"actions": [{"bogus": {}}]},
                         headers={"Authorization": f"Bearer {actions.api_token}"})
    assert answer.status_code == 422 and "unknown action 'bogus'" in answer.json()["error"]
    skipped = client.post("/api/actions", json=body, headers={"Authorization": f"Bearer {actions.api_token}"})
    assert skipped.status_code == 200  # no actuators attached yet: skipped with the reason, not an error
    assert skipped.json()["outcomes"][0]["status"] == "skipped"
