"""Schedules: a cron policy's changes are Decisions through the guard (source schedule), rule groups switch
through the rules manager, bad policies are refused naming the key, and each policy is a cron job."""

from __future__ import annotations

from typing import Any

import pytest
from dsagent.actions import ActionsConfig, ActuatorRegistry, Guard, RecordingActuator
from dsagent.actions.dispatcher import Dispatcher
from dsagent.actions.runtime import ActionRuntime
from dsagent.actions.schedules import RuleGroupActuator, SchedulePolicy, run_policy
from dsagent.config import AgentConfig, EngineConfig
from dsagent.scheduler import AgentScheduler
from pydantic import ValidationError


class Manager:
    def __init__(self) -> None:
        self.groups = {"latency-slo": False, "night-batch": True}

    def set_group_enabled(self, group: str, enabled: bool) -> None:
        if group not in self.groups:
            raise KeyError(f"no rule group {group!r}")
        self.groups[group] = enabled

    def group_enabled(self, group: str) -> bool:
        return self.groups[group]


def test_policy_changes_are_audited_decisions_from_the_schedule() -> None:
    actuator = RecordingActuator(("set_knob", "scale"), {"knob:max_batch_size": 8, "scale:d": 10})
    manager = Manager()
    audit: list[dict[str, Any]] = []
    guard = Guard(ActionsConfig(), ActuatorRegistry([actuator, RuleGroupActuator(lambda: manager)]), audit=audit.append)
    policy = SchedulePolicy(name="day", cron="0 7 * * 1-5",
                            actions=[{"set_knob": {"knob": "max_batch_size", "value": 32}}, {"scale": {"replicas": "x0.5"}}],
                            enable_groups=["latency-slo"], disable_groups=["night-batch"])
    outcomes = run_policy(policy, Dispatcher(guard, scale_target="d"))
    assert [o.status for o in outcomes] == ["applied"] * 4
    assert actuator.values == {"knob:max_batch_size": 32, "scale:d": 5}
    assert manager.groups == {"latency-slo": True, "night-batch": False}
    assert {e["source"] for e in audit} == {"schedule"} and audit[0]["rule"] == "schedule:day"


def test_unknown_group_and_missing_manager_fail_with_a_reason() -> None:
    guard = Guard(ActionsConfig(), ActuatorRegistry([RuleGroupActuator(lambda: None)]))
    [outcome] = run_policy(SchedulePolicy(name="n", cron="0 0 * * *", enable_groups=["x"]), Dispatcher(guard))
    assert outcome.status == "failed" and "cannot switch rule groups" in outcome.reason
    guard = Guard(ActionsConfig(), ActuatorRegistry([RuleGroupActuator(Manager)]))
    [outcome] = run_policy(SchedulePolicy(name="n", cron="0 0 * * *", enable_groups=["nope"]), Dispatcher(guard))
    assert outcome.status == "failed" and "nope" in outcome.reason


def test_dry_run_policy_changes_nothing() -> None:
    actuator = RecordingActuator(("set_knob",), {"knob:max_batch_size": 8})
    guard = Guard(ActionsConfig(), ActuatorRegistry([actuator]))
    policy = SchedulePolicy(name="n", cron="0 0 * * *", dry_run=True,
                            actions=[{"set_knob": {"knob": "max_batch_size", "value": 2}}])
    [outcome] = run_policy(policy, Dispatcher(guard))
    assert outcome.status == "dry_run" and actuator.applied == []


@pytest.mark.parametrize(("policy", "message"), [
    ({"name": "a", "cron": "0 25 * * *", "actions": ["notify"]}, "bad cron expression"),
    ({"name": "a", "cron": "0 1 * * *", "actions": [{"set_knob": {"knob": "zz", "value": 1}}]}, "unknown knob 'zz'"),
    ({"name": "a", "cron": "0 1 * * *"}, "does nothing"),
])
def test_bad_policies_are_refused_naming_the_key(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AgentConfig.model_validate({"schedules": [policy]})
    assert message in str(caught.value) and "schedules.0" in str(caught.value)


def test_each_policy_becomes_a_cron_job(tmp_path: Any) -> None:
    scheduler = AgentScheduler()
    runtime = ActionRuntime(ActionsConfig(), EngineConfig(), tmp_path, audit=lambda event: None)
    runtime.add_schedules(scheduler, [SchedulePolicy(name="night", cron="0 22 * * *", actions=["notify"])], lambda: None)
    assert scheduler.job_names() == ["schedule:night"]
    assert "switch_rule_group" in runtime.registry.kinds()
