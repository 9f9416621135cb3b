"""The one interface every actuator implements, and the registry the guard dispatches through.

Why: the guard must not know how a knob, a GPU clock, a Deployment or a webhook is changed; it only asks
"what is it now?" and "make it so". An actuator that cannot do it raises ActuatorError with the reason
from the thing it talks to (NVML's message, the API server's status, the engine's refusal), which becomes a
`failed` Decision; nothing else breaks. Each actuator has a fake of the same shape for tests.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from dsagent.actions.decision import Decision


class ActuatorError(Exception):
    """The change could not be made; `reason` says why in the words of the system that refused."""

    def __init__(self, reason: str, *, retryable: bool = False, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.detail = dict(detail or {})


@runtime_checkable
class Actuator(Protocol):
    """Changes one kind of thing. `kinds` lists the Decision actions it handles."""

    kinds: tuple[str, ...]

    def current(self, decision: Decision) -> Any:
        """The value the target has now (None when it cannot be read); used as the Decision's old value."""

    def apply(self, decision: Decision) -> dict[str, Any]:
        """Make target == decision.new_value; returns details for the audit, raises ActuatorError."""


class ActuatorRegistry:
    """action kind -> actuator; `dsagent act`, rules, schedules and the tuner all use the same one."""

    def __init__(self, actuators: list[Actuator] | None = None) -> None:
        self._by_kind: dict[str, Actuator] = {}
        self.missing_hints: dict[str, str] = {}  # action kind -> how to enable it (set by the runtime)
        for actuator in actuators or []:
            self.register(actuator)

    def register(self, actuator: Actuator) -> None:
        for kind in actuator.kinds:
            self._by_kind[kind] = actuator

    def for_kind(self, kind: str) -> Actuator | None:
        return self._by_kind.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._by_kind)

    def missing_reason(self, kind: str) -> str:
        """Why `kind` cannot act here, with the fix when the runtime knows it."""
        hint = self.missing_hints.get(kind)
        known = ", ".join(self.kinds()) or "none"
        return f"no actuator for {kind!r} on this node" + (f": {hint}" if hint else "") + f" (available: {known})"


class RecordingActuator:
    """A fake for tests and dry runs of the guard: remembers every apply, holds values per target.

    `fail_with` makes the next applies raise ActuatorError with that reason.
    """

    def __init__(self, kinds: tuple[str, ...], values: dict[str, Any] | None = None) -> None:
        self.kinds = kinds
        self.values: dict[str, Any] = dict(values or {})
        self.applied: list[tuple[str, Any]] = []
        self.fail_with: str | None = None

    def current(self, decision: Decision) -> Any:
        return self.values.get(decision.target)

    def apply(self, decision: Decision) -> dict[str, Any]:
        if self.fail_with:
            raise ActuatorError(self.fail_with)
        self.applied.append((decision.target, decision.new_value))
        self.values[decision.target] = decision.new_value
        return {"recorded": True}
