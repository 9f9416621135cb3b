"""Schedules: cron policies that apply knob profiles or switch rule groups by time of day.

Why: the guides' off-peak habits (a lower GPU power limit at night, half the replicas after hours, a
latency-first profile during business hours) are time-driven, not signal-driven. Each policy fires on an
APScheduler CronTrigger (5-field crontab, UTC, the agent's scheduler) and every change it makes is a
Decision through the same guard and audit trail as a rule's (reason: source "schedule", the policy name).

    schedules:
      - name: night-power-save
        cron: "0 22 * * *"
        actions:
          - set_power_limit: {fraction_of_default: 0.7}
          - scale: {replicas: "x0.5", min: 4}
      - name: day-profile
        cron: "0 7 * * 1-5"
        actions: [{reset_power_limit: {}}, {set_knob: {knob: max_batch_size, value: 32}}]
        enable_groups: [latency-slo]
        disable_groups: [night-batch]
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dsagent.actions.actuators.base import ActuatorError
from dsagent.actions.decision import Decision, Outcome, Reason
from dsagent.actions.spec import ActionSpec, parse_actions

log = logging.getLogger(__name__)


class SchedulePolicy(BaseModel):
    """One cron policy; `actions` use the rule files' action syntax."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    cron: str
    actions: list[Any] = Field(default_factory=list)
    enable_groups: list[str] = Field(default_factory=list)
    disable_groups: list[str] = Field(default_factory=list)
    dry_run: bool = False

    @field_validator("cron")
    @classmethod
    def _crontab(cls, cron: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(cron, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"bad cron expression {cron!r} (5 fields: minute hour day month weekday): {exc}") from exc
        return cron

    @field_validator("actions")
    @classmethod
    def _actions(cls, raw: list[Any]) -> list[Any]:
        parse_actions(raw, "actions")  # ActionSpecError is a ValueError: pydantic names the key
        return raw

    @model_validator(mode="after")
    def _does_something(self) -> SchedulePolicy:
        if not (self.actions or self.enable_groups or self.disable_groups):
            raise ValueError(f"schedule {self.name!r} does nothing: give actions, enable_groups or disable_groups")
        return self

    def specs(self) -> list[ActionSpec]:
        return parse_actions(self.actions, f"schedule {self.name}")


class RuleGroupActuator:
    """switch_rule_group: enable or disable a rule group in the rules manager (a schedule's rule-set switch)."""

    kinds: tuple[str, ...] = ("switch_rule_group",)

    def __init__(self, manager_getter: Any) -> None:
        self.manager_getter = manager_getter

    def _manager(self) -> Any:
        manager = self.manager_getter()
        if manager is None or not hasattr(manager, "set_group_enabled"):
            raise ActuatorError("the rules manager cannot switch rule groups here (no rules loaded, or it has no "
                                "set_group_enabled)")
        return manager

    def current(self, decision: Decision) -> Any:
        manager = self._manager()
        enabled = getattr(manager, "group_enabled", None)
        try:
            return bool(enabled(decision.params["group"])) if callable(enabled) else None
        except (KeyError, ValueError) as exc:
            raise ActuatorError(f"rule group {decision.params['group']!r}: {exc}") from exc

    def apply(self, decision: Decision) -> dict[str, Any]:
        try:
            self._manager().set_group_enabled(decision.params["group"], bool(decision.new_value))
        except (KeyError, ValueError) as exc:
            raise ActuatorError(f"rule group {decision.params['group']!r}: {exc}") from exc
        return {"group": decision.params["group"], "enabled": bool(decision.new_value)}


def run_policy(policy: SchedulePolicy, dispatcher: Any) -> list[Outcome]:
    """Apply one policy now: each action and each group switch is its own Decision through the guard."""
    reason = Reason("schedule", rule=f"schedule:{policy.name}", detail=f"cron {policy.cron}")
    outcomes: list[Outcome] = []
    for spec in policy.specs():
        outcomes.append(dispatcher.submit_spec(spec, reason, dry_run=policy.dry_run,
                                               cooldown_seconds=spec.cooldown_seconds or 0.0))
    for group, enabled in [*((g, True) for g in policy.enable_groups), *((g, False) for g in policy.disable_groups)]:
        decision = Decision(action="switch_rule_group", target=f"rules:{group}", new_value=enabled, reason=reason,
                            params={"group": group}, dry_run=policy.dry_run, cooldown_seconds=0.0)
        outcomes.append(dispatcher.guard.submit(decision))
    log.info("schedule %s ran: %s", policy.name, ", ".join(o.status for o in outcomes))
    return outcomes
