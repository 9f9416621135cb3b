"""What a GPU backend hands the GPU source: one `GpuReading` per GPU per tick, fields None when unreadable.

The NVML backend (the only module importing pynvml), the trace replay and the simulated GPUs all produce
these readings, so `gpu.GpuSource` turns them into Samples in one place and the fakes are exercised by
the same code as the real thing. A reading is plain data with a JSON form: a recorded trace is a JSONL
file of readings (see `gpu_trace`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

# NVML's clock event (throttle) reason bits, from nvml.h (nvmlClocksEventReason*). Kept here as data so
# the fakes and the decoder need no pynvml.
THROTTLE_REASON_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}

# ECC counter keys: "<error type>_<counter type>"; volatile = since the driver loaded, aggregate = lifetime.
ECC_COUNTER_KEYS: tuple[str, ...] = (
    "corrected_volatile",
    "uncorrected_volatile",
    "corrected_aggregate",
    "uncorrected_aggregate",
)


def decode_throttle_reasons(bitmask: int) -> list[str]:
    """Names of the reasons set in an NVML clock-event bitmask (unknown bits are ignored)."""
    return [name for name, bit in THROTTLE_REASON_BITS.items() if bitmask & bit]


class GpuUnavailable(Exception):
    """No GPU can be read at all (no NVML library, no driver, no device). Carries the human reason."""


@dataclass
class GpuReading:
    """One GPU at one instant. None means "could not be read" and becomes an omitted sample."""

    index: int
    uuid: str
    name: str
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    power_draw_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules_total: float | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    sm_clock_max_hertz: float | None = None
    applications_sm_clock_hertz: float | None = None
    applications_memory_clock_hertz: float | None = None
    performance_state: int | None = None
    fan_speed_ratio: float | None = None
    throttle_reasons_bitmask: int | None = None
    xid_errors_total: int | None = None
    last_xid: int | None = None  # kept in traces; exported only as an event, never as a gauge
    xid_errors_by_code: dict[int, int] = field(default_factory=dict)  # cumulative, where NVML events say
    ecc_errors: dict[str, int] = field(default_factory=dict)
    process_memory_bytes: dict[int, int] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict: None fields dropped, process pids as strings (JSON object keys)."""
        raw = asdict(self)
        raw["process_memory_bytes"] = {str(pid): used for pid, used in self.process_memory_bytes.items()}
        return {key: value for key, value in raw.items() if value is not None and value != {}}

    @classmethod
    def from_json_dict(cls, raw: Mapping[str, Any]) -> GpuReading:
        """Inverse of to_json_dict; unknown keys are an error naming the key (a trace typo shows)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"GPU reading has unknown field(s) {unknown}; known fields are {sorted(known)}")
        for required in ("index", "uuid", "name"):
            if required not in raw:
                raise ValueError(f"GPU reading lacks {required!r}: every reading needs index, uuid and name")
        values = dict(raw)
        values["process_memory_bytes"] = {
            int(pid): int(used) for pid, used in dict(raw.get("process_memory_bytes", {})).items()
        }
        values["ecc_errors"] = {str(k): int(v) for k, v in dict(raw.get("ecc_errors", {})).items()}
        return cls(**values)


class GpuBackend(Protocol):
    """A source of GPU readings: NVML, a recorded-trace replay, or simulated GPUs.

    open() raises GpuUnavailable with a human reason when there is nothing to read (said once by the
    caller); read_all() returns one reading per GPU and never raises for a single unreadable field.
    """

    name: str

    def open(self) -> None: ...

    def read_all(self) -> list[GpuReading]: ...

    def close(self) -> None: ...
