"""The guard: the one gate every Decision passes before an actuator runs, and verify-after-apply after it.

Why: a rule that fires every second must not retune the engine every second, two rules must not fight over
a knob, a change that made things worse must be undone without a human, and every one of those outcomes
must be visible afterwards. Checks, in order (the first that says no wins, the outcome is `skipped` with
that reason):

1. an actuator exists for the action;
2. bounds: the operator's `actions.knob_bounds` (a rule's own min/max were applied by the planner);
3. no-op: the target already has the value;
4. cooldown per target (scale-in uses the longer scale_in cooldown);
5. hysteresis: a change reversing the target's previous change waits `hysteresis_seconds`;
6. rate limit: at most `max_changes` changes in `window_seconds` over all targets;
7. dry-run (global, per rule/action, per Decision): recorded as `dry_run`, nothing changes;
then the actuator (`applied`, or `failed` with its reason), then, when the Decision carries a signal,
verify-after-apply: after the settle time the signal is re-read (`tick`); if it moved the wrong way past the
tolerance the old value is put back (`rolled_back`), else `verified`.

Repeated identical skips (a rule firing every evaluation inside its cooldown) are audited once per target
and reason until something else happens to that target, so the audit stream says what changed, not how
often the evaluator ran. Every outcome is counted for /metrics either way.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dsagent.actions.actuators.base import ActuatorError, ActuatorRegistry
from dsagent.actions.config import ActionsConfig
from dsagent.actions.decision import Decision, Outcome, OutcomeStatus
from dsagent.samples import Sample, make_labels

log = logging.getLogger(__name__)

# Actions that change the system (count toward the rate limit, have cooldowns and hysteresis); notify and
# webhook only tell someone, and are cooled down per target but never rate-limited or rolled back.
CHANGING_ACTIONS = frozenset({"set_knob", "set_gpu_clocks", "reset_gpu_clocks", "set_power_limit",
                              "reset_power_limit", "scale"})

AuditSink = Callable[[dict[str, Any]], None]


@dataclass
class _PendingVerify:
    outcome: Outcome
    due_seconds: float
    settle_seconds: float


@dataclass
class _TargetHistory:
    last_change_seconds: float | None = None
    last_direction: str | None = None
    last_dry_run_seconds: float | None = None
    last_failed_seconds: float | None = None  # a failing actuator is retried after the cooldown, not every tick
    last_skip_key: str | None = None


class Guard:
    """Thread-safe; `submit` runs one Decision through the checks and the actuator, `tick` runs due verifies."""

    def __init__(self, config: ActionsConfig, actuators: ActuatorRegistry, audit: AuditSink | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.actuators = actuators
        self.audit = audit
        self.clock = clock
        self._lock = threading.RLock()
        self._targets: dict[str, _TargetHistory] = {}
        self._recent_changes: deque[float] = deque()
        self._pending: list[_PendingVerify] = []
        self.outcome_counts: Counter[tuple[str, str]] = Counter()

    @property
    def lock(self) -> threading.RLock:
        """Held while a Decision is checked and applied; callers that read-then-submit hold it across both."""
        return self._lock

    # ---- the path ------------------------------------------------------------------------------------

    def submit(self, decision: Decision) -> Outcome:
        """Run `decision` through the checks and, when allowed, the actuator. Never raises for a refusal."""
        with self._lock:
            now = self.clock()
            history = self._targets.setdefault(decision.target, _TargetHistory())
            actuator = self.actuators.for_kind(decision.action)
            if actuator is None:  # not configured on this node: said once per target, not every evaluation
                return self._finish(decision, "skipped", self.actuators.missing_reason(decision.action), history,
                                    skip_key="no_actuator")
            if decision.old_value is None:
                try:
                    decision.old_value = actuator.current(decision)
                except ActuatorError as exc:
                    return self._finish(decision, "failed", f"cannot read the current value: {exc.reason}", history)
            refusal = self._refusal(decision, history, now)
            if refusal is not None:
                key, reason = refusal
                return self._finish(decision, "skipped", reason, history, skip_key=key)
            if decision.dry_run or self.config.dry_run:
                history.last_dry_run_seconds = now
                why = "global dry-run (actions.dry_run)" if self.config.dry_run else "dry-run"
                return self._finish(decision, "dry_run", f"{why}: would change {decision.short_target()} "
                                                         f"{_show(decision.old_value)} -> {_show(decision.new_value)}",
                                    history)
            try:
                detail = actuator.apply(decision)
            except ActuatorError as exc:
                history.last_failed_seconds = now
                return self._finish(decision, "failed", exc.reason, history, detail=exc.detail)
            except Exception as exc:  # an actuator bug must fail this Decision, not the agent
                log.exception("actuator for %s failed unexpectedly", decision.action)
                history.last_failed_seconds = now
                return self._finish(decision, "failed", f"{type(exc).__name__}: {exc}", history)
            self._note_change(decision, history, now)
            outcome = self._finish(decision, "applied", self._applied_text(decision), history, detail=detail)
            self._schedule_verify(outcome, now)
            return outcome

    def fail(self, decision: Decision, reason: str) -> Outcome:
        """Audit a Decision that could not even be planned (e.g. the current value was unreadable)."""
        with self._lock:
            history = self._targets.setdefault(decision.target, _TargetHistory())
            now = self.clock()
            cooldown = self._cooldown_for(decision)
            if history.last_failed_seconds is not None and now - history.last_failed_seconds < cooldown:
                return self._finish(decision, "skipped", f"cooldown after a failed attempt: {reason}", history,
                                    skip_key="cooldown_failed")
            history.last_failed_seconds = now
            return self._finish(decision, "failed", reason, history, skip_key=None)

    def tick(self, now: float | None = None) -> list[Outcome]:
        """Run every verify whose settle time has passed; returns their outcomes (verified / rolled_back)."""
        now = self.clock() if now is None else now
        # Never wait here: this runs on the agent's evaluate job, and a change in progress (a precision swap,
        # a vLLM restart) may hold the lock for minutes. Due verifies simply run at a later tick.
        if not self._lock.acquire(blocking=False):
            return []
        try:
            due = [pending for pending in self._pending if pending.due_seconds <= now]
            self._pending = [pending for pending in self._pending if pending.due_seconds > now]
            return [self._verify(pending) for pending in due]
        finally:
            self._lock.release()

    def wait_verified(self, outcome: Outcome, sleep: Callable[[float], None] = time.sleep) -> Outcome:
        """Block until `outcome`'s verify is due, run it and return its result (the tuner's staged roll-out).

        An outcome without a pending verify is returned unchanged.
        """
        with self._lock:
            pending = next((p for p in self._pending if p.outcome is outcome), None)
        if pending is None:
            return outcome
        delay = pending.due_seconds - self.clock()
        if delay > 0:
            sleep(delay)
        with self._lock:
            if pending not in self._pending:
                return outcome  # tick() ran it meanwhile
            self._pending.remove(pending)
        return self._verify(pending)

    def pending_verifies(self) -> int:
        with self._lock:
            return len(self._pending)

    # ---- checks --------------------------------------------------------------------------------------

    def _refusal(self, decision: Decision, history: _TargetHistory, now: float) -> tuple[str, str] | None:
        bounds_refusal = self._out_of_bounds(decision)
        if bounds_refusal:
            return "bounds", bounds_refusal
        changing = decision.action in CHANGING_ACTIONS
        if changing and decision.old_value is not None and _same(decision.old_value, decision.new_value):
            return "noop", f"{decision.short_target()} is already {_show(decision.new_value)}"
        cooldown = self._cooldown_for(decision)
        last = history.last_change_seconds
        if decision.dry_run or self.config.dry_run:
            last = max(filter(None, (last, history.last_dry_run_seconds)), default=None)
        failed = history.last_failed_seconds
        if failed is not None and now - failed < cooldown and (last is None or failed > last):
            return "cooldown_failed", (f"cooldown: the last attempt on {decision.short_target()} failed "
                                       f"{now - failed:.0f} s ago (retried after {cooldown:g} s)")
        if last is not None and now - last < cooldown:
            return "cooldown", (f"cooldown: {decision.short_target()} changed {now - last:.0f} s ago "
                                f"(cooldown {cooldown:g} s)")
        if not changing:
            return None
        direction = decision.direction
        if (direction is not None and history.last_direction is not None and direction != history.last_direction
                and history.last_change_seconds is not None
                and now - history.last_change_seconds < self.config.hysteresis_seconds):
            return "hysteresis", (f"hysteresis: would reverse the {history.last_direction} change made "
                                  f"{now - history.last_change_seconds:.0f} s ago "
                                  f"(waits {self.config.hysteresis_seconds:g} s)")
        while self._recent_changes and now - self._recent_changes[0] >= self.config.window_seconds:
            self._recent_changes.popleft()
        if len(self._recent_changes) >= self.config.max_changes:
            return "rate_limit", (f"rate limit: {len(self._recent_changes)} changes in the last "
                                  f"{self.config.window_seconds:g} s (max {self.config.max_changes})")
        return None

    def _out_of_bounds(self, decision: Decision) -> str | None:
        if decision.action != "set_knob":
            return None
        knob = str(decision.params.get("knob", decision.short_target()))
        bounds = self.config.knob_bounds.get(knob)
        value = decision.new_value
        if bounds is None or not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if bounds.min is not None and value < bounds.min:
            return f"bounds: {knob} {_show(value)} is below actions.knob_bounds.{knob}.min {bounds.min:g}"
        if bounds.max is not None and value > bounds.max:
            return f"bounds: {knob} {_show(value)} is above actions.knob_bounds.{knob}.max {bounds.max:g}"
        return None

    def _cooldown_for(self, decision: Decision) -> float:
        if decision.cooldown_seconds is not None:
            return decision.cooldown_seconds
        if decision.action == "scale":
            down = decision.direction == "down"
            return self.config.scale_in_cooldown_seconds if down else self.config.scale_out_cooldown_seconds
        return self.config.cooldown_seconds

    # ---- bookkeeping ---------------------------------------------------------------------------------

    def _note_change(self, decision: Decision, history: _TargetHistory, now: float) -> None:
        history.last_change_seconds = now
        if decision.action in CHANGING_ACTIONS:
            history.last_direction = decision.direction or history.last_direction
            self._recent_changes.append(now)

    def _schedule_verify(self, outcome: Outcome, now: float) -> None:
        decision = outcome.decision
        verify = decision.verify
        if decision.signal is None or decision.action not in CHANGING_ACTIONS or decision.rollback_of:
            return
        if verify is not None and not verify.enabled:
            return
        settle = verify.settle_seconds if verify is not None else self.config.verify_settle_seconds
        outcome.verify_due_seconds = now + settle
        self._pending.append(_PendingVerify(outcome, now + settle, settle))

    def _verify(self, pending: _PendingVerify) -> Outcome:
        decision = pending.outcome.decision
        verify = decision.verify
        direction = verify.direction if verify is not None else "lower"
        tolerance = verify.tolerance_ratio if verify is not None else self.config.verify_tolerance_ratio
        try:
            after = decision.signal() if decision.signal is not None else None
        except Exception as exc:  # a broken signal must not leave the change unjudged silently
            after = None
            log.warning("verify signal for %s failed: %s", decision.target, exc)
        before = decision.signal_before
        figures: dict[str, Any] = {"signal_before": before, "signal_after": after, "settle_seconds": pending.settle_seconds,
                                   "direction_better": direction, "applied_decision_id": decision.id}
        worse = _got_worse(before, after, direction, tolerance)
        with self._lock:
            history = self._targets.setdefault(decision.target, _TargetHistory())
            if not worse:
                shown_after = "no longer firing" if after is None else _show(after)
                return self._finish(decision, "verified", f"verify: signal {_show(before)} -> {shown_after} "
                                                          f"after {pending.settle_seconds:g} s", history, detail=figures)
            rollback = decision.with_values(old_value=decision.new_value, new_value=decision.old_value,
                                            rollback_of=decision.id, at_seconds=self.clock(), dry_run=False)
            actuator = self.actuators.for_kind(decision.action)
            text = (f"verify: signal got worse {_show(before)} -> {_show(after)} "
                    f"({'lower' if direction == 'lower' else 'higher'} is better); rolled back "
                    f"{decision.short_target()} {_show(decision.new_value)} -> {_show(decision.old_value)}")
            try:
                if actuator is None:
                    raise ActuatorError(f"no actuator for {decision.action!r}")
                detail = actuator.apply(rollback)
            except ActuatorError as exc:
                return self._finish(rollback, "failed", f"rollback failed: {exc.reason}", history,
                                    detail={**figures, **exc.detail})
            self._note_change(rollback, history, self.clock())
            return self._finish(rollback, "rolled_back", text, history, detail={**figures, **detail})

    def _finish(self, decision: Decision, status: OutcomeStatus, reason: str, history: _TargetHistory,
                detail: dict[str, Any] | None = None, skip_key: str | None = None) -> Outcome:
        outcome = Outcome(decision, status, reason, dict(detail or {}))
        self.outcome_counts[(decision.action, status)] += 1
        if status == "skipped":
            if skip_key is not None and history.last_skip_key == skip_key:
                return outcome  # the same refusal as last time: counted, not audited again
            history.last_skip_key = skip_key
        else:
            history.last_skip_key = None
        outcome.event = audit_event(outcome)
        log.log(logging.WARNING if status in ("failed", "rolled_back") else logging.INFO,
                "action %s %s: %s", decision.action, status, reason)
        if self.audit is not None:
            try:
                self.audit(outcome.event)
            except Exception:  # the audit sink is the export pipeline: log, never lose the decision path
                log.exception("recording the audit event failed")
        return outcome

    @staticmethod
    def _applied_text(decision: Decision) -> str:
        return (f"{decision.short_target()} {_show(decision.old_value)} -> {_show(decision.new_value)}: "
                f"{decision.reason.text()}")

    # ---- metrics -------------------------------------------------------------------------------------

    def count_external(self, event: dict[str, Any]) -> None:
        """Count an audit event whose Decision ran through another process's guard (`dsagent tune apply`)."""
        with self._lock:
            self.outcome_counts[(str(event.get("action") or "unknown"), str(event["outcome"]))] += 1

    def samples(self, now_seconds: float) -> list[Sample]:
        """dsagent_actions_total{action,outcome} and dsagent_actions_pending_verify for /metrics."""
        with self._lock:
            counts = dict(self.outcome_counts)
            pending = len(self._pending)
        samples = [Sample("dsagent_actions_total", make_labels({"action": action, "outcome": status}), float(count),
                          now_seconds, "counter") for (action, status), count in sorted(counts.items())]
        samples.append(Sample("dsagent_actions_pending_verify", make_labels(), float(pending), now_seconds))
        return samples


def _got_worse(before: float | None, after: float | None, direction: str, tolerance: float) -> bool:
    """Did the signal move the wrong way by more than `tolerance` (a ratio of |before|)?

    No value after (the rule's expression no longer matches) counts as better; no value before leaves
    nothing to compare, so the change stands.
    """
    if before is None or after is None or not math.isfinite(before) or not math.isfinite(after):
        return False
    margin = abs(before) * tolerance
    return after > before + margin if direction == "lower" else after < before - margin


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, int | float) and isinstance(new, int | float):
        return math.isclose(float(old), float(new), rel_tol=1e-9, abs_tol=1e-12)
    return bool(old == new)


def _show(value: Any) -> str:
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def audit_event(outcome: Outcome) -> dict[str, Any]:
    """The audit document for logs-dsagent.actions, `dsagent status` and the NDJSON output.

    `knob` holds the changed thing's short name (the status table's column); `decision_id` is
    deterministic so a replayed event never duplicates (the exporter derives the document id from it).
    """
    decision = outcome.decision
    reason = decision.reason
    event: dict[str, Any] = {
        "timestamp": _iso_now(),
        "decision_id": decision.id,
        "outcome": outcome.status,
        "action": decision.action,
        "target": decision.target,
        "knob": decision.short_target(),
        "old": _audit_scalar(decision.old_value),
        "new": _audit_scalar(decision.new_value),
        "rule": reason.rule or reason.source,
        "source": reason.source,
        "reason": outcome.reason,
        "dry_run": bool(decision.dry_run),
        "expr": reason.expr,
        "value": reason.value if reason.value is None or math.isfinite(reason.value) else None,
        "labels": dict(reason.labels) or None,
        "decided_at": decision.at_seconds,
        "rollback_of": decision.rollback_of,
    }
    if outcome.detail:
        event["detail"] = {key: _audit_value(value) for key, value in outcome.detail.items()}
    return event


def _iso_now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _audit_scalar(value: Any) -> Any:
    """old/new are keyword fields in logs-dsagent.actions: structured values (per-GPU limits) become compact
    JSON text so every document maps the same way."""
    if isinstance(value, dict | list | tuple):
        import json

        return json.dumps(_audit_value(value), sort_keys=True, separators=(",", ":"))
    return _audit_value(value)


def _audit_value(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _audit_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_audit_value(v) for v in value]
    return str(value)
