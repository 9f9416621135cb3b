"""From "this rule fired with these actions" to concrete Decisions: targets, old and new values, bounds.

Why separate from the guard: the planner is pure (spec + current value -> Decision), so `rules test` can
show what a rule *would* decide (`exp_actions`, through `decisions_for_test`) with the very code the agent
runs, and the guard stays about whether to do it. Relative changes (`step`, `factor`, `"+1"`, `"x1.5"`)
start from the current value and are clamped to the action's min/max (and the knob's type).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dsagent.actions.decision import Decision, Reason
from dsagent.actions.spec import (
    ActionSpec,
    Notify,
    ResetGpuClocks,
    ResetPowerLimit,
    Scale,
    SetGpuClocks,
    SetKnob,
    SetPowerLimit,
    Webhook,
)


class PlanError(ValueError):
    """The action cannot be turned into a change (e.g. a relative step on a knob whose value is unknown)."""


def target_of(spec: ActionSpec, *, rule: str | None = None, scale_target: str = "scale") -> tuple[str, dict[str, Any]]:
    """(target, params) for an action: what cooldowns key on and what the actuator needs."""
    action = spec.action
    if isinstance(action, SetKnob):
        return f"knob:{action.knob}", {"knob": action.knob}
    if isinstance(action, SetGpuClocks | ResetGpuClocks):
        gpu = "all" if action.gpu is None else str(action.gpu)
        return f"gpu:{gpu}:clocks", {"gpu": action.gpu}
    if isinstance(action, SetPowerLimit | ResetPowerLimit):
        gpu = "all" if action.gpu is None else str(action.gpu)
        return f"gpu:{gpu}:power_limit", {"gpu": action.gpu}
    if isinstance(action, Scale):
        return f"scale:{scale_target}", {"min": action.min, "max": action.max}
    if isinstance(action, Webhook):
        return f"webhook:{rule or '-'}:{action.url}", {"url": action.url, "body": action.body, "headers": action.headers}
    if isinstance(action, Notify):
        return f"notify:{rule or '-'}:{spec.on}", {"url": action.url}
    raise PlanError(f"no planner for action {spec.kind!r}")  # pragma: no cover - every body kind is above


def new_value_for(spec: ActionSpec, current: Any, *, state: str = "firing",
                  replicas_bounds: tuple[int, int] | None = None) -> Any:
    """The value the action asks for, given the target's `current` value."""
    action = spec.action
    if isinstance(action, SetKnob):
        return knob_value(action, current)
    if isinstance(action, SetGpuClocks):
        return {k: v for k, v in (("graphics_mhz", action.graphics_mhz), ("memory_mhz", action.memory_mhz)) if v}
    if isinstance(action, ResetGpuClocks):
        return "default"
    if isinstance(action, SetPowerLimit):
        return {"watts": action.watts} if action.watts is not None else {"fraction_of_default": action.fraction_of_default}
    if isinstance(action, ResetPowerLimit):
        return "default"
    if isinstance(action, Scale):
        if not isinstance(current, int) and action.replicas[0] in "+-x":
            raise PlanError(f"scale {action.replicas}: the current replica count is unknown")
        wanted = action.target_replicas(int(current) if isinstance(current, int) else 0)
        if replicas_bounds is not None:  # the operator's actions.scale min/max bound every rule's
            wanted = max(replicas_bounds[0], min(replicas_bounds[1], wanted))
        return wanted
    if isinstance(action, Webhook | Notify):
        return state
    raise PlanError(f"no planner for action {spec.kind!r}")  # pragma: no cover


def knob_value(action: SetKnob, current: Any) -> Any:
    """value | current+step | current*factor, clamped to [min, max]; whole numbers for int knobs.

    A factor below 1 on an int knob rounds down (and a factor above 1 rounds up) so a small knob still
    moves: 3 * 0.5 -> 1, not 2.
    """
    info = action.info
    if info.type == "choice":
        return str(action.value)
    if action.value is not None:
        wanted = float(action.value)  # type: ignore[arg-type]  # validated numeric
    else:
        if not isinstance(current, int | float) or isinstance(current, bool):
            raise PlanError(f"knob {action.knob}: current value unknown ({current!r}); "
                            f"a step/factor needs it (give value: instead)")
        wanted = float(current) + action.step if action.step is not None else float(current) * float(action.factor or 1)
    if action.min is not None:
        wanted = max(action.min, wanted)
    if action.max is not None:
        wanted = min(action.max, wanted)
    if info.type == "int":
        up = isinstance(current, int | float) and wanted > current
        rounded = math.ceil(wanted - 1e-9) if up else math.floor(wanted + 1e-9)
        if action.min is not None:
            rounded = max(math.ceil(action.min - 1e-9), rounded)
        if action.max is not None:
            rounded = min(math.floor(action.max + 1e-9), rounded)
        return int(rounded)
    return wanted


def reason_from_event(event: Any, *, detail: str = "") -> Reason:
    """A Reason from a rules RuleEvent (duck-typed: rule, group, expr, value, labels)."""
    value = getattr(event, "value", None)
    return Reason(
        source="rule",
        rule=getattr(event, "rule", None),
        group=getattr(event, "group", None),
        expr=getattr(event, "expr", None),
        value=float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None,
        labels={str(k): str(v) for k, v in (getattr(event, "labels", None) or {}).items()},
        detail=detail,
    )


def plan(spec: ActionSpec, reason: Reason, current: Any, *, at_seconds: float, state: str = "firing",
         scale_target: str = "scale", replicas_bounds: tuple[int, int] | None = None,
         signal: Callable[[], float | None] | None = None, extra_params: Mapping[str, Any] | None = None) -> Decision:
    """One Decision for one action item. Raises PlanError when it cannot be computed."""
    target, params = target_of(spec, rule=reason.rule, scale_target=scale_target)
    if extra_params:
        params = {**params, **extra_params}
    return Decision(
        action=spec.kind, target=target, reason=reason, old_value=current,
        new_value=new_value_for(spec, current, state=state, replicas_bounds=replicas_bounds),
        params=params, dry_run=spec.dry_run, cooldown_seconds=spec.cooldown_seconds, verify=spec.verify,
        signal=signal, signal_before=reason.value, at_seconds=at_seconds,
    )


def decisions_for_test(events: Iterable[Any], knob_state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the rule events would decide, for `rules test`'s `exp_actions` (pure: no guard, no actuator).

    `knob_state` holds the current values the relative changes start from: knob names
    (`max_batch_size: 32`), `replicas` for scale, `power_limit` / `clocks` for the GPU actions. Returns one
    dict per action whose `on` matches the event's state: {rule, action, target, old, new} (plus `error`
    when it cannot be planned, e.g. a step on an unknown knob value). Events carry `actions` as
    ActionSpecs (or raw lists, parsed here).
    """
    from dsagent.actions.spec import parse_actions

    planned: list[dict[str, Any]] = []
    for event in events:
        actions = getattr(event, "actions", None) or []
        if actions and not isinstance(actions[0], ActionSpec):
            actions = parse_actions(list(actions), f"rule {getattr(event, 'rule', '?')}")
        state = getattr(event, "state", "firing")
        for spec in actions:
            if spec.on != state:
                continue
            target, _ = target_of(spec, rule=getattr(event, "rule", None))
            current = _state_for(spec, knob_state)
            entry: dict[str, Any] = {"rule": getattr(event, "rule", None), "action": spec.kind,
                                     "target": target, "old": current}
            try:
                entry["new"] = new_value_for(spec, current, state=state)
            except PlanError as exc:
                entry["error"] = str(exc)
            if spec.dry_run:
                entry["dry_run"] = True
            planned.append(entry)
    return planned


def _state_for(spec: ActionSpec, knob_state: Mapping[str, Any]) -> Any:
    action = spec.action
    if isinstance(action, SetKnob):
        return knob_state.get(action.knob)
    if isinstance(action, Scale):
        return knob_state.get("replicas")
    if isinstance(action, SetPowerLimit | ResetPowerLimit):
        return knob_state.get("power_limit")
    if isinstance(action, SetGpuClocks | ResetGpuClocks):
        return knob_state.get("clocks")
    return None
