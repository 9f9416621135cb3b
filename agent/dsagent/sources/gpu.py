"""The GPU telemetry source: turns a backend's `GpuReading`s into Samples, one series per GPU.

The backend (NVML, trace replay, simulated GPUs) is injected, so this module holds the only copy of the
reading-to-sample mapping and the "no GPU here" behaviour: when the backend cannot open, the reason is
logged once at WARNING and the source yields nothing on every tick, without retrying NVML every second
(a driver does not appear while the agent runs). A backend failing mid-run is a SourceError, and the
next tick opens the backend again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from dsagent.samples import Labels, Sample, make_labels
from dsagent.sources.base import SourceError
from dsagent.sources.gpu_backend import (
    ECC_COUNTER_KEYS,
    THROTTLE_REASON_BITS,
    GpuBackend,
    GpuReading,
    GpuUnavailable,
)
from dsagent.sources.metric_metadata import METRICS_BY_NAME

log = logging.getLogger(__name__)

# reading attribute -> metric name, for the plain one-number fields.
_SCALAR_FIELDS: tuple[tuple[str, str], ...] = (
    ("utilization_ratio", "dsagent_gpu_utilization_ratio"),
    ("memory_utilization_ratio", "dsagent_gpu_memory_utilization_ratio"),
    ("memory_used_bytes", "dsagent_gpu_memory_used_bytes"),
    ("memory_total_bytes", "dsagent_gpu_memory_total_bytes"),
    ("temperature_celsius", "dsagent_gpu_temperature_celsius"),
    ("power_draw_watts", "dsagent_gpu_power_draw_watts"),
    ("power_limit_watts", "dsagent_gpu_power_limit_watts"),
    ("energy_joules_total", "dsagent_gpu_energy_joules_total"),
    ("sm_clock_hertz", "dsagent_gpu_sm_clock_hertz"),
    ("memory_clock_hertz", "dsagent_gpu_memory_clock_hertz"),
    ("sm_clock_max_hertz", "dsagent_gpu_sm_clock_max_hertz"),
    ("applications_sm_clock_hertz", "dsagent_gpu_applications_sm_clock_hertz"),
    ("applications_memory_clock_hertz", "dsagent_gpu_applications_memory_clock_hertz"),
    ("performance_state", "dsagent_gpu_performance_state"),
    ("fan_speed_ratio", "dsagent_gpu_fan_speed_ratio"),
    ("throttle_reasons_bitmask", "dsagent_gpu_clock_throttle_reasons_bitmask"),
    ("xid_errors_total", "dsagent_gpu_xid_errors_total"),
)  # no "last XID" gauge: it sticks at its last value; XIDs are a counter per code plus an event


def readings_to_samples(readings: list[GpuReading], timestamp_seconds: float) -> list[Sample]:
    """Samples for every readable field of every reading; None fields produce nothing."""
    samples: list[Sample] = []

    def add(name: str, value: float, labels: dict[str, str]) -> None:
        add_labelled(name, value, make_labels(labels))

    def add_labelled(name: str, value: float, labels: Labels) -> None:
        meta = METRICS_BY_NAME[name]
        samples.append(Sample(name, labels, float(value), timestamp_seconds, meta.kind, meta.unit))

    for reading in readings:
        gpu = {"gpu_index": str(reading.index), "gpu_uuid": reading.uuid, "gpu_name": reading.name}
        gpu_labels = make_labels(gpu)  # sorted once per GPU, shared by its scalar fields
        for attribute, name in _SCALAR_FIELDS:
            value = getattr(reading, attribute)
            if value is not None and not (attribute == "xid_errors_total" and reading.xid_errors_by_code):
                add_labelled(name, value, gpu_labels)
        for code, count in sorted(reading.xid_errors_by_code.items()):  # one counter per XID code
            add("dsagent_gpu_xid_errors_total", count, {**gpu, "xid": str(code)})
        if reading.memory_used_bytes is not None and reading.memory_total_bytes:
            add_labelled("dsagent_gpu_memory_used_ratio", reading.memory_used_bytes / reading.memory_total_bytes,
                         gpu_labels)
        if reading.throttle_reasons_bitmask is not None:
            for reason, bit in THROTTLE_REASON_BITS.items():
                active = 1.0 if reading.throttle_reasons_bitmask & bit else 0.0
                add("dsagent_gpu_clock_throttle_active", active, {**gpu, "reason": reason})
        for key in ECC_COUNTER_KEYS:
            if key in reading.ecc_errors:
                error_type, counter = key.split("_", 1)
                add(
                    "dsagent_gpu_ecc_errors_total",
                    reading.ecc_errors[key],
                    {**gpu, "error_type": error_type, "counter": counter},
                )
        for pid, used_bytes in sorted(reading.process_memory_bytes.items()):
            add("dsagent_gpu_process_memory_used_bytes", used_bytes, {**gpu, "pid": str(pid)})
    return samples


class GpuSource:
    """Source over any GpuBackend. `unavailable_reason` says why it yields nothing (for `dsagent status`)."""

    def __init__(self, backend: GpuBackend, clock: Callable[[], float] = time.time) -> None:
        self.name = f"gpu:{backend.name}"
        self._backend = backend
        self._clock = clock
        self._opened = False
        self.unavailable_reason: str | None = None
        self._xid_totals: dict[int, int] = {}
        self._events: list[dict[str, Any]] = []

    def take_events(self) -> list[dict[str, Any]]:
        """Events since the last call (a GPU reporting new XID errors), for logs-dsagent.events."""
        events, self._events = self._events, []
        return events

    def _note_xids(self, readings: list[GpuReading], now_seconds: float) -> None:
        for reading in readings:
            total = reading.xid_errors_total
            if total is None:
                continue
            before = self._xid_totals.get(reading.index)
            self._xid_totals[reading.index] = total
            if before is not None and total > before:
                self._events.append({
                    "timestamp": now_seconds, "event": "gpu_xid_error", "gpu_index": reading.index,
                    "gpu_uuid": reading.uuid, "gpu_name": reading.name, "xid": reading.last_xid,
                    "new_errors": total - before, "xid_errors_total": total,
                    "reason": f"GPU {reading.index} reported XID {reading.last_xid} ({total - before} new)",
                })

    def collect(self) -> list[Sample]:
        if self.unavailable_reason is not None:
            return []
        if not self._opened:
            try:
                self._backend.open()
            except GpuUnavailable as error:
                self.unavailable_reason = str(error)
                log.warning("no GPU telemetry: %s; the agent runs on without GPU metrics", error)
                return []
            self._opened = True
        try:
            readings = self._backend.read_all()
        except GpuUnavailable as error:
            raise SourceError(f"GPU backend {self._backend.name} stopped answering: {error}") from error
        except Exception as error:  # a driver reset or gone mid-run: one failed tick, not a dead agent
            self.close()  # the next tick opens the backend again (NVML re-initializes)
            raise SourceError(f"GPU backend {self._backend.name} failed: {error!r}") from error
        now = self._clock()
        self._note_xids(readings, now)
        return readings_to_samples(readings, now)

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._backend.close()
