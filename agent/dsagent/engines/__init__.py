"""One adapter per engine kind (builtin dssidecar, vLLM, external): which knobs it can change and how.

Why: the rest of the agent must not branch on the engine kind. `adapter_for(config, ...)` picks the
adapter; the knob actuator, `dsagent act` and the tuner only call `knob_modes`, `read_knobs` and
`apply_knobs`; the supervisor runs the engine through `launcher_for(config)` (command, environment, whether
it owns the process); the engine scrape maps vLLM's metric names with `vllm.VLLM_FAMILY_MAP`.
"""

from dsagent.engines.base import EngineAdapter, EngineKnobRefused, EngineLauncher, adapter_for, launcher_for

__all__ = ["EngineAdapter", "EngineKnobRefused", "EngineLauncher", "adapter_for", "launcher_for"]
