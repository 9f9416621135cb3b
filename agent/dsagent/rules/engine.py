"""Rule evaluation and alert state, as Prometheus 2.42's rules package does it (rules/alerting.go, group.Eval).

Why one module for both users: the agent's rule manager and `dsagent rules test` must evaluate a group
identically (the test runner is proven against promtool), so both call Group.evaluate here. A group
evaluates its rules in order at one timestamp; each rule's output is written before the next rule runs,
and series a rule produced last time but not this time get a stale marker, so they vanish at once.

Alert states: a new instance is pending (active_at = now); it fires once now - active_at >= for; when it
drops out of the result a firing alert keeps firing for keep_firing_for (clock from the first false
evaluation), then becomes inactive (resolved, kept 15 minutes for reporting); a pending one is dropped.
ALERTS{alertname, alertstate, ...} = 1 and ALERTS_FOR_STATE = active_at (seconds) are written for every
pending or firing instance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dsagent.rules import promql, template
from dsagent.rules.events import RuleEvent
from dsagent.rules.rulefile import GroupSpec, RuleSpec

log = logging.getLogger(__name__)
RESOLVED_RETENTION_MS = 15 * 60 * 1000
Labels = dict[str, str]
LabelsKey = tuple[tuple[str, str], ...]


class Appender(Protocol):
    """Where rule outputs go: the agent's store, or a test's series."""

    def append(self, labels: Labels, t_ms: int, value: float) -> None: ...

    def append_stale(self, labels: Labels, t_ms: int) -> None: ...


def _key(labels: Labels) -> LabelsKey:
    return tuple(sorted(labels.items()))


@dataclass
class Alert:
    """One alert instance (one label set) of an alerting rule."""

    labels: Labels
    annotations: Labels
    value: float
    active_at_ms: int
    state: str = "pending"  # pending | firing | inactive
    fired_at_ms: int = 0
    resolved_at_ms: int = 0
    keep_firing_since_ms: int = 0
    last_sent_state: str = ""


@dataclass
class RuleState:
    """A rule with its runtime state (alert instances, health, last evaluation)."""

    spec: RuleSpec
    active: dict[LabelsKey, Alert] = field(default_factory=dict)
    health: str = "unknown"
    last_error: str = ""
    last_evaluation_ms: int = 0
    evaluation_seconds: float = 0.0
    last_sample_count: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def firing(self) -> list[Alert]:
        return [a for a in self.active.values() if a.state == "firing"]

    def state(self) -> str:
        """Prometheus's rule state: firing if any instance fires, else pending if any is pending, else inactive."""
        states = {a.state for a in self.active.values()}
        if "firing" in states:
            return "firing"
        if "pending" in states:
            return "pending"
        return "inactive"


class RuleEvalError(RuntimeError):
    pass


def evaluate_alerting(rule: RuleState, storage: Any, ts_ms: int, lookback_ms: int,
                      external_labels: Labels | None = None,
                      cache: dict[Any, Any] | None = None, limit: int = 0) -> tuple[list[tuple[Labels, float]], list[Alert]]:
    """One evaluation of an alerting rule: (ALERTS / ALERTS_FOR_STATE samples, instances resolved now)."""
    spec = rule.spec
    result = promql.instant_vector(storage, spec.node, ts_ms / 1000.0, lookback_ms / 1000.0, cache)
    fresh: dict[LabelsKey, Alert] = {}
    for metric, value in result:
        labels = dict(metric)
        labels.pop("__name__", None)
        for name, text in spec.labels.items():
            labels[name] = template.expand(text, metric, value, external_labels)
        labels["alertname"] = spec.name
        labels = {k: v for k, v in labels.items() if v != ""}
        annotations = {name: template.expand(text, metric, value, external_labels)
                       for name, text in spec.annotations.items()}
        key = _key(labels)
        if key in fresh:
            raise RuleEvalError("vector contains metrics with the same labelset after applying alert labels")
        fresh[key] = Alert(labels=labels, annotations=annotations, value=value, active_at_ms=ts_ms)
    for key, alert in fresh.items():
        existing = rule.active.get(key)
        if existing is not None and existing.state != "inactive":
            existing.value = alert.value
            existing.annotations = alert.annotations
            continue
        rule.active[key] = alert
    samples: list[tuple[Labels, float]] = []
    resolved: list[Alert] = []
    for key, alert in list(rule.active.items()):
        if key not in fresh:
            keep_firing = False
            if alert.state == "firing" and spec.keep_firing_for_seconds > 0:
                if alert.keep_firing_since_ms == 0:
                    alert.keep_firing_since_ms = ts_ms
                if ts_ms - alert.keep_firing_since_ms < round(spec.keep_firing_for_seconds * 1000):
                    keep_firing = True
            if alert.state == "pending" or (alert.resolved_at_ms and ts_ms - alert.resolved_at_ms > RESOLVED_RETENTION_MS):
                del rule.active[key]
            if alert.state != "inactive" and not keep_firing:
                if alert.state == "firing":
                    resolved.append(alert)
                alert.state = "inactive"
                alert.resolved_at_ms = ts_ms
            if not keep_firing:
                continue
        else:
            alert.keep_firing_since_ms = 0
        if alert.state == "pending" and ts_ms - alert.active_at_ms >= round(spec.for_seconds * 1000):
            alert.state = "firing"
            alert.fired_at_ms = ts_ms
        samples.append(({**alert.labels, "__name__": "ALERTS", "alertstate": alert.state}, 1.0))
        samples.append(({**alert.labels, "__name__": "ALERTS_FOR_STATE"}, alert.active_at_ms // 1000 * 1.0))
    active = len(samples) // 2
    if limit > 0 and active > limit:  # the group's `limit`: the rule fails and forgets its alerts
        rule.active = {}
        raise RuleEvalError(f"exceeded limit of {limit} with {active} alerts")
    return samples, resolved


def evaluate_recording(rule: RuleState, storage: Any, ts_ms: int, lookback_ms: int,
                       cache: dict[Any, Any] | None = None, limit: int = 0) -> list[tuple[Labels, float]]:
    spec = rule.spec
    out = []
    seen = set()
    for metric, value in promql.instant_vector(storage, spec.node, ts_ms / 1000.0, lookback_ms / 1000.0, cache):
        labels = dict(metric)
        labels["__name__"] = spec.name
        for name, text in spec.labels.items():
            if text == "":
                labels.pop(name, None)
            else:
                labels[name] = text
        key = _key(labels)
        if key in seen:
            raise RuleEvalError("vector contains metrics with the same labelset after applying rule labels")
        seen.add(key)
        out.append((labels, value))
    if limit > 0 and len(out) > limit:
        raise RuleEvalError(f"exceeded limit of {limit} with {len(out)} series")
    return out


class Group:
    """A rule group with its runtime state; evaluate() runs every rule once at one timestamp."""

    def __init__(self, spec: GroupSpec, default_interval_seconds: float = 60.0) -> None:
        self.spec = spec
        self.name = spec.name
        self.source_file = spec.source_file
        self.interval_seconds = spec.interval_seconds or default_interval_seconds
        self.rules = [RuleState(rule) for rule in spec.rules]
        self.previous_series: list[dict[LabelsKey, Labels]] = [{} for _ in self.rules]
        self.last_evaluation_ms = 0
        self.evaluation_seconds = 0.0
        self.enabled = True

    def adopt_state(self, old: Group) -> None:
        """Carry alert state over a reload for rules whose definition did not change."""
        by_identity = {rule.spec.identity(): (rule, prev) for rule, prev in zip(old.rules, old.previous_series, strict=True)}
        for index, rule in enumerate(self.rules):
            match = by_identity.get(rule.spec.identity())
            if match is not None:
                old_rule, prev = match
                rule.active = old_rule.active
                rule.health, rule.last_error = old_rule.health, old_rule.last_error
                rule.last_evaluation_ms = old_rule.last_evaluation_ms
                self.previous_series[index] = prev
        self.last_evaluation_ms = old.last_evaluation_ms
        self.enabled = old.enabled

    def evaluate(self, storage: Any, appender: Appender, ts_ms: int, lookback_ms: int = promql.DEFAULT_LOOKBACK_MS,
                 external_labels: Labels | None = None, cache: dict[Any, Any] | None = None) -> list[RuleEvent]:
        """Evaluate every rule in order; returns the events (firing instances, newly resolved ones).

        `cache` (a dict shared by the groups of one tick) lets rules reuse each other's selections; entries
        that read a series a rule has just written are dropped, so later rules see the new samples."""
        started = time.perf_counter()
        events: list[RuleEvent] = []
        for index, rule in enumerate(self.rules):
            rule_started = time.perf_counter()
            resolved: list[Alert] = []
            try:
                if rule.spec.kind == "alert":
                    samples, resolved = evaluate_alerting(rule, storage, ts_ms, lookback_ms, external_labels, cache,
                                                          self.spec.limit)
                else:
                    samples = evaluate_recording(rule, storage, ts_ms, lookback_ms, cache, self.spec.limit)
                rule.health, rule.last_error = "ok", ""
            except Exception as exc:  # PromQLError/RuleEvalError; anything else is a bug, kept to this rule
                if not isinstance(exc, promql.PromQLError | RuleEvalError):
                    log.exception("rule %s failed unexpectedly", rule.name)
                    exc = RuleEvalError(f"internal error: {type(exc).__name__}: {exc}")
                rule.health, rule.last_error = "err", str(exc)
                samples = []
                rule.last_evaluation_ms = ts_ms
                rule.evaluation_seconds = time.perf_counter() - rule_started
                continue
            rule.last_evaluation_ms = ts_ms
            rule.last_sample_count = len(samples)
            current: dict[LabelsKey, Labels] = {}
            for labels, value in samples:
                appender.append(labels, ts_ms, value)
                current[_key(labels)] = labels
            written = {labels.get("__name__", "") for labels in current.values()}
            for key, labels in self.previous_series[index].items():
                if key not in current:
                    appender.append_stale(labels, ts_ms)
                    written.add(labels.get("__name__", ""))
            self.previous_series[index] = current
            if cache and written:
                _invalidate(cache, written)
            if rule.spec.kind == "alert":
                events.extend(self._events(rule, resolved, ts_ms))
            rule.evaluation_seconds = time.perf_counter() - rule_started
        self.last_evaluation_ms = ts_ms
        self.evaluation_seconds = time.perf_counter() - started
        return events

    def _events(self, rule: RuleState, resolved: list[Alert], ts_ms: int) -> list[RuleEvent]:
        spec = rule.spec
        out = []

        def event(alert: Alert, state: str) -> RuleEvent:
            return RuleEvent(rule=spec.name, group=self.name, state=state,  # type: ignore[arg-type]
                             labels=dict(alert.labels), annotations=dict(alert.annotations), value=alert.value,
                             expr=spec.expr, active_since_seconds=alert.active_at_ms / 1000.0,
                             at_seconds=ts_ms / 1000.0, actions=list(spec.actions), source_file=spec.source_file)

        for alert in rule.active.values():
            if alert.state == "firing":
                out.append(event(alert, "firing"))
        for alert in resolved:
            out.append(event(alert, "resolved"))
        return out

    def rule_names(self) -> list[str]:
        return [rule.name for rule in self.rules]


def _invalidate(cache: dict[Any, Any], names: set[str]) -> None:
    """Drop cached selections that may read one of `names` (by name, or by a __name__ matcher)."""
    for key in list(cache):
        text = key[1]
        if "__name__" in text or any(name in text for name in names):
            del cache[key]


def longest_window_seconds(groups: list[Group]) -> float:
    """The longest range selector + offset + for + keep_firing_for over the rules (for store retention)."""
    longest = 0.0
    for group in groups:
        for rule in group.rules:
            longest = max(longest, rule.spec.longest_range_seconds() + rule.spec.for_seconds
                          + rule.spec.keep_firing_for_seconds)
    return longest


EventSink = Callable[[list[RuleEvent]], None]
