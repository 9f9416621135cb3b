"""set_knob: change an engine knob through the engine's adapter (builtin /control, vLLM restart, external: no).

Why a thin layer: the adapter knows the engine; this turns its refusals into ActuatorError so a refused
knob is a `failed` Decision with the engine's reason, and reads the current value for the old side.
"""

from __future__ import annotations

from typing import Any

from dsagent.actions.actuators.base import ActuatorError
from dsagent.actions.decision import Decision
from dsagent.engines.base import EngineAdapter, EngineKnobRefused


class EngineKnobActuator:
    kinds: tuple[str, ...] = ("set_knob",)

    def __init__(self, adapter: EngineAdapter) -> None:
        self.adapter = adapter

    def _knob(self, decision: Decision) -> str:
        return str(decision.params.get("knob") or decision.short_target())

    def current(self, decision: Decision) -> Any:
        knob = self._knob(decision)
        try:
            return self.adapter.read_knobs().get(knob)
        except EngineKnobRefused as exc:
            raise ActuatorError(exc.reason, detail=exc.detail) from exc

    def apply(self, decision: Decision) -> dict[str, Any]:
        knob = self._knob(decision)
        modes = self.adapter.knob_modes()
        if knob not in modes:
            if not modes:
                try:
                    self.adapter.apply_knobs({knob: decision.new_value})  # the adapter says why not
                except EngineKnobRefused as exc:
                    raise ActuatorError(exc.reason, detail=exc.detail) from exc
            raise ActuatorError(f"engine kind {self.adapter.kind} cannot change {knob!r}; it changes "
                                f"{', '.join(sorted(modes)) or 'nothing'}")
        try:
            detail = self.adapter.apply_knobs({knob: decision.new_value})
        except EngineKnobRefused as exc:
            raise ActuatorError(exc.reason, detail=exc.detail) from exc
        return {"engine_kind": self.adapter.kind, "apply_mode": modes[knob], **detail}
