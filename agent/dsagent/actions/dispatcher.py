"""Turns rule events (and operator / schedule requests) into Decisions and feeds them to the guard, in order.

Why a worker thread: the rules evaluate every interval and must not wait for a change to land (a precision
swap or a vLLM restart takes seconds to minutes). Events go into a queue; one worker plans and submits
them, so changes are serialized and an evaluation that fires the same rule again while its previous
event is still queued adds nothing (the queued one already carries the latest value).

Planning reads the target's current value from its actuator (the old side of the Decision); a plan that
cannot be made (a step on an unreadable knob) is audited as a `failed` Decision with the reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from dsagent.actions.actuators.base import ActuatorError
from dsagent.actions.decision import Decision, Outcome, Reason
from dsagent.actions.guard import Guard
from dsagent.actions.planner import PlanError, new_value_for, reason_from_event, target_of
from dsagent.actions.spec import ActionSpec

log = logging.getLogger(__name__)

SignalFactory = Callable[[Any, ActionSpec], Callable[[], float | None] | None]


class Dispatcher:
    """Plans ActionSpecs into Decisions and submits them to `guard`; `on_rule_events` is the rules' sink."""

    def __init__(self, guard: Guard, *, scale_target: str = "scale", replicas_bounds: tuple[int, int] | None = None,
                 signal_for: SignalFactory | None = None, clock: Callable[[], float] = time.time) -> None:
        self.guard = guard
        self.scale_target = scale_target
        self.replicas_bounds = replicas_bounds
        self.signal_for = signal_for
        self.clock = clock
        self._queue: queue.Queue[tuple[Any, float] | None] = queue.Queue()
        self._queued_rules: set[tuple[Any, ...]] = set()
        self._queued_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.rules_dry_run = False  # rules.dry_run (`dsagent run --dry-run`): every rule Decision is a dry run
        self.outcomes_total = 0
        self.on_outcome: Callable[[Outcome], None] | None = None  # for tests and the reaction benchmark

    # ---- rule events ---------------------------------------------------------------------------------

    def on_rule_events(self, events: Iterable[Any]) -> None:
        """The rules' event sink: queue each event that has actions (firing every evaluation, resolved once)."""
        for event in events:
            if not getattr(event, "actions", None):
                continue
            key = _event_key(event)
            with self._queued_lock:
                if key in self._queued_rules:
                    continue
                self._queued_rules.add(key)
            self._queue.put((event, self.clock()))
        self._ensure_worker()

    def handle_event(self, event: Any) -> list[Outcome]:
        """Plan and submit every action of one rule event whose `on` matches its state (synchronous)."""
        state = str(getattr(event, "state", "firing"))
        outcomes = []
        labels = dict(getattr(event, "labels", None) or {})
        for spec in getattr(event, "actions", None) or []:
            if spec.on != state:
                continue
            spec = _with_rule_direction(_for_alert_gpu(spec, labels), str(getattr(event, "expr", "") or ""))
            reason = reason_from_event(event)
            signal = self.signal_for(event, spec) if self.signal_for is not None else None
            context = {"annotations": dict(getattr(event, "annotations", None) or {}),
                       "active_since_seconds": getattr(event, "active_since_seconds", None),
                       "source_file": getattr(event, "source_file", None)}
            rule_dry_run = self.rules_dry_run or labels.get("dry_run", "").lower() == "true"  # per rule: a label
            outcomes.append(self.submit_spec(spec, reason, state=state, signal=signal, extra_params=context,
                                             dry_run=True if rule_dry_run else None))
        return outcomes

    # ---- any source ----------------------------------------------------------------------------------

    def submit_spec(self, spec: ActionSpec, reason: Reason, *, state: str = "firing",
                    signal: Callable[[], float | None] | None = None, dry_run: bool | None = None,
                    cooldown_seconds: float | None = None, extra_params: dict[str, Any] | None = None) -> Outcome:
        """Plan `spec` against the target's current value and run it through the guard."""
        target, params = target_of(spec, rule=reason.rule, scale_target=self.scale_target)
        params.update(extra_params or {})
        params.setdefault("state", state)
        decision = Decision(action=spec.kind, target=target, new_value=None, reason=reason, params=params,
                            dry_run=spec.dry_run if dry_run is None else (dry_run or spec.dry_run),
                            cooldown_seconds=spec.cooldown_seconds if cooldown_seconds is None else cooldown_seconds,
                            verify=spec.verify, signal=signal, signal_before=reason.value, at_seconds=self.clock())
        with self.guard.lock:  # plan and submit as one step: a verify's rollback cannot slip in between
            return self._plan_and_submit(spec, decision, state)

    def _plan_and_submit(self, spec: ActionSpec, decision: Decision, state: str) -> Outcome:
        actuator = self.guard.actuators.for_kind(spec.kind)
        try:
            if actuator is not None:  # without one the guard fails the Decision naming what exists
                current = actuator.current(decision)
                decision.old_value = current
                decision.new_value = new_value_for(spec, current, state=state, replicas_bounds=self.replicas_bounds)
                resolve = getattr(actuator, "resolve", None)
                if resolve is not None:  # e.g. "80% of the default" -> watts per GPU, so old and new compare
                    decision.new_value = resolve(decision)
        except (PlanError, ActuatorError) as exc:
            text = exc.reason if isinstance(exc, ActuatorError) else str(exc)
            outcome = self.guard.fail(decision, f"cannot plan {spec.kind}: {text}")
        else:
            outcome = self.guard.submit(decision)
        self.outcomes_total += 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome

    # ---- worker --------------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="actions-dispatcher", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, _queued_at = item
            with self._queued_lock:
                self._queued_rules.discard(_event_key(event))
            try:
                self.handle_event(event)
            except Exception:  # one bad event must not stop the worker
                log.exception("handling the actions of rule %s failed", getattr(event, "rule", "?"))
            finally:
                self._queue.task_done()

    def wait_idle(self, timeout_seconds: float = 30.0) -> bool:
        """Block until every queued event was handled (tests, shutdown)."""
        deadline = time.monotonic() + timeout_seconds
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5.0)
        self._thread = None


def _event_key(event: Any) -> tuple[Any, ...]:
    """One queued event per alert instance (rule, state and labels): two GPUs' alerts are two events."""
    labels = getattr(event, "labels", None) or {}
    return (str(getattr(event, "rule", "")), str(getattr(event, "state", "")), tuple(sorted(labels.items())))


def _for_alert_gpu(spec: ActionSpec, labels: dict[str, str]) -> ActionSpec:
    """A GPU action without `gpu:` on a per-GPU alert (label gpu_index) acts on that GPU, not on all."""
    gpu_label = labels.get("gpu_index")
    action = spec.action
    if gpu_label is None or not gpu_label.isdigit() or getattr(action, "gpu", "absent") is not None:
        return spec
    return spec.model_copy(update={"action": action.model_copy(update={"gpu": int(gpu_label)})})


def _with_rule_direction(spec: ActionSpec, expr: str) -> ActionSpec:
    """Verify's "better" follows the alert's comparison unless the rule says: `x < N` (Idle) wants x higher.

    Without this a scale-in on an idle rule would be rolled back as soon as utilization rose, which is the
    point of scaling in.
    """
    from dsagent.actions.signal import better_direction
    from dsagent.actions.spec import VerifySpec

    verify = spec.verify
    if verify is not None and ("direction" in verify.model_fields_set or verify.expr):
        return spec  # the rule chose, or watches another expression
    direction = better_direction(expr)
    if direction is None:
        return spec
    updated = (verify or VerifySpec()).model_copy(update={"direction": direction})
    return spec.model_copy(update={"verify": updated})
