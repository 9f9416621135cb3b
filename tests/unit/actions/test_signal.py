"""verify-after-apply's signal: the alert expression without its threshold, evaluated over the store."""

from __future__ import annotations

import time

import pytest
from dsagent.actions.signal import rule_signal, signal_expression
from dsagent.samples import Sample, make_labels
from dsagent.store import TimeSeriesStore


@pytest.mark.parametrize(("expr", "watched"), [
    ("inference_latency_p99_seconds > 1.5", "inference_latency_p99_seconds"),
    ("max(dsagent_gpu_temperature_celsius) >= 85", "max(dsagent_gpu_temperature_celsius)"),
    ("rate(x_total[1m]) < bool 0.5", "rate(x_total[1m])"),
    ("up == 0 and on() vector(1)", "up == 0 and on() vector(1)"),  # not a trailing number: kept
])
def test_signal_expression_drops_the_trailing_threshold(expr: str, watched: str) -> None:
    assert signal_expression(expr) == watched


def test_rule_signal_reads_the_value_even_when_the_rule_no_longer_fires() -> None:
    store = TimeSeriesStore(600, 100)
    now = time.time()
    store.append([Sample("inference_latency_p99_seconds", make_labels({"model": "m"}), 0.4, now - 1)])
    read = rule_signal(store, 'inference_latency_p99_seconds{model="m"} > 1.5', {"model": "m"})
    assert read() == pytest.approx(0.4)
    assert rule_signal(store, "absent_metric > 1")() is None


@pytest.mark.parametrize(("expr", "direction"), [
    ("inference_latency_p99_seconds > 1.5", "lower"),
    ("max(dsagent_gpu_utilization_ratio) >= 0.9", "lower"),
    ("max(dsagent_gpu_utilization_ratio) < 0.1", "higher"),
    ("up == 0", None),
    ("rate(x[1m])", None),
])
def test_better_direction_follows_the_alerts_comparison(expr: str, direction: str | None) -> None:
    from dsagent.actions.signal import better_direction

    assert better_direction(expr) == direction


def test_an_idle_rules_scale_in_is_not_rolled_back_when_utilization_rises() -> None:
    from dsagent.actions import ActionsConfig, ActuatorRegistry, Guard, RecordingActuator
    from dsagent.actions.dispatcher import Dispatcher
    from dsagent.actions.spec import parse_actions
    from dsagent.rules.events import RuleEvent

    clock = [1000.0]
    actuator = RecordingActuator(("scale",), {"scale:d": 6})
    guard = Guard(ActionsConfig(), ActuatorRegistry([actuator]), clock=lambda: clock[0])
    dispatcher = Dispatcher(guard, scale_target="d", signal_for=lambda event, spec: lambda: 0.4, clock=lambda: clock[0])
    event = RuleEvent(rule="Idle", group="g", state="firing", labels={}, annotations={}, value=0.05,
                      expr="max(dsagent_gpu_utilization_ratio) < 0.1", active_since_seconds=990.0, at_seconds=1000.0,
                      actions=parse_actions([{"scale": {"replicas": "-1"}}], "t"))
    [outcome] = dispatcher.handle_event(event)
    assert outcome.status == "applied" and outcome.decision.verify is not None
    assert outcome.decision.verify.direction == "higher"
    clock[0] += 31
    [verdict] = guard.tick()
    assert verdict.status == "verified" and actuator.values["scale:d"] == 5
