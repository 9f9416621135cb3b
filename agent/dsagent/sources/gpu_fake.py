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
            demand_watts = m.power_idle_watts + compute * (m.power_full_watts - m.power_idle_watts)
            power_watts = min(demand_watts, m.power_limit_watts)
            capped = demand_watts > m.power_limit_watts
            if compute < 0.01:
                sm_clock, reasons = m.sm_clock_idle_hertz, THROTTLE_REASON_BITS["gpu_idle"]
            elif capped:
                sm_clock = m.sm_clock_max_hertz * m.power_limit_watts / demand_watts * 0.75
                reasons = THROTTLE_REASON_BITS["sw_power_cap"]
            else:
                sm_clock, reasons = m.sm_clock_max_hertz, 0
            target_temperature = m.temperature_idle_celsius + compute * (
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
                power_limit_watts=m.power_limit_watts,
                energy_joules_total=round(self._energy_joules[index], 3),
                sm_clock_hertz=round(sm_clock / 1.5e7) * 1.5e7,  # NVML steps clocks by 15 MHz
                memory_clock_hertz=m.memory_clock_hertz,
                sm_clock_max_hertz=m.sm_clock_max_hertz,
                applications_sm_clock_hertz=m.sm_clock_max_hertz,
                applications_memory_clock_hertz=m.memory_clock_hertz,
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


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))
