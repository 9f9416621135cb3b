"""A scripted stand-in for the pynvml module, shared by the NVML unit tests.

It lives in its own uniquely named module (not conftest.py) because several test folders have a
conftest.py and `from conftest import ...` would pick whichever was imported last.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class ScriptedNvml:
    """Just enough of the pynvml module for NvmlBackend: constants and errors from the real module,
    device functions answering from `values` (a value that is an Exception is raised)."""

    def __init__(self, values: dict[str, Any], device_count: int = 1, init_error: Exception | None = None) -> None:
        import pynvml

        self._real = pynvml
        self.values = values
        self.device_count = device_count
        self.init_error = init_error
        self.calls: list[str] = []
        self.events: list[Any] = []
        self.shutdowns = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("NVML") or name.startswith("nvmlEventType"):
            return getattr(self._real, name)
        if name in self.values:
            def call(*args: Any) -> Any:
                self.calls.append(name)
                value = self.values[name]
                if isinstance(value, Exception):
                    raise value
                return value(*args) if callable(value) else value

            return call
        raise AttributeError(name)

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.device_count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:  # noqa: N802
        return SimpleNamespace(index=index)

    def nvmlEventSetCreate(self) -> Any:  # noqa: N802
        return "event-set"

    def nvmlDeviceRegisterEvents(self, handle: Any, types: int, event_set: Any) -> None:  # noqa: N802
        if "nvmlDeviceRegisterEvents" in self.values:
            raise self.values["nvmlDeviceRegisterEvents"]

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:  # noqa: N802
        if self.events:
            return self.events.pop(0)
        raise self._real.NVMLError(self._real.NVML_ERROR_TIMEOUT)

    def nvmlDeviceGetIndex(self, handle: Any) -> int:  # noqa: N802
        return int(handle.index)

    def nvmlEventSetFree(self, event_set: Any) -> None:  # noqa: N802
        return None


def full_h100_values() -> dict[str, Any]:
    """Answers of a healthy H100 (numbers from the recorded trace), in NVML's units."""
    return {
        "nvmlDeviceGetUUID": lambda h: f"GPU-test-{h.index}",
        "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetUtilizationRates": SimpleNamespace(gpu=99, memory=33),
        "nvmlDeviceGetMemoryInfo": SimpleNamespace(used=23_038_066_688, total=85_520_809_984, free=0),
        "nvmlDeviceGetTemperature": 58,
        "nvmlDeviceGetPowerUsage": 698_460,  # milliwatts
        "nvmlDeviceGetEnforcedPowerLimit": 700_000,
        "nvmlDeviceGetTotalEnergyConsumption": 9_038_074,  # millijoules
        "nvmlDeviceGetClockInfo": lambda h, clock: {1: 1380, 2: 2619}[clock],  # MHz
        "nvmlDeviceGetMaxClockInfo": 1980,
        "nvmlDeviceGetApplicationsClock": lambda h, clock: {0: 1980, 2: 2619}[clock],
        "nvmlDeviceGetPerformanceState": 0,
        "nvmlDeviceGetFanSpeed": 40,
        "nvmlDeviceGetCurrentClocksEventReasons": 0x4,
        "nvmlDeviceGetTotalEccErrors": lambda h, error_type, counter: 10 * error_type + counter,
        "nvmlDeviceGetComputeRunningProcesses": [
            SimpleNamespace(pid=406, usedGpuMemory=22_525_509_632),
            SimpleNamespace(pid=407, usedGpuMemory=None),
        ],
        "nvmlDeviceGetGraphicsRunningProcesses": [],
    }
