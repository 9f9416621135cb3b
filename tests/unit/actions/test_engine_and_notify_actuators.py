"""Engine knobs per engine kind (builtin /control with the token, vLLM restart arguments, external refused),
the control token file, and notify/webhook payloads (Alertmanager webhook version 4)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx
from dsagent.actions import ActionsConfig, ActuatorRegistry, Guard
from dsagent.actions.actuators.engine_knobs import EngineKnobActuator
from dsagent.actions.actuators.notify import NotifyActuator, WebhookActuator
from dsagent.actions.config import NotifyConfig
from dsagent.actions.decision import Reason
from dsagent.actions.dispatcher import Dispatcher
from dsagent.actions.spec import parse_actions
from dsagent.engines.builtin import BuiltinEngineAdapter, ensure_control_token
from dsagent.engines.external import ExternalEngineAdapter
from dsagent.engines.vllm import VllmEngineAdapter, command_knobs, with_knobs


def dispatcher_for(*actuators: Any) -> Dispatcher:
    return Dispatcher(Guard(ActionsConfig(cooldown_seconds=0), ActuatorRegistry(list(actuators))))


def submit(dispatcher: Dispatcher, item: Any, reason: Reason | None = None, **kw: Any) -> Any:
    [spec] = parse_actions([item], "test")
    return dispatcher.submit_spec(spec, reason or Reason("operator"), **kw)


def test_control_token_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "d" / "control.token"
    token = ensure_control_token(path)
    assert len(token) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert ensure_control_token(path) == token and stat.S_IMODE(path.stat().st_mode) == 0o600


def fake_control(token: str, knobs: dict[str, Any], refuse: dict[str, tuple[int, str]] | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {token}":
            return httpx.Response(401, json={"error": {"message": "invalid bearer token"}})
        if request.method == "GET":
            return httpx.Response(200, json={"knobs": {k: {"value": v} for k, v in knobs.items()}})
        update = json.loads(request.content)
        for name in update:
            if refuse and name in refuse:
                code, message = refuse[name]
                return httpx.Response(code, json={"error": {"message": message}})
        previous = {k: knobs.get(k) for k in update}
        knobs.update(update)
        return httpx.Response(200, json={"applied": update, "previous": previous, "apply_seconds": 0.01})

    return httpx.MockTransport(handle)


def test_builtin_knob_goes_through_control_with_the_token() -> None:
    knobs = {"max_batch_size": 32, "precision": "fp32"}
    adapter = BuiltinEngineAdapter("http://engine", "s3cret", transport=fake_control("s3cret", knobs))
    dispatcher = dispatcher_for(EngineKnobActuator(adapter))
    outcome = submit(dispatcher, {"set_knob": {"knob": "max_batch_size", "factor": 0.5}})
    assert outcome.status == "applied" and knobs["max_batch_size"] == 16
    assert outcome.detail["apply_mode"] == "live" and outcome.decision.old_value == 32


def test_builtin_refusal_and_wrong_token_are_failed_decisions() -> None:
    knobs = {"precision": "fp32"}
    refusing = BuiltinEngineAdapter("http://engine", "t", transport=fake_control(
        "t", knobs, {"precision": (409, "fp8 needs compute capability 8.9 (Hopper/Ada); this device is cpu")}))
    outcome = submit(dispatcher_for(EngineKnobActuator(refusing)), {"set_knob": {"knob": "precision", "value": "fp8"}})
    assert outcome.status == "failed" and "engine refused (409): fp8 needs compute capability" in outcome.reason
    wrong = BuiltinEngineAdapter("http://engine", "nope", transport=fake_control("t", knobs))
    outcome = submit(dispatcher_for(EngineKnobActuator(wrong)), {"set_knob": {"knob": "precision", "value": "int8"}})
    assert outcome.status == "failed" and "401" in outcome.reason


def test_external_engine_refuses_with_a_reason() -> None:
    dispatcher = dispatcher_for(EngineKnobActuator(ExternalEngineAdapter("http://pod:8000")))
    outcome = submit(dispatcher, {"set_knob": {"knob": "max_batch_size", "value": 8}})
    assert outcome.status == "failed" and "only observes http://pod:8000" in outcome.reason


def test_vllm_command_line_knobs_are_rewritten() -> None:
    command = ["vllm", "serve", "m", "--max-num-seqs", "256", "--dtype=half", "--port", "8000"]
    assert command_knobs(command) == {"max_num_seqs": 256, "dtype": "half"}
    assert with_knobs(command, {"max_num_seqs": 64, "gpu_memory_utilization": 0.8}) == [
        "vllm", "serve", "m", "--max-num-seqs", "64", "--dtype=half", "--port", "8000",
        "--gpu-memory-utilization", "0.8"]


def test_vllm_knob_is_a_drained_restart_and_a_failed_restart_fails_the_decision() -> None:
    restarts: list[tuple[list[str], str]] = []
    ok = {"value": True}

    def restart(command: list[str], reason: str) -> bool:
        restarts.append((command, reason))
        return ok["value"]

    adapter = VllmEngineAdapter(["vllm", "serve", "m", "--max-num-seqs", "256"], restart)
    dispatcher = dispatcher_for(EngineKnobActuator(adapter))
    outcome = submit(dispatcher, {"set_knob": {"knob": "max_num_seqs", "factor": 0.5}})
    assert outcome.status == "applied" and outcome.detail["apply_mode"] == "restart"
    assert restarts[-1][0][-2:] == ["--max-num-seqs", "128"] and adapter.read_knobs()["max_num_seqs"] == 128
    ok["value"] = False
    failed = submit(dispatcher, {"set_knob": {"knob": "max_num_seqs", "value": 64}})
    assert failed.status == "failed" and "did not come back ready" in failed.reason
    assert adapter.read_knobs()["max_num_seqs"] == 128
    live_only = submit(dispatcher, {"set_knob": {"knob": "max_batch_size", "value": 4}})
    assert live_only.status == "failed" and "cannot change 'max_batch_size'" in live_only.reason


def capture() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200 if "fail" not in str(request.url) else 503, text="ok")

    return httpx.MockTransport(handle), seen


def test_notify_sends_alertmanager_v4_firing_then_resolved() -> None:
    transport, seen = capture()
    dispatcher = dispatcher_for(NotifyActuator(NotifyConfig(url="http://am/hook"), transport=transport))
    reason = Reason("rule", rule="HighP99", value=2.5, labels={"severity": "page"})
    fired = submit(dispatcher, {"notify": {}}, reason, extra_params={"annotations": {"summary": "p99 high"},
                                                                   "active_since_seconds": 1_700_000_000.0})
    resolved = submit(dispatcher, {"notify": {}, "on": "resolved"}, reason, state="resolved")
    assert fired.status == resolved.status == "applied"
    first, second = (json.loads(r.content) for r in seen)
    assert first["version"] == "4" and first["status"] == "firing" and first["receiver"] == "dsagent"
    alert = first["alerts"][0]
    assert alert["labels"] == {"alertname": "HighP99", "severity": "page"}
    assert alert["annotations"]["summary"] == "p99 high" and alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["startsAt"] == "2023-11-14T22:13:20Z"
    assert first["groupLabels"] == {"alertname": "HighP99"} and first["groupKey"] == '{}:{alertname="HighP99"}'
    assert second["status"] == "resolved" and second["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"


def test_webhook_posts_the_event_or_the_given_body_and_fails_on_5xx() -> None:
    transport, seen = capture()
    dispatcher = dispatcher_for(WebhookActuator(transport=transport))
    reason = Reason("rule", rule="Hot", value=91.0)
    assert submit(dispatcher, {"webhook": {"url": "http://hooks/x"}}, reason).status == "applied"
    assert json.loads(seen[-1].content)["rule"] == "Hot"
    assert submit(dispatcher, {"webhook": {"url": "http://hooks/y", "body": {"text": "hot"}}}, reason).status == "applied"
    assert json.loads(seen[-1].content) == {"text": "hot"}
    failed = submit(dispatcher, {"webhook": {"url": "http://hooks/fail"}}, reason)
    assert failed.status == "failed" and "answered 503" in failed.reason


def test_notify_without_url_fails_with_the_fix() -> None:
    outcome = submit(dispatcher_for(NotifyActuator(NotifyConfig())), {"notify": {}}, Reason("rule", rule="R"))
    assert outcome.status == "failed" and "actions.notify.url" in outcome.reason
