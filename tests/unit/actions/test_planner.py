"""The planner: relative knob changes, clamping, int rounding, replica bounds, and decisions_for_test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from dsagent.actions.decision import Reason
from dsagent.actions.planner import PlanError, decisions_for_test, knob_value, plan
from dsagent.actions.spec import SetKnob, parse_actions


@pytest.mark.parametrize(("body", "current", "expected"), [
    ({"value": 8}, 32, 8),
    ({"factor": 0.5}, 32, 16),
    ({"factor": 0.5}, 3, 1),            # rounds down when shrinking, so a small knob still moves
    ({"factor": 0.5, "min": 4}, 6, 4),
    ({"step": 8, "max": 36}, 32, 36),
    ({"factor": 1.5}, 3, 5),            # rounds up when growing
    ({"value": 100, "max": 64}, 1, 64),
])
def test_knob_values(body: dict[str, Any], current: int, expected: int) -> None:
    assert knob_value(SetKnob(knob="max_batch_size", **body), current) == expected


def test_step_on_unknown_value_cannot_be_planned() -> None:
    with pytest.raises(PlanError, match="current value unknown"):
        knob_value(SetKnob(knob="max_batch_size", step=1), None)


def test_plan_scale_uses_operator_bounds() -> None:
    [spec] = parse_actions([{"scale": {"replicas": "x2", "max": 50}}], "t")
    decision = plan(spec, Reason("rule", rule="Busy"), 8, at_seconds=1.0, scale_target="Deployment/d/llm",
                    replicas_bounds=(4, 12))
    assert (decision.target, decision.old_value, decision.new_value) == ("scale:Deployment/d/llm", 8, 12)


@dataclass
class Event:
    rule: str
    state: str
    actions: list[Any]
    value: float = 1.0
    labels: dict[str, str] = field(default_factory=dict)


def test_decisions_for_test_follows_state_and_knob_state() -> None:
    actions = [{"set_knob": {"knob": "max_batch_size", "factor": 0.5, "min": 1}},
               {"notify": {}, "on": "resolved"}, {"scale": {"replicas": "+1"}, "dry_run": True}]
    firing = decisions_for_test([Event("HighP99", "firing", actions)], {"max_batch_size": 32, "replicas": 4})
    assert firing == [
        {"rule": "HighP99", "action": "set_knob", "target": "knob:max_batch_size", "old": 32, "new": 16},
        {"rule": "HighP99", "action": "scale", "target": "scale:scale", "old": 4, "new": 5, "dry_run": True},
    ]
    resolved = decisions_for_test([Event("HighP99", "resolved", actions)], {})
    assert [(d["action"], d["new"]) for d in resolved] == [("notify", "resolved")]
    unknown = decisions_for_test([Event("R", "firing", [{"set_knob": {"knob": "max_batch_size", "step": 1}}])], {})
    assert "current value unknown" in unknown[0]["error"]
