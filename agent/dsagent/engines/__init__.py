"""One adapter per engine kind (builtin dssidecar, vLLM, external): which knobs it can change and how.

Why: the rest of the agent must not branch on the engine kind. `adapter_for(config, ...)` picks the
adapter; the knob actuator, `dsagent act` and the tuner only call `knob_modes`, `read_knobs` and
`apply_knobs`.
"""

from dsagent.engines.base import EngineAdapter, EngineKnobRefused, adapter_for

__all__ = ["EngineAdapter", "EngineKnobRefused", "adapter_for"]
