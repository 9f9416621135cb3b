"""set_gpu_clocks / reset_gpu_clocks / set_power_limit / reset_power_limit through the GPU backend's control.

Why: the guides' off-peak power saving and thermal rules lower the power limit or lock clocks. The backend
(NVML, or the simulated GPU in tests) does the call; this checks the request against NVML's own limits
(`power_limit_constraints_watts`: a limit outside [min, max] is refused before the driver is asked),
resolves "fraction of default" and "reset" (= the default limit) per GPU, and turns the driver's refusal
("Insufficient Permissions", "Not Supported") into a failed Decision with that reason.

Values are per GPU: old and new are {gpu index: watts} (or {"graphics_mhz", "memory_mhz"} for clocks), so
a rollback puts every GPU back where it was.
"""

from __future__ import annotations

from typing import Any

from dsagent.actions.actuators.base import ActuatorError
from dsagent.actions.decision import Decision
from dsagent.sources.gpu_control import GpuControl, GpuControlError


def supports_gpu_control(backend: Any) -> bool:
    return isinstance(backend, GpuControl)


class GpuActuator:
    kinds: tuple[str, ...] = ("set_gpu_clocks", "reset_gpu_clocks", "set_power_limit", "reset_power_limit")

    def __init__(self, backend: GpuControl) -> None:
        self.backend = backend
        self._clocks: dict[int, Any] = {}  # what we set (NVML cannot read a locked clock back)

    def _indices(self, decision: Decision) -> list[int]:
        gpu = decision.params.get("gpu")
        try:
            count = self.backend.control_device_count()
        except GpuControlError as exc:
            raise ActuatorError(exc.reason) from exc
        if gpu is None:
            return list(range(count))
        if not 0 <= int(gpu) < count:
            raise ActuatorError(f"no GPU with index {gpu} (this node has {count})")
        return [int(gpu)]

    def current(self, decision: Decision) -> Any:
        indices = self._indices(decision)
        try:
            if decision.action in ("set_power_limit", "reset_power_limit"):
                return {str(i): self.backend.power_limit_watts(i) for i in indices}
        except GpuControlError as exc:
            raise ActuatorError(exc.reason) from exc
        return {str(i): self._clocks.get(i, "default") for i in indices}

    def resolve(self, decision: Decision) -> Any:
        """Power requests as watts per GPU ({"0": 560.0}); clock requests per GPU. Checked against NVML's limits."""
        indices = self._indices(decision)
        try:
            if decision.action in ("set_power_limit", "reset_power_limit"):
                return {str(i): w for i, w in self._power_targets(indices, decision.new_value).items()}
        except GpuControlError as exc:
            raise ActuatorError(exc.reason) from exc
        return {str(i): decision.new_value for i in indices}

    def apply(self, decision: Decision) -> dict[str, Any]:
        indices = self._indices(decision)
        try:
            if decision.action in ("set_power_limit", "reset_power_limit"):
                return self._apply_power(indices, decision.new_value)
            return self._apply_clocks(indices, decision.new_value)
        except GpuControlError as exc:
            raise ActuatorError(exc.reason) from exc

    def _apply_power(self, indices: list[int], wanted: Any) -> dict[str, Any]:
        targets = self._power_targets(indices, wanted)
        for index, watts in targets.items():
            self.backend.set_power_limit_watts(index, watts)
        return {"power_limit_watts": {str(i): w for i, w in targets.items()}}

    def _power_targets(self, indices: list[int], wanted: Any) -> dict[int, float]:
        targets: dict[int, float] = {}
        for index in indices:
            low, high, default = self.backend.power_limit_constraints_watts(index)
            if wanted == "default":
                watts = default
            elif isinstance(wanted, dict) and "fraction_of_default" in wanted:
                watts = default * float(wanted["fraction_of_default"])
            elif isinstance(wanted, dict) and "watts" in wanted:
                watts = float(wanted["watts"])
            elif isinstance(wanted, dict) and str(index) in wanted:  # a rollback: the per-GPU values
                watts = float(wanted[str(index)])
            else:
                raise ActuatorError(f"power limit {wanted!r} is not watts, fraction_of_default or default")
            if not low <= watts <= high:
                raise ActuatorError(f"GPU {index}: power limit {watts:g} W is outside what NVML allows "
                                    f"({low:g}-{high:g} W, default {default:g} W)")
            targets[index] = watts
        return targets

    def _apply_clocks(self, indices: list[int], wanted: Any) -> dict[str, Any]:
        applied: dict[str, Any] = {}
        for index in indices:
            value = wanted.get(str(index), wanted) if isinstance(wanted, dict) else wanted
            if value == "default" or value is None:
                self.backend.reset_clocks(index)
                self._clocks.pop(index, None)
                applied[str(index)] = "default"
                continue
            graphics, memory = value.get("graphics_mhz"), value.get("memory_mhz")
            self.backend.set_locked_clocks_mhz(index, graphics, memory)
            self._clocks[index] = {k: v for k, v in (("graphics_mhz", graphics), ("memory_mhz", memory)) if v}
            applied[str(index)] = self._clocks[index]
        return {"clocks": applied}
