"""The one Decision type every change goes through, and the Outcome the guard gives back.

Why: rules, schedules, the tuner and an operator's `dsagent act` all change the world the same way, so the
guard (bounds, cooldown, rate limit, hysteresis, dry-run, verify-after-apply) and the audit trail see one
shape. A Decision says what (action, target, old -> new), why (Reason: rule, expression value, labels) and
how carefully (dry_run, cooldown, verify). It holds no behaviour beyond naming itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from dsagent.actions.spec import VerifySpec

DecisionSource = Literal["rule", "operator", "schedule", "tuner"]
OutcomeStatus = Literal["applied", "skipped", "dry_run", "failed", "rolled_back", "verified"]
OUTCOME_STATUSES: tuple[str, ...] = ("applied", "skipped", "dry_run", "failed", "rolled_back", "verified")


@dataclass(frozen=True)
class Reason:
    """Why a Decision was made: who asked and on what evidence."""

    source: DecisionSource
    rule: str | None = None
    group: str | None = None
    expr: str | None = None
    value: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    detail: str = ""

    def text(self) -> str:
        if self.source == "rule":
            shown = f"{self.value:.4g}" if isinstance(self.value, float) and math.isfinite(self.value) else "?"
            return f"rule {self.rule} firing (value {shown})" + (f": {self.detail}" if self.detail else "")
        named = f" {self.rule}" if self.rule and self.rule != self.source else ""
        return f"{self.source}{named}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Decision:
    """One change to make: `action` on `target` from `old_value` to `new_value`, for `reason`.

    target names the thing changed so cooldowns and rate limits key on it: "knob:max_batch_size",
    "gpu:0:power_limit_watts", "scale:Deployment/default/llm", "notify:<url>". `params` carries what the
    actuator needs beyond the value (the knob name, GPU index, URL, payload). `signal` re-reads the watched
    signal for verify-after-apply (None: no verify possible); `signal_before` is its value at decision time.
    """

    action: str
    target: str
    new_value: Any
    reason: Reason
    old_value: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    cooldown_seconds: float | None = None
    verify: VerifySpec | None = None
    signal: Callable[[], float | None] | None = None
    signal_before: float | None = None
    at_seconds: float = field(default_factory=time.time)
    rollback_of: str | None = None  # the id of the Decision this one undoes

    @property
    def direction(self) -> Literal["up", "down"] | None:
        """up/down for numeric changes (scale-in cooldown, hysteresis); None otherwise."""
        if _is_number(self.old_value) and _is_number(self.new_value):
            if self.new_value > self.old_value:
                return "up"
            if self.new_value < self.old_value:
                return "down"
        return None

    @property
    def id(self) -> str:
        """Deterministic: the same decision (target, values, reason, time) always gets the same id."""
        identity = json.dumps([self.action, self.target, _plain(self.old_value), _plain(self.new_value),
                               self.reason.source, self.reason.rule, round(self.at_seconds, 3), self.rollback_of],
                              default=str, sort_keys=True)
        return hashlib.sha256(identity.encode()).hexdigest()[:20]

    def short_target(self) -> str:
        """The target without its kind prefix, for the status table's "knob" column."""
        return self.target.split(":", 1)[1] if ":" in self.target else self.target

    def with_values(self, **changes: Any) -> Decision:
        return replace(self, **changes)


@dataclass
class Outcome:
    """What happened to a Decision; `event` is the audit document recorded for it (None if not recorded)."""

    decision: Decision
    status: OutcomeStatus
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] | None = None
    verify_due_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("applied", "dry_run", "verified")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
