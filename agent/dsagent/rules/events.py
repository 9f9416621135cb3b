"""What the rule manager tells its sinks after each group evaluation: one event per alert instance.

Why a frozen record of its own: the actions runtime (dsagent.actions) plans Decisions from these and the
test runner compares them against `exp_actions`, so rules and actions share one small, stable shape and
neither imports the other's internals. An event is emitted for every firing instance at every evaluation
while it fires, and once when it becomes resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

EventState = Literal["firing", "resolved"]


@dataclass(frozen=True)
class RuleEvent:
    """One alert instance at one evaluation.

    value: the alert expression's value for this instance (the sample that made it fire, or its last value
    when resolved). active_since_seconds: when the instance first became pending. actions: the rule's
    parsed action specs (dsagent.actions.spec.ActionSpec), possibly empty.
    """

    rule: str
    group: str
    state: EventState
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float
    expr: str
    active_since_seconds: float
    at_seconds: float
    actions: list[Any] = field(default_factory=list)
    source_file: str = ""
