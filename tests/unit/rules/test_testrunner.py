"""The promtool-format runner's parts: expanding notation, promtool's number/duration forms, exp_actions."""

from __future__ import annotations

import math
import sys

import pytest
from dsagent.rules.events import RuleEvent
from dsagent.rules.testrunner import (
    decisions_for,
    expand_values,
    format_e,
    go_duration,
    is_stale,
    model_duration,
    parse_series_labels,
)


def test_expanding_notation() -> None:
    assert expand_values("1+2x3") == [1.0, 3.0, 5.0, 7.0]
    assert expand_values("5-1x2 _ _x2 7") == [5.0, 4.0, 3.0, None, None, None, 7.0]
    assert expand_values("0x2") == [0.0, 0.0, 0.0]  # repetition, never hex
    values = expand_values("1 stale Inf -Inf")
    assert values[0] == 1.0 and is_stale(values[1]) and values[2] == math.inf and values[3] == -math.inf


def test_promtool_forms() -> None:
    assert [format_e(v) for v in (2.0, 0.25, 1234567.0, -3.5)] == ["2E+00", "2.5E-01", "1.234567E+06", "-3.5E+00"]
    assert go_duration(60_000) == "1m0s" and go_duration(0) == "0s" and go_duration(5_400_000) == "1h30m0s"
    assert model_duration(300_000) == "5m" and model_duration(5_400_000) == "1h30m"
    assert parse_series_labels('up{job="a"}') == {"__name__": "up", "job": "a"}
    assert parse_series_labels("{}") == {}


def _event() -> RuleEvent:
    from dsagent.actions.spec import parse_actions

    return RuleEvent(rule="R", group="g", state="firing", labels={}, annotations={}, value=1.0, expr="x > 0",
                     active_since_seconds=0.0, at_seconds=60.0,
                     actions=parse_actions([{"set_knob": {"knob": "max_batch_size", "step": 8}}], "t"))


def test_exp_actions_go_through_the_actions_planner() -> None:
    [decision] = decisions_for([_event()], {"max_batch_size": 32})
    assert decision == {"rule": "R", "action": "set_knob", "target": "knob:max_batch_size", "old": 32, "new": 40}


def test_exp_actions_without_the_planner_compare_the_action_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dsagent.actions.planner", None)  # import fails as if not installed
    assert decisions_for([_event()], {}) == [{"rule": "R", "set_knob": {"knob": "max_batch_size", "step": 8.0}}]
