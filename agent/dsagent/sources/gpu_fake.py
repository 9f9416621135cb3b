"""GPU backends without a GPU: replay of a recorded NVML trace, and simulated GPUs that follow a load.

Both implement `gpu_backend.GpuBackend`, so tests, benchmarks (8 simulated GPUs in
bench/agent_overhead.py) and machines without a GPU exercise the same GpuSource code as real NVML.

- ReplayGpuBackend: each read_all() returns the trace's next frame (one reading per GPU), looping at the
  end by default; a recorded trace keeps its real gaps (fields the GPU could not give stay absent).
- SimulatedGpuBackend: N GPUs whose utilization, memory, power, temperature and clocks follow a load
  function (by default the engine's running requests, see factory.py; else a slow deterministic wave).
  Power above the limit throttles the SM clock with the sw_power_cap reason, like the real H100 trace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dsagent.sources.gpu_backend import THROTTLE_REASON_BITS, GpuReading, GpuUnavailable
from dsagent.sources.gpu_trace import GpuTrace, load_trace


class ReplayGpuBackend:
    """Replays a JSONL trace frame by frame. loop=False: after the last frame, read_all() raises GpuUnavailable."""

    name = "replay"

    def __init__(self, trace: GpuTrace | Path, loop: bool = True) -> None:
        self._trace_or_path = trace
        self._trace: GpuTrace | None = trace if isinstance(trace, GpuTrace) else None
        self._loop = loop
        self._position = 0

    def open(self) -> None:
        if self._trace is None:
            assert isinstance(self._trace_or_path, Path)
            try:
                self._trace = load_trace(self._trace_or_path)
            except OSError as error:
                raise GpuUnavailable(f"cannot read GPU trace {self._trace_or_path}: {error}") from error

    @property
    def frame_count(self) -> int:
        self.open()
        assert self._trace is not None
        return len(self._trace.frames)

    def read_all(self) -> list[GpuReading]:
        self.open()
        assert self._trace is not None
        if self._position >= len(self._trace.frames):
            if not self._loop:
                raise GpuUnavailable("the GPU trace has ended (replay without loop)")
            self._position = 0
        frame = self._trace.frames[self._position]
        self._position += 1
        return [GpuReading.from_json_dict(reading.to_json_dict()) for reading in frame]  # callers may mutate

    def close(self) -> None:
        self._position = 0


@dataclass(frozen=True)
class GpuLoad:
    """What a simulated GPU is asked to do: compute busy fraction and fraction of memory held (0-1)."""

    compute_ratio: float
    memory_ratio: float


def wave_load(clock: Callable[[], float] = time.monotonic, period_seconds: float = 60.0) -> Callable[[], GpuLoad]:
    """A deterministic load between 5% and 95% that repeats every period (used when no engine load is known)."""

    def load() -> GpuLoad:
        phase = 2 * math.pi * (clock() % period_seconds) / period_seconds
        compute = 0.5 + 0.45 * math.sin(phase)
        return GpuLoad(compute, 0.2 + 0.6 * compute)

    return load


@dataclass(frozen=True)
class SimulatedGpuModel:
    """The board being simulated (defaults: an H100 80GB SXM, numbers from the recorded trace)."""

    name: str = "Simulated NVIDIA H100 80GB HBM3"
    memory_total_bytes: int = 85_520_809_984
    memory_base_bytes: int = 503_316_480
    power_idle_watts: float = 75.0
    power_full_watts: float = 760.0  # demand at 100% load, before the cap
    power_limit_watts: float = 700.0
    sm_clock_max_hertz: float = 1.98e9
    sm_clock_idle_hertz: float = 3.45e8
    memory_clock_hertz: float = 2.619e9
    temperature_idle_celsius: float = 37.0
    temperature_full_celsius: float = 66.0
    temperature_time_constant_seconds: float = 20.0


class SimulatedGpuBackend:
    """N GPUs following `load` (GPU i gets a slightly smaller share so they differ). Deterministic."""

    name = "simulated"

    def __init__(
        self,
        gpu_count: int,
        load: Callable[[], GpuLoad | None] | None = None,
        model: SimulatedGpuModel | None = None,
        clock: Callable[[], float] = time.monotonic,
        process_pid: int | Callable[[], int | None] | None = None,
    ) -> None:
        if gpu_count < 1:
            raise ValueError(f"gpu_count must be >= 1, got {gpu_count}")
        self._count = gpu_count
        self._load = load or wave_load(clock)
        self._model = model or SimulatedGpuModel()
        self._clock = clock
        self._process_pid = process_pid
        self._temperatures = [self._model.temperature_idle_celsius] * gpu_count
        self._energy_joules = [0.0] * gpu_count
        self._last_time: float | None = None
        # control state (the GPU actuator's side, see gpu_control.GpuControl): what NVML would hold
        self._power_limits_watts = [self._model.power_limit_watts] * gpu_count
        self._locked_graphics_mhz: list[int | None] = [None] * gpu_count
        self._application_memory_mhz: list[int | None] = [None] * gpu_count
        self.control_calls: list[tuple[str, int, object]] = []  # (call, gpu index, argument): tests read it
        self.control_refusal: str | None = None  # e.g. "Insufficient Permissions": every control call fails

    def open(self) -> None:
        return None

    def read_all(self) -> list[GpuReading]:
        m = self._model
        now = self._clock()
        dt = 0.0 if self._last_time is None else max(0.0, now - self._last_time)
        self._last_time = now
        load = self._load() or GpuLoad(0.0, 0.0)
        readings = []
        for index in range(self._count):
            share = 1.0 - 0.05 * index
            compute = _clip(load.compute_ratio * share)
            memory_fraction = _clip(load.memory_ratio * share)
            limit_watts = self._power_limits_watts[index]
            locked = self._locked_graphics_mhz[index]
            clock_max = min(m.sm_clock_max_hertz, locked * 1e6) if locked else m.sm_clock_max_hertz
            # dynamic power follows the clock: a locked-down clock draws less at the same load
            demand_watts = m.power_idle_watts + compute * (m.power_full_watts - m.power_idle_watts) * (
                clock_max / m.sm_clock_max_hertz)
            power_watts = min(demand_watts, limit_watts)
            capped = demand_watts > limit_watts
            if compute < 0.01:
                sm_clock, reasons = m.sm_clock_idle_hertz, THROTTLE_REASON_BITS["gpu_idle"]
            elif capped:
                sm_clock = clock_max * limit_watts / demand_watts * 0.75
                reasons = THROTTLE_REASON_BITS["sw_power_cap"]
            else:
                sm_clock = clock_max
                reasons = THROTTLE_REASON_BITS["applications_clocks_setting"] if locked else 0
            # temperature follows the power actually drawn (a lower power limit cools the board)
            heat_share = (power_watts - m.power_idle_watts) / (m.power_full_watts - m.power_idle_watts)
            target_temperature = m.temperature_idle_celsius + _clip(heat_share) * (
                m.temperature_full_celsius - m.temperature_idle_celsius
            )
            alpha = 1.0 - math.exp(-dt / m.temperature_time_constant_seconds) if dt else 0.0
            self._temperatures[index] += alpha * (target_temperature - self._temperatures[index])
            self._energy_joules[index] += power_watts * dt
            used_bytes = m.memory_base_bytes + int(memory_fraction * (m.memory_total_bytes - m.memory_base_bytes) * 0.9)
            reading = GpuReading(
                index=index,
                uuid=f"GPU-5151a7ed-0000-4000-8000-{index:012d}",
                name=m.name,
                utilization_ratio=round(compute, 2),
                memory_utilization_ratio=round(compute * 0.35, 2),
                memory_used_bytes=used_bytes,
                memory_total_bytes=m.memory_total_bytes,
                temperature_celsius=round(self._temperatures[index]),
                power_draw_watts=round(power_watts, 3),
                power_limit_watts=limit_watts,
                energy_joules_total=round(self._energy_joules[index], 3),
                sm_clock_hertz=round(sm_clock / 1.5e7) * 1.5e7,  # NVML steps clocks by 15 MHz
                memory_clock_hertz=m.memory_clock_hertz,
                sm_clock_max_hertz=m.sm_clock_max_hertz,
                applications_sm_clock_hertz=clock_max,
                applications_memory_clock_hertz=(self._application_memory_mhz[index] or 0) * 1e6
                or m.memory_clock_hertz,
                performance_state=0,
                throttle_reasons_bitmask=reasons,
                xid_errors_total=0,
                ecc_errors={key: 0 for key in ("corrected_volatile", "uncorrected_volatile")},
            )
            pid = self._process_pid() if callable(self._process_pid) else self._process_pid
            if pid is not None and used_bytes > m.memory_base_bytes:
                reading.process_memory_bytes = {pid: used_bytes - m.memory_base_bytes}
            readings.append(reading)
        return readings

    def close(self) -> None:
        return None

    # ---- control: the same calls the NVML backend makes, recorded, with NVML's limits ------------------

    def _check(self, call: str, index: int, argument: object) -> None:
        from dsagent.sources.gpu_control import GpuControlError

        if not 0 <= index < self._count:
            raise GpuControlError(f"no GPU with index {index} (this node has {self._count})")
        self.control_calls.append((call, index, argument))
        if self.control_refusal:
            raise GpuControlError(f"{call}: {self.control_refusal}")

    def control_device_count(self) -> int:
        return self._count

    def power_limit_watts(self, index: int) -> float:
        return self._power_limits_watts[index]

    def power_limit_constraints_watts(self, index: int) -> tuple[float, float, float]:
        """H100 SXM: 200 W to 700 W, default 700 W (what nvmlDeviceGetPowerManagementLimitConstraints says)."""
        return 200.0, self._model.power_limit_watts, self._model.power_limit_watts

    def set_power_limit_watts(self, index: int, watts: float) -> None:
        from dsagent.sources.gpu_control import GpuControlError

        self._check("nvmlDeviceSetPowerManagementLimit", index, watts)
        low, high, _ = self.power_limit_constraints_watts(index)
        if not low <= watts <= high:
            raise GpuControlError(f"nvmlDeviceSetPowerManagementLimit: Invalid Argument ({watts:g} W outside "
                                  f"{low:g}-{high:g} W)")
        self._power_limits_watts[index] = float(watts)

    def set_locked_clocks_mhz(self, index: int, graphics_mhz: int | None, memory_mhz: int | None) -> None:
        self._check("nvmlDeviceSetGpuLockedClocks", index, (graphics_mhz, memory_mhz))
        if graphics_mhz is not None:
            self._locked_graphics_mhz[index] = int(graphics_mhz)
        if memory_mhz is not None:
            self._application_memory_mhz[index] = int(memory_mhz)

    def reset_clocks(self, index: int) -> None:
        self._check("nvmlDeviceResetGpuLockedClocks", index, None)
        self._locked_graphics_mhz[index] = None
        self._application_memory_mhz[index] = None


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))
