"""What a GPU backend offers for changing the GPU (power limit, locked/application clocks), without pynvml.

Why here: the NVML backend (the only module importing pynvml) and the simulated GPU both implement it, so
the GPU actuator and its tests run the same code on a laptop and on an H100. Every failure is a
GpuControlError carrying NVML's own words ("Insufficient Permissions", "Not Supported") so a refused
change becomes a failed Decision with that reason.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class GpuControlError(Exception):
    """The GPU refused the change; `reason` is the driver's message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class GpuControl(Protocol):
    def control_device_count(self) -> int: ...

    def power_limit_watts(self, index: int) -> float: ...

    def power_limit_constraints_watts(self, index: int) -> tuple[float, float, float]:
        """(min, max, default) power management limit in watts."""

    def set_power_limit_watts(self, index: int, watts: float) -> None: ...

    def set_locked_clocks_mhz(self, index: int, graphics_mhz: int | None, memory_mhz: int | None) -> None:
        """Lock the graphics clock (min = max = graphics_mhz) and set the application memory clock."""

    def reset_clocks(self, index: int) -> None:
        """Undo locked graphics clocks and application clocks (the driver's defaults)."""
