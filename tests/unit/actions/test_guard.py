"""The guard: bounds, no-op, cooldown (scale-in longer), hysteresis, rate limit, dry-run, actuator failure,
verify-after-apply with rollback, and the audit trail (deduplicated skips, counted outcomes)."""

from __future__ import annotations

from typing import Any

import pytest
from dsagent.actions import ActionsConfig, ActuatorRegistry, Decision, Guard, Reason, RecordingActuator
from dsagent.actions.config import KnobBounds
from dsagent.actions.spec import VerifySpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_guard(**config: Any) -> tuple[Guard, RecordingActuator, list[dict[str, Any]], Clock]:
    actuator = RecordingActuator(("set_knob", "scale", "notify"),
                                 {"knob:max_batch_size": 32, "scale:Deployment/default/llm": 5})
    audit: list[dict[str, Any]] = []
    clock = Clock()
    guard = Guard(ActionsConfig(**config), ActuatorRegistry([actuator]), audit=audit.append, clock=clock)
    return guard, actuator, audit, clock


def knob(new: Any, **kw: Any) -> Decision:
    return Decision(action="set_knob", target="knob:max_batch_size", new_value=new, params={"knob": "max_batch_size"},
                    reason=Reason("rule", rule="HighP99", value=2.0, labels={"severity": "page"}), **kw)


def scale(new: int) -> Decision:
    return Decision(action="scale", target="scale:Deployment/default/llm", new_value=new, reason=Reason("rule", rule="Busy"))


def test_applied_decision_reads_the_old_value_and_audits_it() -> None:
    guard, actuator, audit, _ = make_guard()
    outcome = guard.submit(knob(16))
    assert outcome.status == "applied"
    assert actuator.applied == [("knob:max_batch_size", 16)]
    event = audit[-1]
    assert (event["outcome"], event["knob"], event["old"], event["new"], event["rule"]) == (
        "applied", "max_batch_size", 32, 16, "HighP99")
    assert event["labels"] == {"severity": "page"} and len(event["decision_id"]) == 20


def test_decision_id_is_deterministic() -> None:
    a, b = knob(16, at_seconds=5.0, old_value=32), knob(16, at_seconds=5.0, old_value=32)
    assert a.id == b.id and knob(8, at_seconds=5.0, old_value=32).id != a.id


def test_cooldown_skips_and_audits_the_skip_once() -> None:
    guard, actuator, audit, clock = make_guard(cooldown_seconds=60)
    guard.submit(knob(16))
    clock.now += 10
    first = guard.submit(knob(8))
    clock.now += 1
    second = guard.submit(knob(8))
    assert first.status == second.status == "skipped" and "cooldown" in first.reason
    assert first.event is not None and second.event is None  # the repeat is counted, not re-audited
    assert [e["outcome"] for e in audit] == ["applied", "skipped"]
    assert guard.outcome_counts[("set_knob", "skipped")] == 2
    clock.now += 60
    assert guard.submit(knob(8)).status == "applied"
    assert actuator.values["knob:max_batch_size"] == 8


def test_scale_in_waits_the_longer_cooldown() -> None:
    guard, _, _, clock = make_guard(scale_out_cooldown_seconds=60, scale_in_cooldown_seconds=300, hysteresis_seconds=0)
    assert guard.submit(scale(6)).status == "applied"
    clock.now += 61
    assert guard.submit(scale(7)).status == "applied"  # out again after the short cooldown
    clock.now += 61
    refused = guard.submit(scale(6))
    assert refused.status == "skipped" and "cooldown 300" in refused.reason
    clock.now += 240
    assert guard.submit(scale(6)).status == "applied"


def test_hysteresis_blocks_a_quick_reversal() -> None:
    guard, _, _, clock = make_guard(cooldown_seconds=0, hysteresis_seconds=120)
    guard.submit(knob(16))
    clock.now += 30
    assert guard.submit(knob(8)).status == "applied"  # same direction: fine
    clock.now += 30
    reversed_ = guard.submit(knob(64))
    assert reversed_.status == "skipped" and "hysteresis" in reversed_.reason
    clock.now += 120
    assert guard.submit(knob(64)).status == "applied"


def test_rate_limit_over_all_targets() -> None:
    guard, _, _, clock = make_guard(cooldown_seconds=0, hysteresis_seconds=0, max_changes=2, window_seconds=100)
    assert guard.submit(knob(16)).status == "applied"
    assert guard.submit(scale(6)).status == "applied"
    clock.now += 1
    limited = guard.submit(knob(8))
    assert limited.status == "skipped" and "rate limit" in limited.reason
    clock.now += 100
    assert guard.submit(knob(8)).status == "applied"


def test_bounds_and_noop() -> None:
    guard, actuator, _, _ = make_guard(knob_bounds={"max_batch_size": KnobBounds(min=4, max=64)})
    low = guard.submit(knob(2))
    assert low.status == "skipped" and "below actions.knob_bounds.max_batch_size.min 4" in low.reason
    same = guard.submit(knob(32))
    assert same.status == "skipped" and "already 32" in same.reason
    assert actuator.applied == []


@pytest.mark.parametrize("global_dry_run", [True, False])
def test_dry_run_records_what_it_would_do_and_changes_nothing(global_dry_run: bool) -> None:
    guard, actuator, audit, clock = make_guard(dry_run=global_dry_run)
    outcome = guard.submit(knob(16, dry_run=not global_dry_run))
    assert outcome.status == "dry_run" and "would change max_batch_size 32 -> 16" in outcome.reason
    assert actuator.applied == [] and audit[-1]["outcome"] == "dry_run"
    clock.now += 5
    assert guard.submit(knob(16, dry_run=not global_dry_run)).status == "skipped"  # cooled down like a change


def test_actuator_failure_is_a_failed_decision_with_its_reason() -> None:
    guard, actuator, audit, _ = make_guard()
    actuator.fail_with = "NVML: Insufficient Permissions"
    outcome = guard.submit(knob(16))
    assert outcome.status == "failed" and outcome.reason == "NVML: Insufficient Permissions"
    assert audit[-1]["outcome"] == "failed"


def test_unknown_action_fails_naming_what_exists() -> None:
    guard, _, _, _ = make_guard()
    outcome = guard.submit(Decision(action="set_power_limit", target="gpu:all:power_limit", new_value={"watts": 200},
                                    reason=Reason("operator")))
    assert outcome.status == "skipped" and "no actuator for 'set_power_limit'" in outcome.reason
    assert outcome.event is not None
    again = guard.submit(Decision(action="set_power_limit", target="gpu:all:power_limit", new_value={"watts": 200},
                                  reason=Reason("operator")))
    assert again.status == "skipped" and again.event is None  # said once, not every evaluation


def test_verify_rolls_back_a_change_that_made_the_signal_worse() -> None:
    guard, actuator, audit, clock = make_guard()
    signal = {"value": 2.0}
    outcome = guard.submit(knob(16, signal=lambda: signal["value"], signal_before=2.0,
                                verify=VerifySpec(settle_seconds=30, direction="lower")))
    assert outcome.status == "applied" and outcome.verify_due_seconds == clock.now + 30
    clock.now += 10
    assert guard.tick() == []  # not settled yet
    signal["value"] = 3.0
    clock.now += 25
    [verdict] = guard.tick()
    assert verdict.status == "rolled_back" and "got worse 2 -> 3" in verdict.reason
    assert actuator.values["knob:max_batch_size"] == 32
    assert audit[-1]["outcome"] == "rolled_back" and audit[-1]["rollback_of"] == outcome.decision.id
    assert audit[-1]["detail"]["signal_after"] == 3.0


def test_verify_keeps_a_change_that_helped_or_resolved_the_rule() -> None:
    guard, actuator, _, clock = make_guard()
    outcome = guard.submit(knob(16, signal=lambda: None, signal_before=2.0))
    clock.now += 31  # default settle 30 s
    [verdict] = guard.tick()
    assert verdict.status == "verified" and "no longer firing" in verdict.reason
    assert actuator.values["knob:max_batch_size"] == 16 and outcome.status == "applied"


def test_wait_verified_blocks_until_settled() -> None:
    guard, _, _, clock = make_guard()
    outcome = guard.submit(knob(16, signal=lambda: 1.0, signal_before=2.0, verify=VerifySpec(settle_seconds=5)))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    assert guard.wait_verified(outcome, sleep=sleep).status == "verified" and slept == [5.0]
    assert guard.pending_verifies() == 0


def test_samples_count_outcomes_for_metrics() -> None:
    guard, _, _, _ = make_guard()
    guard.submit(knob(16))
    guard.submit(knob(16))
    by_labels = {dict(s.labels).get("outcome"): s.value for s in guard.samples(0.0) if s.name == "dsagent_actions_total"}
    assert by_labels == {"applied": 1.0, "skipped": 1.0}


def test_a_failing_actuator_is_retried_after_the_cooldown_not_every_tick() -> None:
    guard, actuator, audit, clock = make_guard(cooldown_seconds=60)
    actuator.fail_with = "no permission"
    assert guard.submit(knob(16)).status == "failed"
    clock.now += 1
    again = guard.submit(knob(16))
    assert again.status == "skipped" and "failed" in again.reason
    clock.now += 60
    actuator.fail_with = None
    assert guard.submit(knob(16)).status == "applied"
    assert [e["outcome"] for e in audit] == ["failed", "skipped", "applied"]


def test_rule_events_become_decisions_and_rules_dry_run_changes_nothing() -> None:
    from dsagent.actions.dispatcher import Dispatcher
    from dsagent.actions.spec import parse_actions
    from dsagent.rules.events import RuleEvent

    guard, actuator, audit, _ = make_guard()
    dispatcher = Dispatcher(guard)
    event = RuleEvent(rule="HighP99", group="slo", state="firing", labels={"severity": "page"}, annotations={},
                      value=2.5, expr="p99 > 1", active_since_seconds=990.0, at_seconds=1000.0,
                      actions=parse_actions([{"set_knob": {"knob": "max_batch_size", "factor": 0.5}},
                                             {"notify": {}, "on": "resolved"}], "t"))
    dispatcher.rules_dry_run = True
    [outcome] = dispatcher.handle_event(event)
    assert outcome.status == "dry_run" and actuator.applied == []
    dispatcher.rules_dry_run = False
    guard.config.cooldown_seconds = 0
    [outcome] = dispatcher.handle_event(event)
    assert outcome.status == "applied" and actuator.values["knob:max_batch_size"] == 16
    assert audit[-1]["rule"] == "HighP99" and audit[-1]["value"] == 2.5 and audit[-1]["labels"] == {"severity": "page"}
    dispatcher.on_rule_events([event, event])  # queued once, handled by the worker
    assert dispatcher.wait_idle(5)


def test_a_rule_labelled_dry_run_only_records() -> None:
    from dsagent.actions.dispatcher import Dispatcher
    from dsagent.actions.spec import parse_actions
    from dsagent.rules.events import RuleEvent

    guard, actuator, _, _ = make_guard()
    event = RuleEvent(rule="Trial", group="g", state="firing", labels={"dry_run": "true"}, annotations={},
                      value=2.0, expr="x > 1", active_since_seconds=0.0, at_seconds=1.0,
                      actions=parse_actions([{"set_knob": {"knob": "max_batch_size", "value": 8}}], "t"))
    [outcome] = Dispatcher(guard).handle_event(event)
    assert outcome.status == "dry_run" and actuator.applied == []
